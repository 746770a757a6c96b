"""Where models live under the data directory, and loading them by name."""

from __future__ import annotations

from pathlib import Path

from iou_maps.errors import InvalidModelName, ModelNotFound
from iou_maps.models.classes import ClassSet
from iou_maps.models.gym_files import model_classes
from iou_maps.storms.catalog import STORM_NAME_RE

MODEL_NAME_RE = STORM_NAME_RE  # same rule: a plain folder name, no path tricks


def validate_model_name(name: str) -> str:
    """``name`` if it is a plain folder name (InvalidModelName otherwise: no path tricks)."""
    if not isinstance(name, str) or not MODEL_NAME_RE.fullmatch(name):
        raise InvalidModelName(
            f"invalid model name {name!r}: use 1-64 characters of a-z, 0-9, '_' and '-'"
        )
    return name


def model_dir(data_dir: Path, name: str) -> Path:
    """The folder of model ``name`` under the data directory."""
    return Path(data_dir) / "models" / validate_model_name(name)


def segmentation_dir(data_dir: Path, name: str) -> Path:
    """The segmentation_gym model folder of model ``name``."""
    return model_dir(data_dir, name) / "segmentation"


def regressor_dir(data_dir: Path, name: str) -> Path:
    """The metric regressor folder of model ``name``."""
    return model_dir(data_dir, name) / "regressor"


def load_segmentation_model(data_dir: Path, name: str):
    """The segmentation model of model ``name`` (ModelNotFound if it has none)."""
    from iou_maps.models.segmentation.files import load_segmentation

    path = segmentation_dir(data_dir, name)
    if not path.is_dir():
        raise ModelNotFound(f"no segmentation model {name!r} (looked in {path})")
    return load_segmentation(path)


def load_regressor_model(data_dir: Path, name: str):
    """The regressor of model ``name``, checked against its segmentation model's classes
    (ClassSetMismatch if it was trained for others)."""
    from iou_maps.models.regressor.files import load_regressor

    path = regressor_dir(data_dir, name)
    if not path.is_dir():
        raise ModelNotFound(f"no metric regressor {name!r} (looked in {path})")
    return load_regressor(path, classes=segmentation_classes(data_dir, name))


def segmentation_classes(data_dir: Path, name: str) -> ClassSet | None:
    """The class set of the segmentation model behind model ``name`` (that its regressor was
    cut from), read from its config without TensorFlow; None if there is none."""
    try:
        directory = truth_segmentation_dir(data_dir, name)
    except ModelNotFound:
        return None
    return model_classes(directory)


def regressor_metadata(data_dir: Path, name: str) -> dict:
    """The metadata of regressor ``name`` (model id, analysis zoom, ...), read without loading
    the model (nor TensorFlow): for processes that only need its id and zoom."""
    import json

    path = regressor_dir(data_dir, name) / "metadata.json"
    if not path.is_file():
        raise ModelNotFound(f"no metric regressor {name!r} (looked in {path.parent})")
    try:
        return dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ModelNotFound(f"{path} is not valid JSON: {exc}") from None


def truth_segmentation_dir(data_dir: Path, name: str) -> Path:
    """The segmentation model of model ``name``'s true metrics: the one its regressor was cut
    from (``segmentation`` in its metadata), else the model's own segmentation part.

    ModelNotFound if there is none (the predicted metrics need only the regressor)."""
    candidates = []
    try:
        cut_from = regressor_metadata(data_dir, name).get("segmentation")
    except ModelNotFound:
        cut_from = None
    if isinstance(cut_from, str) and MODEL_NAME_RE.fullmatch(cut_from):
        candidates.append(segmentation_dir(data_dir, cut_from))
    candidates.append(segmentation_dir(data_dir, name))
    for path in candidates:
        if path.is_dir():
            return path
    raise ModelNotFound(
        f"no segmentation model for the true metrics of model {name!r} (looked in "
        + ", ".join(str(p) for p in candidates)
        + ")"
    )
