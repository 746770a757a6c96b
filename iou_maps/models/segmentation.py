"""segmentation_gym-compatible segmentation model: config, build, weights I/O, train, predict.

The architectures reproduce doodleverse_utils.model_imports (``custom_resunet``, ``custom_unet``,
``simple_resunet``, ``simple_unet``) layer for layer: same layer types, shapes, bias usage and
graph topology, so Keras orders the weighted layers identically and a segmentation_gym weights
file (tf.keras 2 ``model.save_weights('x.h5')``) loads here by layer order. Preprocessing follows
doodleverse_utils too: resize to TARGET_SIZE, per-image standardisation with an adjusted standard
deviation, softmax scores resized back to the input size, then argmax.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from iou_maps.errors import ConfigError, WeightsError
from iou_maps.models.backend import keras, tf
from iou_maps.models.classes import NCLASSES, NODATA_LABEL
from iou_maps.models.model_layers import model_input, resize_images, standardize_batch

layers, ops = keras.layers, keras.ops

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

#: Name of the encoder's deepest layer in every model built here.
BOTTLENECK_LAYER = "encoder_bottleneck"

CONFIG_FILE = "config.json"
#: segmentation_gym/Zoo naming: weights "<stem>_fullmodel.h5" next to config "<stem>.json".
WEIGHTS_FILE = "config_fullmodel.h5"

# Four stride-2 levels: sizes must halve cleanly four times to meet the skip connections again.
_SIZE_MULTIPLE = 16


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


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
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], *, expected_classes: int | None = NCLASSES
    ) -> SegmentationConfig:
        """The config of a segmentation_gym dict, checked (ConfigError names what is wrong)."""
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
        if expected_classes is not None and nclasses != expected_classes:
            raise ConfigError(
                f"NCLASSES is {nclasses} but this project expects {expected_classes} classes"
            )
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
            raw=dict(d),
        )

    @classmethod
    def from_json(
        cls, path: str | Path, *, expected_classes: int | None = NCLASSES
    ) -> SegmentationConfig:
        """The config of a segmentation_gym JSON file (see ``from_dict``)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"segmentation config not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(d, expected_classes=expected_classes)

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
        "NCLASSES": NCLASSES,
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


# --------------------------------------------------------------------------------------------
# Architecture (same graph as doodleverse_utils.model_imports)
# --------------------------------------------------------------------------------------------


def _dropout(x: Any, rate: float, kind: str) -> Any:
    if rate > 0.0:
        x = (layers.SpatialDropout2D if kind == "spatial" else layers.Dropout)(rate)(x)
    return x


def _bn_relu(x: Any, name: str | None = None) -> Any:
    x = layers.BatchNormalization()(x)
    return layers.Activation("relu", name=name)(x)


def _preact_conv(
    x: Any, filters: int, kernel: int | tuple[int, int], strides: int = 1,
    dropout: float = 0.0, kind: str = "standard", name: str | None = None,
) -> Any:  # fmt: skip
    """gym conv_block: [dropout] -> BN -> ReLU -> conv (pre-activation)."""
    x = _bn_relu(_dropout(x, dropout, kind))
    return layers.Conv2D(filters, kernel, strides=strides, padding="same", name=name)(x)


def _stem(x: Any, filters: int) -> Any:
    """gym bottleneck_block: 2x2 conv path plus a 1x1 shortcut, at full resolution."""
    conv = layers.Conv2D(filters, (2, 2), padding="same")(x)
    conv = _preact_conv(conv, filters, (2, 2))
    short = _bn_relu(layers.Conv2D(filters, (1, 1), padding="same")(x))
    return layers.Add()([conv, short])  # operand order fixes the layer order: keep it


def _res_block(
    x: Any, filters: int, kernel: int, strides: int = 1, dropout: float = 0.0,
    kind: str = "standard",
) -> Any:  # fmt: skip
    """gym res_block: two pre-activation convs plus a strided 1x1 shortcut."""
    res = _preact_conv(x, filters, kernel, strides, dropout, kind)
    res = _preact_conv(res, filters, kernel, 1, dropout, kind)
    short = _bn_relu(layers.Conv2D(filters, (1, 1), strides=strides, padding="same")(x))
    return layers.Add()([short, res])


