"""Metrics cross-checked against scikit-learn on random and edge-case inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, jaccard_score

from iou_maps.models.classes import NODATA_LABEL
from iou_maps.models.metrics import class_fractions, confusion_matrices, metric_vectors


def sklearn_vector(label: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The definition of iou_maps.models.metrics computed with scikit-learn on one chip."""
    valid = label != NODATA_LABEL
    y, p = label[valid].ravel(), pred[valid].ravel()
    out = np.full(6, np.nan)
    present = sorted(set(y.tolist()) | set(p.tolist()))
    if not present:
        return out
    iou = jaccard_score(y, p, labels=present, average=None, zero_division=0)
    dice = f1_score(y, p, labels=present, average=None, zero_division=0)
    for cls, value in zip(present, iou, strict=True):
        out[cls] = value
    out[4] = iou.mean()
    out[5] = dice.mean()
    return out


def test_random_batch_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(12, 32, 32), dtype=np.uint8)
    preds = labels.copy()
    flip = rng.random(preds.shape) < rng.random((12, 1, 1))  # per-chip error rate
    preds[flip] = rng.integers(0, 4, size=flip.sum())
    labels[rng.random(labels.shape) < 0.1] = NODATA_LABEL
    got = metric_vectors(labels, preds, 4)
    assert got.shape == (12, 6) and got.dtype == np.float32
    for i in range(12):
        np.testing.assert_allclose(got[i], sklearn_vector(labels[i], preds[i]), atol=1e-6)


def test_absent_class_is_left_out_not_zero_or_one() -> None:
    label = np.zeros((8, 8), np.uint8)
    label[:, 4:] = 1
    pred = label.copy()
    pred[0, 0] = 1  # one water pixel predicted as sand
    vec = metric_vectors(label, pred, 4)[0]
    assert np.isnan(vec[2]) and np.isnan(vec[3])  # vegetation, development absent from both
    np.testing.assert_allclose(vec[4], np.mean([31 / 32, 32 / 33]), rtol=1e-6)
    np.testing.assert_allclose(vec, sklearn_vector(label, pred), atol=1e-6)


def test_single_class_perfect_and_empty_prediction() -> None:
    label = np.full((16, 16), 2, np.uint8)
    perfect = metric_vectors(label, label, 4)[0]
    assert perfect[2] == 1.0 and perfect[4] == 1.0 and perfect[5] == 1.0
    assert np.isnan(perfect[[0, 1, 3]]).all()
    # "Empty" prediction: the model predicts another class everywhere.
    wrong = metric_vectors(label, np.zeros_like(label), 4)[0]
    assert wrong[0] == 0.0 and wrong[2] == 0.0 and wrong[4] == 0.0 and wrong[5] == 0.0
    np.testing.assert_allclose(wrong, sklearn_vector(label, np.zeros_like(label)), atol=1e-6)


def test_nodata_pixels_are_excluded() -> None:
    rng = np.random.default_rng(3)
    label = rng.integers(0, 4, size=(20, 20)).astype(np.uint8)
    pred = rng.integers(0, 4, size=(20, 20)).astype(np.uint8)
    base = metric_vectors(label, pred, 4)[0]
    label2 = np.pad(label, 5, constant_values=NODATA_LABEL)
    pred2 = np.pad(pred, 5, constant_values=3)  # junk under nodata must not count
    np.testing.assert_allclose(metric_vectors(label2, pred2, 4)[0], base)
    all_nodata = metric_vectors(np.full((4, 4), NODATA_LABEL, np.uint8), np.zeros((4, 4)), 4)[0]
    assert np.isnan(all_nodata).all()


def test_confusion_matrix_counts_and_shape_errors() -> None:
    label = np.array([[0, 1], [2, 3]])
    pred = np.array([[0, 0], [2, 2]])
    cm = confusion_matrices(label, pred, 4)
    assert cm.shape == (1, 4, 4) and cm.sum() == 4
    assert cm[0, 1, 0] == 1 and cm[0, 3, 2] == 1
    with pytest.raises(ValueError, match="shape"):
        confusion_matrices(label, pred[:1], 4)


def test_class_fractions() -> None:
    chip = np.array([[0, 0], [1, NODATA_LABEL]], np.uint8)
    np.testing.assert_allclose(class_fractions(chip, 4)[0], [2 / 3, 1 / 3, 0, 0], rtol=1e-6)
    assert np.isnan(class_fractions(np.full((2, 2), NODATA_LABEL, np.uint8), 4)).all()
