"""Training a segmentation model on labelled chips, as segmentation_gym trains (nodata aside).

Losses and accuracy leave out unlabelled (``NODATA_LABEL``) pixels; the learning rate follows
the config's schedule (``SegmentationConfig.lr_at_epoch``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from iou_maps.errors import ConfigError, TrainingDataError
from iou_maps.models.backend import keras, tf
from iou_maps.models.classes import NODATA_LABEL
from iou_maps.models.model_layers import resize_images, standardize_batch
from iou_maps.models.segmentation.config import SUPPORTED_LOSSES, SegmentationConfig
from iou_maps.models.segmentation.model import SegmentationModel
from iou_maps.models.segmentation.network import build_model

ops = keras.ops


def encode_labels(labels: np.ndarray, nclasses: int) -> np.ndarray:
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


def _resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if tuple(labels.shape[1:3]) == tuple(size):
        return np.asarray(labels, dtype=np.uint8)
    out = tf.image.resize(labels[..., None], size, "nearest")
    return out.numpy()[..., 0].astype(np.uint8)


def _check_training_data(images: np.ndarray, labels: np.ndarray, nclasses: int) -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise TrainingDataError(f"images must be N,H,W,3, got shape {images.shape}")
    if labels.shape != images.shape[:3]:
        raise TrainingDataError(
            f"labels shape {labels.shape} does not match images {images.shape[:3]}"
        )
    bad = np.setdiff1d(np.unique(labels), [*range(nclasses), NODATA_LABEL])
    if bad.size:
        raise TrainingDataError(
            f"labels hold ids {bad.tolist()} outside 0..{nclasses - 1} and nodata"
        )


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
    # shuffle=False: train_ds shuffles itself (keras warns otherwise)
    hist = model.fit(
        train_ds, validation_data=val_ds, epochs=epochs, callbacks=cbs, verbose=verbose,
        shuffle=False,
    )  # fmt: skip
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    return SegmentationModel(cfg, model), history