def _plain_block(
    x: Any, filters: int, kernel: int, strides: int = 1, dropout: float = 0.0,
    kind: str = "standard",
) -> Any:  # fmt: skip
    return _preact_conv(x, filters, kernel, strides, dropout, kind)


def _up_concat(x: Any, skip: Any) -> Any:
    return layers.Concatenate()([layers.UpSampling2D((2, 2))(x), skip])


def _custom_unet(cfg: SegmentationConfig, inputs: Any, residual: bool) -> Any:
    """gym custom_resunet / custom_unet: strided encoder, KERNEL-sized pre-activation convs."""
    block = _res_block if residual else _plain_block
    k, kind, change = cfg.kernel, cfg.dropout_type, cfg.dropout_change_per_layer
    f, dropout = cfg.filters, cfg.dropout
    x = _stem(inputs, f)
    skips = [x]
    for level in range(4):
        f *= 2
        if level:
            dropout += change
        x = block(x, f, k, cfg.stride, dropout, kind)
        if level < 3:
            skips.append(x)
    x = _preact_conv(x, f, k, 1, dropout, kind)
    x = _preact_conv(x, f, k, 1, dropout, kind, name=BOTTLENECK_LAYER)
    if not cfg.use_dropout_on_upsampling:
        dropout, change = 0.0, 0.0
    for skip in reversed(skips):
        x = block(_up_concat(x, skip), f, k, 1, dropout, kind)
        f //= 2
        dropout -= change
    return x


def _conv2d_block(x: Any, filters: int, dropout: float, kind: str, name: str | None = None) -> Any:
    """gym conv2d_block: two bias-free 2x2 relu convs (he_normal), each followed by BN."""

    def conv() -> keras.layers.Conv2D:
        return layers.Conv2D(
            filters, (2, 2), activation="relu", kernel_initializer="he_normal",
            padding="same", use_bias=False,
        )  # fmt: skip

    x = layers.BatchNormalization()(conv()(x))
    x = _dropout(x, dropout, kind)
    return layers.BatchNormalization(name=name)(conv()(x))


def _res_conv2d_block(x: Any, filters: int, dropout: float, kind: str) -> Any:
    res = _conv2d_block(x, filters, dropout, kind)
    res = _conv2d_block(res, filters, dropout, kind)
    short = _bn_relu(layers.Conv2D(filters, (1, 1), padding="same")(x))
    return layers.Add()([short, res])


def _simple_unet(cfg: SegmentationConfig, inputs: Any, residual: bool) -> Any:
    """gym simple_resunet / simple_unet: max-pooling encoder; KERNEL and STRIDE are unused."""
    block = _res_conv2d_block if residual else _conv2d_block
    kind, change = cfg.dropout_type, cfg.dropout_change_per_layer
    f, dropout = cfg.filters, cfg.dropout
    x, skips = inputs, []
    for _ in range(4):
        x = block(x, f, dropout, kind)
        skips.append(x)
        x = layers.MaxPooling2D((2, 2))(x)
        dropout += change
        f *= 2
    x = _conv2d_block(x, f, dropout, kind, name=BOTTLENECK_LAYER)
    if not cfg.use_dropout_on_upsampling:
        dropout, change = 0.0, 0.0
    for skip in reversed(skips):
        f //= 2
        dropout -= change
        x = block(_up_concat(x, skip), f, dropout, kind)
    return x


def build_model(cfg: SegmentationConfig) -> keras.Model:
    """The Keras model segmentation_gym's get_model() builds for this config (softmax output)."""
    inputs = keras.Input((*cfg.target_size, cfg.n_data_bands))
    if cfg.model in ("resunet", "unet"):
        x = _custom_unet(cfg, inputs, residual=cfg.model == "resunet")
    elif cfg.model in ("simple_resunet", "simple_unet"):
        x = _simple_unet(cfg, inputs, residual=cfg.model == "simple_resunet")
    else:  # from_dict already rejects these; kept for hand-made configs
        raise ConfigError(f"MODEL {cfg.model!r} is not supported")
    outputs = layers.Conv2D(cfg.nclasses, (1, 1), padding="same", activation="softmax")(x)
    return keras.Model(inputs=inputs, outputs=outputs, name=cfg.model)


