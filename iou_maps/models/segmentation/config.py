"""A segmentation_gym ``config.json``: its keys, their checks, the learning-rate schedule.

``SegmentationConfig.from_dict`` / ``from_json`` accept exactly what segmentation_gym and the
Segmentation Zoo configs hold, and say which key is wrong (``ConfigError``) otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from iou_maps.errors import BadClassSet, ConfigError, ModelFilesMissing
from iou_maps.models.classes import DEMO_CLASSES, ClassSet
from iou_maps.models.gym_files import class_names_beside, class_set_of

#: Every key that segmentation_gym (train_model.py, make_dataset.py, seg_images_in_folder.py)
#: and the Segmentation Zoo model configs use.
KNOWN_CONFIG_KEYS: frozenset[str] = frozenset(
    {
        # model
        "TARGET_SIZE", "MODEL", "NCLASSES", "N_DATA_BANDS", "KERNEL", "STRIDE", "FILTERS",
        "DROPOUT", "DROPOUT_CHANGE_PER_LAYER", "DROPOUT_TYPE", "USE_DROPOUT_ON_UPSAMPLING",
        # training
        "BATCH_SIZE", "DO_TRAIN", "LOSS", "LOSS_WEIGHTS", "PATIENCE", "MAX_EPOCHS",
        "VALIDATION_SPLIT", "RAMPUP_EPOCHS", "SUSTAIN_EPOCHS", "EXP_DECAY", "START_LR", "MIN_LR",
        "MAX_LR", "HOT_START", "INITIAL_EPOCH", "CLEAR_MEMORY", "LOAD_DATA_WITH_CPU",
        # dataset making / augmentation
        "FILTER_VALUE", "DOPLOT", "ROOT_STRING", "USEMASK", "AUG_ROT", "AUG_ZOOM",
        "AUG_WIDTHSHIFT", "AUG_HEIGHTSHIFT", "AUG_HFLIP", "AUG_VFLIP", "AUG_LOOPS", "AUG_COPIES",
        "REMAP_CLASSES", "MY_CLASS_NAMES", "MODE",
        # prediction
        "TESTTIMEAUG", "WRITE_MODELMETADATA", "OTSU_THRESHOLD", "DO_CRF",
        # hardware
        "SET_GPU", "SET_PCI_BUS_ID", "USE_GPU", "USE_MULTI_GPU", "DISTRIBUTION_STRATEGY",
        "PHYSICAL_DEVICES",
    }
)  # fmt: skip

#: Keys segmentation_gym's get_model() reads; a config without them cannot build a model.
REQUIRED_CONFIG_KEYS: frozenset[str] = frozenset(
    {
        "TARGET_SIZE", "MODEL", "NCLASSES", "N_DATA_BANDS", "KERNEL", "STRIDE", "FILTERS",
        "DROPOUT", "DROPOUT_CHANGE_PER_LAYER", "DROPOUT_TYPE", "USE_DROPOUT_ON_UPSAMPLING",
    }
)  # fmt: skip

SUPPORTED_MODELS: tuple[str, ...] = ("resunet", "unet", "simple_resunet", "simple_unet")
SUPPORTED_LOSSES: tuple[str, ...] = ("cat", "dice")


# Four stride-2 levels: sizes must halve cleanly four times to meet the skip connections again.
_SIZE_MULTIPLE = 16


def _as_int(d: Mapping[str, Any], key: str, default: Any = None) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v:
        raise ConfigError(f"{key} must be an integer, got {v!r}")
    return int(v)


def _as_float(d: Mapping[str, Any], key: str, default: Any = None) -> float:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ConfigError(f"{key} must be a number, got {v!r}")
    return float(v)


def _as_bool(d: Mapping[str, Any], key: str, default: Any = None) -> bool:
    v = d.get(key, default)
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise ConfigError(f"{key} must be true or false, got {v!r}")


def _check_keys(d: Any) -> None:
    """ConfigError unless ``d`` is a mapping of known keys holding every required one."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - KNOWN_CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    missing = sorted(REQUIRED_CONFIG_KEYS - set(d))
    if missing:
        raise ConfigError(f"missing required config key(s): {', '.join(missing)}")


