"""A segmentation model on disk: ``config.json`` plus weights, as segmentation_gym writes them.

Weights are read and written in tf.keras 2's legacy HDF5 layout (segmentation_gym's
``model.save_weights('x.h5')``), matched to the model by layer order; Keras 3
``.weights.h5`` files load too. A Segmentation Zoo download (``<stem>.json`` +
``<stem>_fullmodel.h5``) loads as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from iou_maps.errors import ModelFilesMissing, WeightsError
from iou_maps.models.backend import keras
from iou_maps.models.gym_files import (
    CONFIG_FILE,
    class_set_of,
    find_model_files,
    write_class_names,
)
from iou_maps.models.segmentation.config import SegmentationConfig
from iou_maps.models.segmentation.model import SegmentationModel
from iou_maps.models.segmentation.network import build_model

#: segmentation_gym/Zoo naming: weights "<stem>_fullmodel.h5" next to config "<stem>.json".
WEIGHTS_FILE = "config_fullmodel.h5"


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
        raise ModelFilesMissing(f"weights file not found: {path}")
    if path.name.endswith(".weights.h5"):
        try:
            model.load_weights(path)
        except ValueError as e:
            raise WeightsError(f"{path.name} does not fit the model: {e}") from None
    else:
        load_weights_h5(model, path)


def save_segmentation(seg: SegmentationModel, directory: str | Path) -> None:
    """Write ``config.json`` and ``config_fullmodel.h5`` (gym/Zoo naming) into ``directory``,
    and the class names in ``classes.txt`` where the config alone does not give them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = dict(seg.cfg.raw)
    (directory / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    if seg.cfg.classes != class_set_of(seg.cfg.nclasses, cfg.get("MY_CLASS_NAMES")):
        write_class_names(directory, seg.cfg.classes.names)
    save_weights_h5(seg.model, directory / WEIGHTS_FILE)


def load_segmentation(directory: str | Path) -> SegmentationModel:
    """Build the model from the directory's config and load its weights (by layer order)."""
    config, weights = find_model_files(Path(directory))
    cfg = SegmentationConfig.from_json(config)
    model = build_model(cfg)
    load_weights(model, weights)
    return SegmentationModel(cfg, model)
