"""Training a metric regressor's heads on chips and their true metrics, and its report.

The segmentation model is frozen, so the features are computed once and only the dense heads
are fitted; validation tiles come from scenes the training tiles never touch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iou_maps.errors import ClassSetMismatch, TrainingDataError
from iou_maps.models.backend import keras, tf
from iou_maps.models.intervals import fit_calibration
from iou_maps.models.metrics import column_means
from iou_maps.models.model_layers import FlipAugmented
from iou_maps.models.precision import PRECISIONS, check_precision
from iou_maps.models.regressor.features import encode_as_served
from iou_maps.models.regressor.model import RegressorOutputs, resolve_classes
from iou_maps.models.regressor.network import (
    HEADS,
    KINDS,
    build_regressor,
    head_of,
)
from iou_maps.models.segmentation.model import SegmentationModel


def metric_weights(nmetrics: int) -> np.ndarray:
    """The loss's weights: mIoU (second to last) weighs more, the number the maps default to."""
    w = np.ones(nmetrics, np.float32)
    w[-2] = 2.0
    return w


def masked_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Weighted squared error over the defined targets (NaN = class absent: no target)."""
    defined = tf.math.is_finite(y_true)
    y = tf.where(defined, y_true, 0.0)
    w = tf.cast(defined, tf.float32) * tf.constant(metric_weights(int(y_true.shape[-1])))
    return tf.reduce_sum(w * tf.square(y - y_pred), axis=-1) / tf.maximum(
        tf.reduce_sum(w, axis=-1), 1.0
    )


def split_by_scene(
    scene_sets: Sequence[frozenset[str]], val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Train/validation masks such that no tile touching a validation scene is in training.

    A tile overlapping a validation scene and a training scene goes to validation; so the
    validation set never shares ground with the training set.
    """
    scenes = sorted(set().union(*scene_sets))
    if len(scenes) < 2:
        raise TrainingDataError("a split by scene needs tiles from at least 2 scenes")
    rng = np.random.default_rng(seed)
    n_val = min(len(scenes) - 1, max(1, round(val_fraction * len(scenes))))
    val_scenes = set(rng.choice(scenes, size=n_val, replace=False).tolist())
    val = np.array([bool(s & val_scenes) for s in scene_sets])
    return ~val, val, sorted(val_scenes)


def evaluation_scores(
    y_true: np.ndarray, y_pred: np.ndarray, baseline: np.ndarray, metrics: Sequence[str]
) -> dict:
    """Per metric (``metrics``: their names): MAE, Pearson r and the MAE of predicting the
    constant training mean."""
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(metrics):
        # Where the label has a class the prediction calls absent, its IoU is not scored.
        ok = np.isfinite(y_true[:, i]) & np.isfinite(y_pred[:, i])
        t, p = y_true[ok, i], y_pred[ok, i]
        r = float(np.corrcoef(t, p)[0, 1]) if ok.sum() > 2 and t.std() > 0 and p.std() > 0 else 0.0
        out[name] = {
            "n": int(ok.sum()),
            "mae": float(np.mean(np.abs(t - p))) if ok.any() else float("nan"),
            "pearson_r": r,
            "baseline_mae": float(np.mean(np.abs(t - baseline[i]))) if ok.any() else float("nan"),
        }
    return out