def _target_size(ts: Any) -> tuple[int, int]:
    """TARGET_SIZE as (height, width): two positive ints, multiples of _SIZE_MULTIPLE."""
    if (
        not isinstance(ts, list | tuple)
        or len(ts) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in ts)
    ):
        raise ConfigError(f"TARGET_SIZE must be [height, width] positive ints, got {ts!r}")
    if any(v % _SIZE_MULTIPLE for v in ts):
        raise ConfigError(f"TARGET_SIZE {list(ts)} must be multiples of {_SIZE_MULTIPLE}")
    return int(ts[0]), int(ts[1])


@dataclass(frozen=True)
class SegmentationConfig:
    """The fields of a segmentation_gym config this module uses, plus the raw dict."""

    target_size: tuple[int, int]
    nclasses: int
    model: str
    filters: int
    kernel: int
    stride: int
    dropout: float
    dropout_change_per_layer: float
    dropout_type: str
    use_dropout_on_upsampling: bool
    n_data_bands: int
    batch_size: int
    loss: str
    start_lr: float
    min_lr: float
    max_lr: float
    rampup_epochs: int
    sustain_epochs: int
    exp_decay: float
    classes: ClassSet = DEMO_CLASSES
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], *, class_names: Sequence[str] | None = None
    ) -> SegmentationConfig:
        """The config of a segmentation_gym dict, checked (ConfigError names what is wrong).

        Its classes: ``class_names`` (a ``classes.txt``), else the config's ``MY_CLASS_NAMES``,
        else (``class_set_of``) the demo's four for 4 classes, ``class0…`` otherwise.
        """
        _check_keys(d)
        model = d["MODEL"]
        if model not in SUPPORTED_MODELS:
            raise ConfigError(
                f"MODEL {model!r} is not supported; supported: {', '.join(SUPPORTED_MODELS)}"
                " (segformer and satunet are not implemented)"
            )
        ts = _target_size(d["TARGET_SIZE"])

        nclasses = _as_int(d, "NCLASSES")
        if nclasses < 2:
            raise ConfigError(f"NCLASSES must be >= 2 (segmentation_gym rule), got {nclasses}")
        classes = class_set_of(nclasses, d.get("MY_CLASS_NAMES"), class_names)
        # segmentation_gym bumps fewer bands to 3; our imagery is RGB so more cannot be fed.
        bands = max(_as_int(d, "N_DATA_BANDS"), 3)
        if bands != 3:
            raise ConfigError(f"N_DATA_BANDS must be 3 (RGB imagery), got {bands}")
        stride = _as_int(d, "STRIDE")
        if model in ("resunet", "unet") and stride != 2:
            # The decoder upsamples by 2 per level, so only stride 2 meets the skips again.
            raise ConfigError(f"STRIDE must be 2 for MODEL {model!r}, got {stride}")
        dropout_type = d["DROPOUT_TYPE"]
        if dropout_type not in ("standard", "spatial"):
            raise ConfigError(f"DROPOUT_TYPE must be 'standard' or 'spatial', got {dropout_type!r}")
        dropout = _as_float(d, "DROPOUT")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"DROPOUT must be in [0, 1), got {dropout}")
        filters = _as_int(d, "FILTERS")
        kernel = _as_int(d, "KERNEL")
        if filters < 1 or kernel < 1:
            raise ConfigError("FILTERS and KERNEL must be positive")
        loss = d.get("LOSS", "cat")
        if not isinstance(loss, str):
            raise ConfigError(f"LOSS must be a string, got {loss!r}")

        return cls(
            target_size=ts,
            nclasses=nclasses,
            model=model,
            filters=filters,
            kernel=kernel,
            stride=stride,
            dropout=dropout,
            dropout_change_per_layer=_as_float(d, "DROPOUT_CHANGE_PER_LAYER"),
            dropout_type=dropout_type,
            use_dropout_on_upsampling=_as_bool(d, "USE_DROPOUT_ON_UPSAMPLING"),
            n_data_bands=bands,
            batch_size=_as_int(d, "BATCH_SIZE", 8),
            loss=loss,
            # Defaults are segmentation_gym's usual learning-rate schedule values.
            start_lr=_as_float(d, "START_LR", 1e-7),
            min_lr=_as_float(d, "MIN_LR", 1e-7),
            max_lr=_as_float(d, "MAX_LR", 1e-4),
            rampup_epochs=_as_int(d, "RAMPUP_EPOCHS", 20),
            sustain_epochs=_as_int(d, "SUSTAIN_EPOCHS", 0),
            exp_decay=_as_float(d, "EXP_DECAY", 0.9),
            classes=classes,
            raw=dict(d),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> SegmentationConfig:
        """The config of a segmentation_gym JSON file (see ``from_dict``), with the class
        names of a ``classes.txt`` beside it."""
        path = Path(path)
        names = class_names_beside(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelFilesMissing(f"segmentation config not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        try:
            return cls.from_dict(d, class_names=names)
        except BadClassSet as exc:
            raise BadClassSet(f"{path}: {exc}") from None

    def with_classes(self, classes: ClassSet) -> SegmentationConfig:
        """This config with other class names (BadClassSet unless there are NCLASSES)."""
        return replace(self, classes=ClassSet.of(classes.names, self.nclasses, "--classes"))

    def lr_at_epoch(self, epoch: int) -> float:
        """segmentation_gym's lrfn: linear ramp-up to MAX_LR, sustain, exponential decay."""
        if epoch < self.rampup_epochs:
            return (self.max_lr - self.start_lr) / self.rampup_epochs * epoch + self.start_lr
        if epoch < self.rampup_epochs + self.sustain_epochs:
            return self.max_lr
        k = epoch - self.rampup_epochs - self.sustain_epochs
        return (self.max_lr - self.min_lr) * self.exp_decay**k + self.min_lr


def demo_config() -> dict[str, Any]:
    """A complete segmentation_gym config for a small resunet that trains on 2 CPU cores."""
    return {
        "TARGET_SIZE": [128, 128],
        "MODEL": "resunet",
        "NCLASSES": DEMO_CLASSES.nclasses,
        "KERNEL": 3,
        "STRIDE": 2,
        "BATCH_SIZE": 16,
        "FILTERS": 6,
        "N_DATA_BANDS": 3,
        "DROPOUT": 0.1,
        "DROPOUT_CHANGE_PER_LAYER": 0.0,
        "DROPOUT_TYPE": "standard",
        "USE_DROPOUT_ON_UPSAMPLING": False,
        "DO_TRAIN": True,
        "LOSS": "cat",
        "PATIENCE": 5,
        "MAX_EPOCHS": 12,
        "VALIDATION_SPLIT": 0.15,
        # Short schedule: no ramp-up (gym's 20-epoch ramp would waste a CPU budget).
        "RAMPUP_EPOCHS": 0,
        "SUSTAIN_EPOCHS": 2,
        "EXP_DECAY": 0.8,
        "START_LR": 1e-3,
        "MIN_LR": 1e-5,
        "MAX_LR": 2e-3,
        "FILTER_VALUE": 0,
        "DOPLOT": False,
        "ROOT_STRING": "iou_maps_demo",
        "USEMASK": False,
        "AUG_ROT": 0,
        "AUG_ZOOM": 0.0,
        "AUG_WIDTHSHIFT": 0.0,
        "AUG_HEIGHTSHIFT": 0.0,
        "AUG_HFLIP": True,
        "AUG_VFLIP": True,
        "AUG_LOOPS": 1,
        "AUG_COPIES": 1,
        "REMAP_CLASSES": {},
        "SET_GPU": "-1",
        "WRITE_MODELMETADATA": False,
        "DO_CRF": False,
        "LOSS_WEIGHTS": False,
        "MODE": "all",
        "SET_PCI_BUS_ID": False,
        "TESTTIMEAUG": True,
        "OTSU_THRESHOLD": False,
    }
