"""Segmentation metrics from confusion matrices: per-class IoU, mIoU and Dice, batched.

One definition used by evaluation, regressor targets and the API (see docs/metrics.md):
- a class absent from both the label and the prediction of a chip has an undefined IoU (NaN)
  and is left out of ``miou`` and ``dice`` (neither 1 nor 0);
- pixels whose label is the nodata value are excluded;
- a chip without any valid pixel gives an all-NaN vector.
"""

from __future__ import annotations

import numpy as np

from iou_maps.models.classes import NODATA_LABEL


def confusion_matrices(
    labels: np.ndarray,
    preds: np.ndarray,
    nclasses: int,
    nodata: int = NODATA_LABEL,
) -> np.ndarray:
    """Confusion matrices of a batch: ``(N, C, C)`` int64, rows = label, columns = prediction.

    ``labels`` and ``preds`` are integer arrays of the same shape ``(N, ...)`` (or a single chip
    ``(H, W)``, treated as N=1). Pixels labelled ``nodata`` or outside ``[0, nclasses)`` in either
    array are ignored.
    """
    labels = np.asarray(labels)
    preds = np.asarray(preds)
    if labels.shape != preds.shape:
        raise ValueError(f"label shape {labels.shape} != prediction shape {preds.shape}")
    if labels.ndim < 2:
        raise ValueError("expected at least (H, W) arrays")
    if labels.ndim == 2:
        labels, preds = labels[None], preds[None]
    n = labels.shape[0]
    lab = labels.reshape(n, -1).astype(np.int64)
    pre = preds.reshape(n, -1).astype(np.int64)
    valid = (lab != nodata) & (lab >= 0) & (lab < nclasses) & (pre >= 0) & (pre < nclasses)
    # One bincount over the whole batch: offset each chip's cells by chip_index * C².
    chip = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None], lab.shape)
    flat = (chip * nclasses * nclasses + lab * nclasses + pre)[valid]
    counts = np.bincount(flat, minlength=n * nclasses * nclasses)
    return counts.reshape(n, nclasses, nclasses)


def metrics_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Metric vectors ``(N, C + 2)`` float32 (iou per class, miou, dice) from ``(N, C, C)``
    matrices."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim == 2:
        cm = cm[None]
    n, c, _ = cm.shape
    tp = np.diagonal(cm, axis1=1, axis2=2)
    label_count = cm.sum(axis=2)
    pred_count = cm.sum(axis=1)
    union = label_count + pred_count - tp
    present = union > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(present, tp / union, np.nan)
        dice = np.where(present, 2 * tp / (label_count + pred_count), np.nan)
    out = np.full((n, c + 2), np.nan, dtype=np.float64)
    out[:, :c] = iou
    any_present = present.any(axis=1)
    # nanmean of an all-NaN row warns; compute only where some class is present.
    out[any_present, c] = np.nanmean(iou[any_present], axis=1)
    out[any_present, c + 1] = np.nanmean(dice[any_present], axis=1)
    return out.astype(np.float32)


def metric_vectors(
    labels: np.ndarray,
    preds: np.ndarray,
    nclasses: int,
    nodata: int = NODATA_LABEL,
) -> np.ndarray:
    """Metric vectors ``(N, nclasses + 2)`` for a batch of label/prediction chips."""
    return metrics_from_confusion(confusion_matrices(labels, preds, nclasses, nodata))


def class_fractions(classes: np.ndarray, nclasses: int, nodata: int = NODATA_LABEL) -> np.ndarray:
    """Fraction of valid pixels of each class per chip: ``(N, C)`` float32 (NaN if no valid px)."""
    classes = np.asarray(classes)
    if classes.ndim == 2:
        classes = classes[None]
    n = classes.shape[0]
    flat = classes.reshape(n, -1).astype(np.int64)
    valid = (flat != nodata) & (flat >= 0) & (flat < nclasses)
    chip = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None], flat.shape)
    counts = np.bincount((chip * nclasses + flat)[valid], minlength=n * nclasses)
    counts = counts.reshape(n, nclasses).astype(np.float64)
    total = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts / total, np.nan).astype(np.float32)


def column_means(values: np.ndarray) -> np.ndarray:
    """The mean of each column over its defined (non-NaN) rows, NaN for a column with none (a
    class absent from every tile of a set): np.nanmean's sum / count, without its warning."""
    known = ~np.isnan(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(known, values, 0).sum(axis=0) / known.sum(axis=0)