def train_regressor(
    seg: SegmentationModel,
    chips: np.ndarray,
    targets: np.ndarray,
    scene_sets: Sequence[frozenset[str]],
    *,
    epochs: int = 300,
    patience: int = 30,
    val_fraction: float = 0.2,
    seed: int = 0,
    augment: bool = True,
    heads: int = HEADS,
    kind: str = KINDS[0],
    precision: str = PRECISIONS[0],
) -> tuple[keras.Model, dict[str, Any]]:
    """Fit the heads of a ``kind`` regressor for its network in ``precision``
    (``iou_maps.models.precision``); returns the full model and a report dict.

    The segmentation model is frozen, so the features are computed once and only the heads
    are trained — seconds instead of minutes on two CPU cores. Flips augment the training
    tiles only for a model without test-time flips (the ``encoder`` kind): with them, a
    flipped chip has the same statistics.
    """
    check_precision(precision)
    keras.utils.set_random_seed(seed)
    targets = np.asarray(targets, np.float32)
    if targets.shape[-1] != seg.cfg.classes.nmetrics:
        raise ClassSetMismatch(
            f"{targets.shape[-1]} target metrics per tile, but the segmentation model's "
            f"classes {list(seg.cfg.classes.names)} give {seg.cfg.classes.nmetrics}"
        )
    train, val, val_scenes = split_by_scene(scene_sets, val_fraction, seed)
    if not train.any() or not val.any():
        raise TrainingDataError("the split by scene left no training or no validation tiles")
    model = build_regressor(seg, kind, heads=heads)
    x_train, y_train = chips[train], targets[train]
    if augment and not any(isinstance(layer, FlipAugmented) for layer in model.layers):
        x_train = np.concatenate(
            [x_train, x_train[:, :, ::-1], x_train[:, ::-1], x_train[:, ::-1, ::-1]]
        )
        y_train = np.concatenate([y_train] * 4)
    f_train = encode_as_served(model, np.ascontiguousarray(x_train), precision)
    f_val = encode_as_served(model, chips[val], precision)
    model.get_layer("feature_norm").adapt(f_train)
    epochs_run, val_losses = [], []
    for k in range(heads):
        keras.utils.set_random_seed(seed + k)
        head = head_of(model, k)
        head.compile(optimizer=keras.optimizers.Adam(1e-3), loss=masked_loss)
        history = head.fit(
            f_train, y_train,
            validation_data=(f_val, targets[val]),
            epochs=epochs, batch_size=64, verbose=0, shuffle=True,
            callbacks=[
                keras.callbacks.EarlyStopping(
                    monitor="val_loss", patience=patience, restore_best_weights=True
                )
            ],
        )  # fmt: skip
        epochs_run.append(len(history.history["loss"]))
        val_losses.append(float(np.min(history.history["val_loss"])))
    # Called, not .predict(): predict traces a new tf.function per head model (TF warns).
    pred_val = np.mean([head_of(model, k)(f_val, training=False).numpy() for k in range(heads)], 0)
    outputs = RegressorOutputs(pred_val)
    if kind == "softmax":  # scored as served (Regressor.predict)
        presence = [
            head_of(model, k, presence=True)(f_val, training=False).numpy() for k in range(heads)
        ]
        nclasses = seg.cfg.nclasses
        outputs = RegressorOutputs(pred_val, np.mean(presence, 0), f_val[:, :nclasses])
        pred_val = resolve_classes(pred_val, np.mean(presence, 0), f_val[:, :nclasses])
    # Interim: calibrated on the validation tiles (they chose the heads' epochs, not weights).
    # Any number of tiles: too few for the level gives whole-range [0, 1] intervals, honest
    # for a regressor trained on a tiny storm (a storm's own labels can calibrate it later).
    calibration = fit_calibration(
        targets[val], pred_val, outputs.interval_inputs(),
        scope="regressor validation scenes", min_tiles=1,
    )  # fmt: skip
    baseline = column_means(targets[train])
    report = {
        "train_tiles": int(train.sum()),
        "val_tiles": int(val.sum()),
        "val_scenes": val_scenes,
        "heads": heads,
        "kind": kind,
        "precision": precision,
        "epochs_run": epochs_run,
        "best_val_loss": val_losses,
        "metrics": list(seg.cfg.classes.metrics),
        "scores": evaluation_scores(targets[val], pred_val, baseline, seg.cfg.classes.metrics),
        "val_true": targets[val],
        "val_pred": pred_val,
        "calibration": calibration.to_dict(),
    }
    return model, report


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Predicted vs. true scatter for each metric on the validation tiles, with MAE and r."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = report["metrics"]
    rows = -(-len(metrics) // 3)
    fig, axes = plt.subplots(rows, 3, figsize=(12, 4 * rows), squeeze=False)
    for ax in axes.ravel()[len(metrics) :]:
        ax.axis("off")
    for ax, (i, name) in zip(axes.ravel(), enumerate(metrics), strict=False):
        t, p = report["val_true"][:, i], report["val_pred"][:, i]
        ok = np.isfinite(t)
        s = report["scores"][name]
        ax.scatter(t[ok], p[ok], s=6, alpha=0.5)
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="true", ylabel="predicted")
        ax.set_title(f"{name}: MAE {s['mae']:.3f}, r {s['pearson_r']:.2f} (n={s['n']})")
    fig.suptitle(f"metric regressor, validation scenes: {', '.join(report['val_scenes'])[:90]}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
