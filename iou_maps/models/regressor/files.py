"""A metric regressor on disk, and its model id.

On disk::

    models/<name>/regressor/model.keras      frozen segmentation model + heads (Keras)
    models/<name>/regressor/metadata.json    classes, metrics, input size, analysis zoom,
                                              preprocessing, training data, validation scores,
                                              precision, model id
    models/<name>/regressor-bfloat16/…       the same for heads trained on the network's
                                              bfloat16 features (``variant_of``: the float32
                                              regressor's id; see ``iou_maps.models.registry``)

The model id is a short hash of the weights and the metadata, so the same files always give
the same id and any changed weight gives a new one; the cache keys contain it. The precision
is in the metadata, so variants of the same weights in different precisions have different ids
(their values never mix in the cache); a regressor saved before precisions has none: float32,
and its id is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from iou_maps.errors import ClassSetMismatch, RegressorError
from iou_maps.models.backend import keras
from iou_maps.models.classes import ClassSet, class_set_of_metadata
from iou_maps.models.precision import PRECISIONS, check_precision
from iou_maps.models.regressor.model import Regressor
from iou_maps.models.regressor.network import CHIP_SIZE, KINDS, kind_of

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"


def model_id_of(model: keras.Model, metadata: dict[str, Any]) -> str:
    """12 hex digits of SHA-256 over every weight and the metadata (less the id itself)."""
    h = hashlib.sha256()
    for w in model.weights:
        h.update(w.path.encode())
        h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    meta = {k: v for k, v in metadata.items() if k != "model_id"}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


def save_regressor(model: keras.Model, metadata: dict[str, Any], directory: Path) -> Regressor:
    """Write model + metadata (with its model id) atomically; returns the loaded regressor.

    The metadata's ``classes`` (names, in class-id order; the demo's four if absent) must be
    those the model's outputs are about; its ``metrics`` follow from them.
    """
    classes = class_set_of_metadata(metadata)
    width = int(model.output.shape[-1])
    if width != classes.nmetrics:
        raise ClassSetMismatch(
            f"the regressor outputs {width} metrics but its classes {list(classes.names)} "
            f"give {classes.nmetrics}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {
        **metadata,
        "kind": kind_of(model),
        "classes": list(classes.names),
        "metrics": list(classes.metrics),
        "chip_size": CHIP_SIZE,
        "precision": check_precision(str(metadata.get("precision", PRECISIONS[0]))),
    }
    metadata["model_id"] = model_id_of(model, metadata)
    for name, write in (
        (MODEL_FILE, lambda p: model.save(p)),
        (METADATA_FILE, lambda p: Path(p).write_text(json.dumps(metadata, indent=2) + "\n")),
    ):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=Path(name).suffix, dir=directory)
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, directory / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return Regressor(model, metadata)


def load_regressor(directory: Path, *, classes: ClassSet | None = None) -> Regressor:
    """Load and check a regressor; RegressorError says what is wrong.

    ``classes``: the class set of the segmentation model it must belong to (ClassSetMismatch
    otherwise).
    """
    meta_path, model_path = directory / METADATA_FILE, directory / MODEL_FILE
    for p in (meta_path, model_path):
        if not p.is_file():
            raise RegressorError(f"regressor file missing: {p}")
    try:
        metadata = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise RegressorError(f"{meta_path} is not valid JSON: {exc}") from None
    own = class_set_of_metadata(metadata)
    if classes is not None and own.names != classes.names:
        raise ClassSetMismatch(
            f"regressor {directory} was trained for classes {list(own.names)} but its "
            f"segmentation model has {list(classes.names)}: train it again for that model"
        )
    if list(metadata.get("metrics", own.metrics)) != list(own.metrics):
        raise RegressorError(
            f"regressor {directory}: metrics {metadata.get('metrics')} are not those of its "
            f"classes {list(own.names)}"
        )
    if metadata.get("precision", PRECISIONS[0]) not in PRECISIONS:
        raise RegressorError(
            f"regressor {directory} has precision {metadata.get('precision')!r}; this build "
            f"runs {', '.join(PRECISIONS)}"
        )
    model = keras.models.load_model(model_path, compile=False)
    if tuple(model.input.shape[1:]) != (CHIP_SIZE, CHIP_SIZE, 3):
        # Regressors before the softmax statistics took the resized image, not the chip.
        raise RegressorError(
            f"regressor {directory} takes {tuple(model.input.shape[1:])} inputs, not "
            f"{CHIP_SIZE}x{CHIP_SIZE} RGB chips: it was saved by an older IoU Maps; "
            "train it again with `iou-maps train-regressor`"
        )
    if int(model.output.shape[-1]) != own.nmetrics:
        raise ClassSetMismatch(
            f"regressor {directory} outputs {model.output.shape[-1]} metrics but its classes "
            f"{list(own.names)} give {own.nmetrics}"
        )
    if metadata.get("kind", KINDS[0]) != kind_of(model):
        raise RegressorError(
            f"regressor {directory}: metadata says kind {metadata.get('kind')!r} but the model "
            f"is a {kind_of(model)!r} regressor"
        )
    expected = model_id_of(model, metadata)
    if metadata.get("model_id") != expected:
        raise RegressorError(
            f"regressor {directory}: files do not match model id {metadata.get('model_id')!r} "
            f"(content hashes to {expected!r}); re-save it"
        )
    return Regressor(model, metadata)
