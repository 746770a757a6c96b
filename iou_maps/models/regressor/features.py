"""The features a regressor's heads read (softmax statistics or pooled encoder maps), computed
for training as ``Regressor`` computes them when it serves.

A reduced-precision network's features depend on the kernels that compute them: oneDNN's
bfloat16 convolutions (AMX / AVX512-BF16) round differently from TensorFlow's own, and a
process that trains keeps oneDNN off (``iou_maps.models.runtime``). So ``encode_as_served``
computes such features in a child process set up as an inference process, where the heads'
training data is exactly what serving gives them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from iou_maps.models import model_layers, runtime
from iou_maps.models.backend import keras, tf
from iou_maps.models.inference_graph import InferenceModel
from iou_maps.models.precision import PRECISIONS, check_precision
from iou_maps.models.regressor.model import PREDICT_CHUNK
from iou_maps.models.regressor.network import CHIP_SIZE, NETWORK, features_model, kind_of

#: Registers the regressor's own layers for ``keras.models.load_model`` in the child.
_LAYERS = model_layers


def encode(
    model: keras.Model,
    chips: np.ndarray,
    batch_size: int = PREDICT_CHUNK,
    precision: str = PRECISIONS[0],
) -> np.ndarray:
    """Features of uint8 chips in this process (frozen: computed once for head training), in
    the small batches that keep the UNet's activations in cache (see ``Regressor.predict``);
    the network in ``precision``, as ``Regressor`` runs it."""
    check_precision(precision)
    features = features_model(model)
    inference = (
        InferenceModel(features, NETWORK[kind_of(model)], precision=precision)
        if precision != PRECISIONS[0]
        else None
    )

    @tf.function(input_signature=[tf.TensorSpec([None, CHIP_SIZE, CHIP_SIZE, 3], tf.uint8)])
    def run(x: tf.Tensor) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        return features(x, training=False) if inference is None else inference(x)

    parts = [
        run(tf.constant(chips[i : i + batch_size])).numpy()
        for i in range(0, len(chips), batch_size)
    ]
    width = int(features.output.shape[-1])
    return np.concatenate(parts) if parts else np.zeros((0, width), np.float32)


def encode_as_served(
    model: keras.Model, chips: np.ndarray, precision: str = PRECISIONS[0]
) -> np.ndarray:
    """``encode``, float32 in this process; a reduced precision where oneDNN runs it when
    serving: here if this process has oneDNN on, else in an inference child process."""
    check_precision(precision)
    if precision == PRECISIONS[0] or runtime.onednn_enabled():
        return encode(model, chips, precision=precision)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / name for name in ("model.keras", "chips.npy", "features.npy")]
        model.save(paths[0])
        np.save(paths[1], np.ascontiguousarray(chips))
        # The child chooses its TensorFlow settings before it imports TensorFlow.
        script = (
            "import sys; from iou_maps.models import runtime; runtime.inference_process(); "
            f"from {__name__} import encode_files; encode_files(*sys.argv[1:])"
        )
        proc = subprocess.run(
            [sys.executable, "-c", script, *map(str, paths), precision],
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"the {precision} feature process failed: {proc.stderr[-2000:]}")
        return np.load(paths[2])


def encode_files(model_path: str, chips_path: str, out_path: str, precision: str) -> None:
    """``encode`` of a saved model and saved chips, saved (``encode_as_served``'s child)."""
    model = keras.models.load_model(model_path, compile=False)
    np.save(out_path, encode(model, np.load(chips_path), precision=precision))