def bottleneck_layer_name(model: keras.Model, cfg: SegmentationConfig | None = None) -> str:
    """Name of the encoder's deepest layer (smallest spatial size, just before the decoder)."""
    try:
        model.get_layer(BOTTLENECK_LAYER)
    except ValueError:
        kind = cfg.model if cfg is not None else model.name
        raise ValueError(
            f"model {model.name!r} ({kind}) has no layer {BOTTLENECK_LAYER!r}: "
            "build it with iou_maps.models.segmentation.build_model"
        ) from None
    return BOTTLENECK_LAYER


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


def standardize(images: np.ndarray) -> np.ndarray:
    """doodleverse_utils.standardize per image: (x - mean) / max(std, 1/sqrt(H*W)).

    Mean and std run over all pixels and bands of each image; N = H*W, as in segmentation_gym.
    Accepts one H,W,C image or an N,H,W,C batch; returns float32.
    """
    x = np.asarray(images)
    if x.ndim not in (3, 4):
        raise ValueError(f"expected H,W,C or N,H,W,C images, got shape {x.shape}")
    x64 = x.astype(np.float64)
    axes = (-3, -2, -1)
    n = x.shape[-3] * x.shape[-2]
    m = x64.mean(axis=axes, keepdims=True)
    s = np.maximum(x64.std(axis=axes, keepdims=True), 1.0 / math.sqrt(n))
    return ((x64 - m) / s).astype(np.float32)


def _resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if tuple(labels.shape[1:3]) == tuple(size):
        return np.asarray(labels, dtype=np.uint8)
    out = tf.image.resize(labels[..., None], size, "nearest")
    return out.numpy()[..., 0].astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Model wrapper: prediction
# --------------------------------------------------------------------------------------------


@dataclass
class SegmentationModel:
    """A segmentation_gym model with its config: prediction as segmentation_gym predicts."""

    cfg: SegmentationConfig
    model: keras.Model

    def _check(self, images: np.ndarray) -> None:
        if images.ndim != 4 or images.shape[-1] != self.cfg.n_data_bands:
            raise ValueError(
                f"expected N,H,W,{self.cfg.n_data_bands} images, got shape {images.shape}"
            )

    def predict_proba(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Softmax scores N,H,W,NCLASSES at the input size: resize, standardize, resize back."""
        images = np.asarray(images)
        self._check(images)
        n, h, w = images.shape[:3]
        out = np.empty((n, h, w, self.cfg.nclasses), dtype=np.float32)
        tta = bool(self.cfg.raw.get("TESTTIMEAUG", False))
        for i in range(0, n, batch_size):
            x = model_input(images[i : i + batch_size], self.cfg.target_size)
            p = self.model(x, training=False)
            if tta:
                # segmentation_gym's TESTTIMEAUG: average the softmax over flipped copies.
                for axes in ([1], [2], [1, 2]):
                    p += tf.reverse(self.model(tf.reverse(x, axes), training=False), axes)
                p = p / 4.0
            if (h, w) != self.cfg.target_size:
                p = tf.image.resize(p, (h, w), "bilinear")
            out[i : i + batch_size] = np.asarray(p, dtype=np.float32)
        return out

    def predict(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Class ids (uint8) for N,H,W,3 images of any size, or one H,W,3 image -> H,W."""
        images = np.asarray(images)
        single = images.ndim == 3
        if single:
            images = images[None]
        self._check(images)
        ids = np.empty(images.shape[:3], dtype=np.uint8)
        # Batch the argmax too so that large inputs never hold all probabilities at once.
        for i in range(0, len(images), batch_size):
            p = self.predict_proba(images[i : i + batch_size], batch_size)
            ids[i : i + batch_size] = p.argmax(axis=-1)
        return ids[0] if single else ids

    def predict_scene(
        self,
        image: np.ndarray,
        *,
        window: tuple[int, int] | None = None,
        overlap: float = 0.5,
        batch_size: int = 16,
    ) -> np.ndarray:
        """Class ids H,W for one large H,W,3 image from overlapping windows.

        Windows are ``window`` pixels (default TARGET_SIZE, i.e. native resolution), each
        standardised on its own like a segmentation_gym image; their softmax scores are blended
        with weights that fall off towards window edges, where context is missing.
        """
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(f"expected one H,W,C image, got shape {image.shape}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        wh, ww = window or self.cfg.target_size
        h, w = image.shape[:2]
        ph, pw = max(wh - h, 0), max(ww - w, 0)
        if ph or pw:
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="edge")
        hh, wwid = image.shape[:2]
        ys = _window_starts(hh, wh, overlap)
        xs = _window_starts(wwid, ww, overlap)
        weight = np.outer(_taper(wh), _taper(ww)).astype(np.float32)
        acc = np.zeros((hh, wwid, self.cfg.nclasses), dtype=np.float32)
        wsum = np.zeros((hh, wwid), dtype=np.float32)
        starts = [(y, x) for y in ys for x in xs]
        for i in range(0, len(starts), batch_size):
            chunk = starts[i : i + batch_size]
            batch = np.stack([image[y : y + wh, x : x + ww] for y, x in chunk])
            probs = self.predict_proba(batch, batch_size)
            for (y, x), p in zip(chunk, probs, strict=True):
                acc[y : y + wh, x : x + ww] += p * weight[..., None]
                wsum[y : y + wh, x : x + ww] += weight
        return acc[:h, :w].argmax(axis=-1).astype(np.uint8)


def _window_starts(size: int, win: int, overlap: float) -> list[int]:
    step = max(1, round(win * (1.0 - overlap)))
    starts = list(range(0, size - win + 1, step))
    if starts[-1] != size - win:
        starts.append(size - win)  # last window flush with the edge
    return starts


def _taper(n: int) -> np.ndarray:
    # Never zero, so pixels covered only by a window edge still get a prediction.
    return 0.1 + 0.9 * np.sin(np.pi * (np.arange(n) + 0.5) / n)


# --------------------------------------------------------------------------------------------
# Weights I/O
# --------------------------------------------------------------------------------------------


def _write_str_attr(obj: h5py.Group, name: str, values: list[str]) -> None:
    obj.attrs[name] = np.array([v.encode("utf8") for v in values], dtype="S")


def _read_str_attr(obj: h5py.Group, name: str) -> list[str]:
    """Read a string-list attribute, including tf.keras's chunked form (name0, name1, ...)."""
    if name in obj.attrs:
        raw = list(obj.attrs[name])
    else:
        raw, i = [], 0
        while f"{name}{i}" in obj.attrs:
            raw.extend(obj.attrs[f"{name}{i}"])
            i += 1
        if not i:
            raise WeightsError(f"HDF5 group {obj.name!r} has no {name!r} attribute")
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in raw]


