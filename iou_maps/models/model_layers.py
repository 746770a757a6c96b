"""The regressor's own Keras layers and the segmentation's preprocessing, in ``keras.ops`` only.

Nothing here imports TensorFlow: a saved regressor (``model.keras``) loads and runs on any
Keras backend once this module is imported (TensorFlow, which IoU Maps uses, or JAX/PyTorch,
e.g. on a GPU machine without TensorFlow's CUDA build). On TensorFlow the ops are the same
kernels as ``tf.image.resize`` and friends, so the numbers are the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

#: Below these softmax scores a predicted pixel counts as unsure (one share per class each).
UNSURE_BELOW = (0.5, 0.7, 0.9)
#: Above this a predicted pixel counts as sure.
SURE_ABOVE = 0.9
#: Shares are also given as log(share + LOG_FLOOR): a class on 20 pixels of 65536 decides mIoU
#: as much as one on half the tile (it enters the mean), and only a log scale shows it.
LOG_FLOOR = 1e-3


def resize_images(images: Any, size: Sequence[int]) -> Any:
    """Bilinear (antialiased when shrinking, like skimage's resize) back to uint8, as gym does."""
    if tuple(images.shape[1:3]) == tuple(size):
        return ops.cast(images, "uint8")
    out = ops.image.resize(
        ops.cast(images, "float32"), tuple(size), interpolation="bilinear", antialias=True
    )
    return ops.cast(ops.clip(out, 0.0, 255.0), "uint8")


def standardize_batch(x: Any) -> Any:
    """segmentation_gym's per-image standardisation of a batch: (x - mean) / max(std,
    1/sqrt(H*W)), mean and std over all pixels and bands of each image."""
    x = ops.cast(x, "float32")
    n = float(x.shape[1] * x.shape[2]) if None not in x.shape[1:3] else None
    if n is None:  # dynamic spatial size (tf.data pipelines)
        shape = ops.shape(x)
        n = ops.cast(shape[1] * shape[2], "float32")
        floor = 1.0 / ops.sqrt(n)
    else:
        floor = 1.0 / math.sqrt(n)
    m = ops.mean(x, axis=(1, 2, 3), keepdims=True)
    s = ops.maximum(ops.std(x, axis=(1, 2, 3), keepdims=True), floor)
    return (x - m) / s


def model_input(images: Any, size: Sequence[int]) -> Any:
    """N,H,W,3 images (0-255) → the model's float32 input: resize to ``size``, standardise.

    The one preprocessing of every prediction (also the metric regressor's, in its graph)."""
    return standardize_batch(resize_images(images, size))


@keras.saving.register_keras_serializable(package="iou_maps")
class ChipPreprocessing(keras.layers.Layer):
    """Chip (0-255 floats, 256×256) → the segmentation model's input (see ``model_input``)."""

    def __init__(self, input_size: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.input_size = tuple(int(v) for v in input_size)

    def call(self, chips: Any) -> Any:
        """The segmentation model's input of the chips."""
        return model_input(chips, self.input_size)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        """(N, h, w, bands) at the model's input size."""
        return (input_shape[0], *self.input_size, input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        """The layer's configuration (for saving)."""
        return {**super().get_config(), "input_size": list(self.input_size)}


@keras.saving.register_keras_serializable(package="iou_maps")
class ImageryMask(keras.layers.Layer):
    """1.0 where the chip has imagery (some band > 0; chips are zero outside it), else 0.0."""

    def call(self, chips: Any) -> Any:
        """1.0 where some band has data."""
        return ops.cast(ops.max(chips, axis=-1, keepdims=True) > 0, "float32")

    def compute_output_shape(self, input_shape: Any) -> tuple:
        """(N, H, W, 1)."""
        return (*input_shape[:-1], 1)


@keras.saving.register_keras_serializable(package="iou_maps")
class FlipAugmented(keras.layers.Layer):
    """segmentation_gym's TESTTIMEAUG as a batch: (N, ...) → (4N, ...) of the image and its
    flips (rows, columns, both), or back (``inverse``): unflip and average the four."""

    def __init__(self, inverse: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inverse = inverse

    def call(self, x: Any) -> Any:
        """The four flips of the batch, or their average once unflipped."""
        if not self.inverse:
            return ops.concatenate([x, ops.flip(x, 1), ops.flip(x, 2), ops.flip(x, (1, 2))], 0)
        p = ops.split(x, 4, axis=0)
        return (p[0] + ops.flip(p[1], 1) + ops.flip(p[2], 2) + ops.flip(p[3], (1, 2))) / 4

    def compute_output_shape(self, input_shape: Any) -> tuple:
        """Four times the batch, or a quarter of it (``inverse``)."""
        n = input_shape[0]
        if n is not None:
            n = n // 4 if self.inverse else 4 * n
        return (n, *input_shape[1:])

    def get_config(self) -> dict[str, Any]:
        """The layer's configuration (for saving)."""
        return {**super().get_config(), "inverse": self.inverse}


@keras.saving.register_keras_serializable(package="iou_maps")
class SoftmaxStatistics(keras.layers.Layer):
    """What a tile's segmentation looks like, as the metrics would see it: per-tile statistics
    of the softmax over the pixels with imagery, at the chip's resolution.

    Inputs: softmax (N, h, w, C) at the model's size, imagery mask (N, H, W, 1) of the chip.
    The softmax is resized to (H, W) and argmax-ed, as ``SegmentationModel.predict`` does.
    Per class: predicted share, soft (summed-probability) share, soft intersection share,
    unsure shares below each of ``UNSURE_BELOW``, soft IoU, mean score where predicted, highest
    score, sure share; per tile: mean entropy, mean top score, soft mIoU over the classes that
    are predicted or likely. Every value also on a log scale (see ``LOG_FLOOR``).
    """

    def call(self, inputs: list[Any]) -> Any:
        """The statistics (N, 2 × features) of softmax and imagery mask."""
        probs, valid = inputs
        p = ops.image.resize(probs, tuple(valid.shape[1:3]), interpolation="bilinear")
        nclasses = int(probs.shape[-1])
        n_valid = ops.sum(valid, axis=(1, 2)) + 1e-6  # (N, 1)

        def share(x: Any) -> Any:  # (N, H, W, C) → (N, C) share of valid pixels
            return ops.sum(x * valid, axis=(1, 2)) / n_valid

        top = ops.max(p, axis=-1, keepdims=True)
        predicted = ops.one_hot(ops.argmax(p, axis=-1), nclasses)
        pred = share(predicted)
        soft = share(p)
        inter = share(predicted * p)
        unsure = [share(predicted * ops.cast(top < t, "float32")) for t in UNSURE_BELOW]
        union = soft + pred - inter
        soft_iou = ops.where(union > 0, inter / ops.maximum(union, 1e-6), 1.0)
        mean_where_predicted = ops.where(pred > 0, inter / ops.maximum(pred, 1e-6), 0.0)
        highest = ops.max(p * valid, axis=(1, 2))
        sure = share(predicted * ops.cast(p > SURE_ABOVE, "float32"))
        entropy = -ops.sum(p * ops.log(ops.clip(p, 1e-6, 1.0)), -1, keepdims=True)
        likely = ops.cast(ops.logical_or(pred > 0.001, soft > 0.01), "float32")
        soft_miou = ops.divide_no_nan(
            ops.sum(soft_iou * likely, -1, keepdims=True), ops.sum(likely, -1, keepdims=True)
        )
        stats = ops.concatenate(
            [pred, soft, inter, *unsure, soft_iou, share(entropy), share(top), soft_miou,
             mean_where_predicted, highest, sure],
            axis=-1,
        )  # fmt: skip
        return ops.concatenate([stats, ops.log(stats + LOG_FLOOR)], axis=-1)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        """(N, 2 × (classes × 10 + 3))."""
        nclasses = int(input_shape[0][-1])
        return (input_shape[0][0], 2 * (nclasses * (len(UNSURE_BELOW) + 7) + 3))


@keras.saving.register_keras_serializable(package="iou_maps")
class MeanOverCountedClasses(keras.layers.Layer):
    """A head's metric vector from its per-class outputs, by the metrics' own rule for mIoU.

    Inputs: per-class IoU (N, C), presence (N, C) — the chance that a class the segmentation
    does not predict is in the label all the same —, Dice (N, 1) and the softmax statistics
    (their first C columns: predicted shares). A class enters the mean where it is predicted
    (certainly) or present (with its probability, and IoU 0: nothing of it is predicted).
    """

    def call(self, inputs: list[Any]) -> Any:
        """The metric vector (N, classes + 2): per-class IoU, mIoU, Dice."""
        iou, presence, dice, stats = inputs
        nclasses = int(iou.shape[-1])
        predicted = ops.cast(stats[:, :nclasses] > 0, iou.dtype)
        counted = predicted + (1.0 - predicted) * presence
        miou = ops.sum(iou * predicted, -1, keepdims=True) / ops.maximum(
            ops.sum(counted, -1, keepdims=True), 1e-3
        )
        return ops.concatenate([iou, miou, dice], axis=-1)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        """(N, classes + 2)."""
        return (input_shape[0][0], int(input_shape[0][-1]) + 2)
