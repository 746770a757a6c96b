"""Where models live under the data directory, and loading them by name.

A model's regressor may be prepared in several precisions (``iou_maps.models.precision``):
``regressor/`` (float32) and, beside it, ``regressor-bfloat16/``, whose metadata names the
float32 regressor it was prepared with (``variant_of``): a variant left from an earlier
training of the float32 one is not used. Loading a regressor by name, and reading its metadata
(its model id), choose the same variant: the one ``choose_precision`` picks for the setting
(``IOU_MAPS_PRECISION``, default ``auto``) on this machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from iou_maps.config import Settings
from iou_maps.errors import InvalidModelName, ModelNotFound
from iou_maps.models.classes import ClassSet
from iou_maps.models.gym_files import model_classes
from iou_maps.models.precision import PRECISIONS, choose_precision
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


def regressor_dir(data_dir: Path, name: str, precision: str = PRECISIONS[0]) -> Path:
    """The metric regressor folder of model ``name`` (of its ``precision`` variant)."""
    folder = "regressor" if precision == PRECISIONS[0] else f"regressor-{precision}"
    return model_dir(data_dir, name) / folder


def _metadata(directory: Path, name: str) -> dict[str, Any]:
    path = directory / "metadata.json"
    if not path.is_file():
        raise ModelNotFound(f"no metric regressor {name!r} (looked in {directory})")
    try:
        return dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ModelNotFound(f"{path} is not valid JSON: {exc}") from None


def prepared_precisions(data_dir: Path, name: str) -> tuple[str, ...]:
    """The precisions regressor ``name`` is prepared in: float32 and each variant prepared
    with the float32 regressor there now (ModelNotFound without a float32 regressor)."""
    float32_id = _metadata(regressor_dir(data_dir, name), name).get("model_id")
    prepared = [PRECISIONS[0]]
    for precision in PRECISIONS[1:]:
        try:
            meta = _metadata(regressor_dir(data_dir, name, precision), name)
        except ModelNotFound:
            continue
        if meta.get("variant_of") == float32_id and meta.get("precision") == precision:
            prepared.append(precision)
    return tuple(prepared)


def serving_precision(data_dir: Path, name: str, setting: str | None = None) -> str:
    """The precision in which this machine runs regressor ``name``: ``choose_precision`` of
    ``setting`` (default: the ``precision`` setting of the environment) among those it is
    prepared in."""
    setting = Settings().precision if setting is None else setting
    return choose_precision(setting, prepared_precisions(data_dir, name))


def save_regressors(data_dir: Path, name: str, trained: list[tuple[Any, dict[str, Any]]]) -> list:
    """Save regressor ``name`` in each precision it was trained for (``(model, metadata)``
    pairs, float32 among them; ``precision`` in each metadata): the float32 one first, then
    each variant naming it. Returns the loaded regressors, in that order."""
    from iou_maps.models.regressor.files import save_regressor

    by_precision = {str(meta.get("precision", PRECISIONS[0])): (m, meta) for m, meta in trained}
    if PRECISIONS[0] not in by_precision:
        raise ValueError("a regressor is always prepared in float32, which every machine runs")
    model, metadata = by_precision.pop(PRECISIONS[0])
    saved = [save_regressor(model, metadata, regressor_dir(data_dir, name))]
    for precision, (model, metadata) in by_precision.items():
        variant = {**metadata, "variant_of": saved[0].model_id}
        saved.append(save_regressor(model, variant, regressor_dir(data_dir, name, precision)))
    return saved


def load_segmentation_model(data_dir: Path, name: str):
    """The segmentation model of model ``name`` (ModelNotFound if it has none)."""
    from iou_maps.models.segmentation.files import load_segmentation

    path = segmentation_dir(data_dir, name)
    if not path.is_dir():
        raise ModelNotFound(f"no segmentation model {name!r} (looked in {path})")
    return load_segmentation(path)


def load_regressor_model(data_dir: Path, name: str, precision: str | None = None):
    """The regressor of model ``name`` in the precision ``serving_precision`` chooses for the
    ``precision`` setting (default: the environment's), checked against its segmentation
    model's classes (ClassSetMismatch if it was trained for others)."""
    from iou_maps.models.regressor.files import load_regressor

    path = regressor_dir(data_dir, name)
    if not path.is_dir():
        raise ModelNotFound(f"no metric regressor {name!r} (looked in {path})")
    return load_regressor(
        regressor_dir(data_dir, name, serving_precision(data_dir, name, precision)),
        classes=segmentation_classes(data_dir, name),
    )


def segmentation_classes(data_dir: Path, name: str) -> ClassSet | None:
    """The class set of the segmentation model behind model ``name`` (that its regressor was
    cut from), read from its config without TensorFlow; None if there is none."""
    try:
        directory = truth_segmentation_dir(data_dir, name)
    except ModelNotFound:
        return None
    return model_classes(directory)


def regressor_metadata(data_dir: Path, name: str, precision: str | None = None) -> dict:
    """The metadata of regressor ``name`` (model id, analysis zoom, ...) in the precision that
    ``load_regressor_model`` loads, read without loading the model (nor TensorFlow): for
    processes that only need its id and zoom."""
    chosen = serving_precision(data_dir, name, precision)
    return _metadata(regressor_dir(data_dir, name, chosen), name)


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
