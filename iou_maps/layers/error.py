"""The ``error`` layer: predicted − true where both exist; lower zooms show the mean
absolute error (a signed mean would let errors of opposite sign cancel)."""

import numpy as np

from iou_maps.compute.metric_store import Entry
from iou_maps.compute.truth import ERROR_NAMESPACE
from iou_maps.layers.base import REGRESSOR, SEGMENTATION, Layer

#: The value range its diverging colours span by default (errors beyond are saturated).
ERROR_RESCALE = (-0.5, 0.5)


def difference(pred: Entry, true: Entry, *, absolute: bool = False) -> Entry:
    """predicted − true (``absolute``: its magnitude), NaN where either is undefined."""
    assert pred.values is not None and true.values is not None
    diff = pred.values.astype(np.float32) - true.values.astype(np.float32)
    return Entry(np.abs(diff) if absolute else diff, 1)


def _signed(true: Entry, pred: Entry) -> Entry:
    return difference(pred, true)


def _absolute(true: Entry, pred: Entry) -> Entry:
    return difference(pred, true, absolute=True)


ERROR = Layer(
    name="error",
    title="Error (predicted − true; mean absolute error at lower zooms) of the",
    description="predicted − true where both exist (labelled tiles)",
    aggregate="the mean absolute error of the analysis tiles under the cell",
    # Keyed by both models' ids: a new regressor or segmentation model makes new errors.
    key_space=ERROR_NAMESPACE,
    roles=(REGRESSOR, SEGMENTATION),
    # Blue where the regressor is too pessimistic, red where too optimistic.
    colormap="rdbu_r",
    rescale=ERROR_RESCALE,
    legend="too pessimistic → too optimistic",
    needs_labels=True,
    # True values first: only labelled tiles need a prediction.
    inputs=("true", "predicted"),
    combine=_signed,
    combine_leaf=_absolute,
)