def save_weights_h5(model: keras.Model, path: str | Path) -> None:
    """Write weights in tf.keras 2's legacy HDF5 layout, loadable by segmentation_gym.

    Layout: root attrs ``layer_names``/``backend``/``keras_version``; one group per layer with a
    ``weight_names`` attr and datasets ``<layer>/<weight>:0`` in the layer's weight order.
    """
    with h5py.File(path, "w") as f:
        _write_str_attr(f, "layer_names", [layer.name for layer in model.layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = keras.__version__.encode()
        for layer in model.layers:
            g = f.create_group(layer.name)
            names = [f"{layer.name}/{v.name}:0" for v in layer.weights]
            _write_str_attr(g, "weight_names", names)
            for name, v in zip(names, layer.weights, strict=True):
                g.create_dataset(name, data=np.asarray(v.numpy()))


def load_weights_h5(model: keras.Model, path: str | Path) -> None:
    """Load a legacy (tf.keras 2 / segmentation_gym) ``.h5`` weights file by layer order.

    Everything is checked before any weight is assigned, so a mismatch leaves the model as is.
    """
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(f"{path} is not a readable HDF5 weights file: {e}") from None
    with f:
        root: h5py.Group = f
        if "layer_names" not in f.attrs and "model_weights" in f:
            root = f["model_weights"]  # a full-model file from tf.keras model.save('x.h5')
        saved: list[tuple[str, list[np.ndarray]]] = []
        for lname in _read_str_attr(root, "layer_names"):
            wnames = _read_str_attr(root[lname], "weight_names")
            if wnames:
                saved.append((lname, [np.asarray(root[lname][w]) for w in wnames]))
    targets = [layer for layer in model.layers if layer.weights]
    if len(saved) != len(targets):
        raise WeightsError(
            f"{path.name} holds {len(saved)} layers with weights but the model built from the "
            f"config has {len(targets)}: the config (MODEL, FILTERS, ...) does not match"
        )
    for i, ((lname, arrays), layer) in enumerate(zip(saved, targets, strict=True)):
        shapes = [tuple(a.shape) for a in arrays]
        expected = [tuple(v.shape) for v in layer.weights]
        if shapes != expected:
            raise WeightsError(
                f"weighted layer #{i} ({layer.name}, file: {lname}): weight shapes {shapes} "
                f"in {path.name} but {expected} in the model built from the config"
            )
    for (_, arrays), layer in zip(saved, targets, strict=True):
        layer.set_weights(arrays)


def load_weights(model: keras.Model, path: str | Path) -> None:
    """Load ``.weights.h5`` (Keras 3 format) or a legacy ``.h5`` (tf.keras 2 layout)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.name.endswith(".weights.h5"):
        try:
            model.load_weights(path)
        except ValueError as e:
            raise WeightsError(f"{path.name} does not fit the model: {e}") from None
    else:
        load_weights_h5(model, path)


def save_segmentation(seg: SegmentationModel, directory: str | Path) -> None:
    """Write ``config.json`` and ``config_fullmodel.h5`` (gym/Zoo naming) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = dict(seg.cfg.raw)
    (directory / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    save_weights_h5(seg.model, directory / WEIGHTS_FILE)


def _find_files(directory: Path) -> tuple[Path, Path]:
    """Config and weights of a model directory: ours, or a Zoo download (<stem>.json + .h5)."""
    if not directory.is_dir():
        raise FileNotFoundError(f"segmentation model directory not found: {directory}")
    config = directory / CONFIG_FILE
    if not config.is_file():
        jsons = sorted(directory.glob("*.json"))
        if len(jsons) != 1:
            raise FileNotFoundError(
                f"{directory} needs {CONFIG_FILE} (or exactly one .json config); "
                f"found {[p.name for p in jsons]}"
            )
        config = jsons[0]
    stem = config.stem
    for name in (f"{stem}_fullmodel.h5", f"{stem}.h5", f"{stem}.weights.h5"):
        if (directory / name).is_file():
            return config, directory / name
    h5s = sorted(directory.glob("*.h5"))
    if len(h5s) == 1:
        return config, h5s[0]
    raise FileNotFoundError(
        f"{directory} has config {config.name} but no weights {stem}_fullmodel.h5 "
        f"(.h5 files found: {[p.name for p in h5s]})"
    )


def load_segmentation(
    directory: str | Path, *, expected_classes: int = NCLASSES
) -> SegmentationModel:
    """Build the model from the directory's config and load its weights (by layer order)."""
    config, weights = _find_files(Path(directory))
    cfg = SegmentationConfig.from_json(config, expected_classes=expected_classes)
    model = build_model(cfg)
    load_weights(model, weights)
    return SegmentationModel(cfg, model)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def encode_labels(labels: np.ndarray, nclasses: int = NCLASSES) -> np.ndarray:
    """One-hot float32 labels; nodata (and any id >= nclasses) becomes an all-zero vector."""
    return tf.one_hot(np.asarray(labels, dtype=np.int32), nclasses).numpy()


def _valid_mask(y_true: Any) -> Any:
    return ops.sum(y_true, axis=-1)  # 1 on labelled pixels, 0 on nodata


def masked_crossentropy(y_true: Any, y_pred: Any) -> Any:
    """Categorical cross-entropy averaged over labelled pixels only (nodata = zero one-hot)."""
    mask = _valid_mask(y_true)
    p = ops.clip(y_pred, keras.config.epsilon(), 1.0)
    ce = -ops.sum(y_true * ops.log(p), axis=-1)
    return ops.sum(ce * mask) / ops.maximum(ops.sum(mask), 1.0)


def masked_dice_loss(y_true: Any, y_pred: Any) -> Any:
    """gym's dice_coef_loss (1 - mean per-class Dice over the batch) on labelled pixels only."""
    smooth = 10e-6
    mask = ops.expand_dims(_valid_mask(y_true), -1)
    p = y_pred * mask
    axes = tuple(range(len(y_pred.shape) - 1))
    inter = ops.sum(y_true * p, axis=axes)
    denom = ops.sum(y_true, axis=axes) + ops.sum(p, axis=axes)
    return 1.0 - ops.mean((2.0 * inter + smooth) / (denom + smooth))


def masked_accuracy(y_true: Any, y_pred: Any) -> Any:
    """Pixel accuracy over labelled pixels (nodata left out)."""
    mask = _valid_mask(y_true)
    hit = ops.cast(ops.argmax(y_true, -1) == ops.argmax(y_pred, -1), "float32")
    return ops.sum(hit * mask) / ops.maximum(ops.sum(mask), 1.0)


def segmentation_loss(name: str) -> Callable[[Any, Any], Any]:
    """The training loss for a config LOSS value, ignoring nodata pixels."""
    if name.startswith("cat"):  # gym accepts any "cat..." spelling
        return masked_crossentropy
    if name == "dice":
        return masked_dice_loss
    raise ConfigError(f"LOSS {name!r} is not supported for training; use one of {SUPPORTED_LOSSES}")


def _check_training_data(images: np.ndarray, labels: np.ndarray, nclasses: int) -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be N,H,W,3, got shape {images.shape}")
    if labels.shape != images.shape[:3]:
        raise ValueError(f"labels shape {labels.shape} does not match images {images.shape[:3]}")
    bad = np.setdiff1d(np.unique(labels), [*range(nclasses), NODATA_LABEL])
    if bad.size:
        raise ValueError(f"labels hold ids {bad.tolist()} outside 0..{nclasses - 1} and nodata")


def _dataset(
    x: np.ndarray, y: np.ndarray, nclasses: int, batch_size: int, *, train: bool, seed: int
) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if train:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)

    def prepare(img: tf.Tensor, lab: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if train:  # joint random flips: the only augmentation that keeps chips realistic
            lab3 = lab[..., None]
            both = tf.concat([img, lab3], axis=-1)
            both = tf.image.random_flip_left_right(both, seed=seed)
            both = tf.image.random_flip_up_down(both, seed=seed + 1)
            img, lab = both[..., :3], both[..., 3]
        return img, tf.one_hot(tf.cast(lab, tf.int32), nclasses)

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    ds = ds.map(lambda img, lab: (standardize_batch(img), lab))
    return ds.prefetch(tf.data.AUTOTUNE)


def train_segmentation(
    images: np.ndarray,
    labels: np.ndarray,
    cfg: SegmentationConfig,
    *,
    epochs: int,
    val_fraction: float = 0.15,
    seed: int = 0,
    callbacks: Iterable[keras.callbacks.Callback] | None = None,
    verbose: int = 0,
) -> tuple[SegmentationModel, dict[str, list[float]]]:
    """Train a fresh model on uint8 chips (any size; resized to TARGET_SIZE).

    Labels are class ids with ``NODATA_LABEL`` where unlabelled; those pixels are left out of
    the loss and the accuracy. The learning rate follows gym's schedule from the config.
    Returns the model and the Keras history (loss, accuracy, val_loss, val_accuracy, lr).
    """
    images, labels = np.asarray(images), np.asarray(labels)
    _check_training_data(images, labels, cfg.nclasses)
    loss = segmentation_loss(cfg.loss)
    keras.utils.set_random_seed(seed)

    x = ops.convert_to_numpy(resize_images(images, cfg.target_size))
    y = _resize_labels(labels, cfg.target_size)
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(round(len(x) * val_fraction)) if len(x) > 1 else 0
    if val_fraction > 0 and len(x) > 1:
        n_val = min(max(n_val, 1), len(x) - 1)
    val_idx, train_idx = order[:n_val], order[n_val:]

    bs = cfg.batch_size
    train_ds = _dataset(x[train_idx], y[train_idx], cfg.nclasses, bs, train=True, seed=seed)
    val_ds = None
    if n_val:
        val_ds = _dataset(x[val_idx], y[val_idx], cfg.nclasses, bs, train=False, seed=seed)

    model = build_model(cfg)
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.lr_at_epoch(0)),
        loss=loss,
        metrics=[keras.metrics.MeanMetricWrapper(masked_accuracy, name="accuracy")],
        # XLA compilation of the whole UNet costs tens of seconds on CPU and saves little.
        jit_compile=False,
    )
    cbs: list[keras.callbacks.Callback] = [
        keras.callbacks.LearningRateScheduler(lambda epoch, lr: cfg.lr_at_epoch(epoch))
    ]
    cbs.extend(callbacks or [])
    hist = model.fit(  # shuffle=False: train_ds shuffles itself (keras warns otherwise)
        train_ds, validation_data=val_ds, epochs=epochs, callbacks=cbs, verbose=verbose,
        shuffle=False,
    )  # fmt: skip
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    return SegmentationModel(cfg, model), history
