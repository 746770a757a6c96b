"""A loaded metric regressor: compiled, retrace-free predictions of metric vectors for chips.

The softmax kind's raw outputs are resolved (``resolve_classes``) into metric vectors that say
which classes they are about, as true metrics do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from iou_maps.models import runtime
from iou_maps.models.backend import keras, tf
from iou_maps.models.classes import ClassSet, class_set_of_metadata
from iou_maps.models.inference_graph import InferenceModel
from iou_maps.models.intervals import Calibration, IntervalInputs
from iou_maps.models.precision import PRECISIONS
from iou_maps.models.regressor.network import (
    CHIP_SIZE,
    KINDS,
    NETWORK,
    kind_of,
    with_class_outputs,
)

#: Chips per call of the compiled model inside ``Regressor.predict`` (see there).
PREDICT_CHUNK = 2

#: A tile whose segmentation leaves out a class with at least this presence is in the
#: "a class may have been missed" group of the intervals (``RegressorOutputs.interval_inputs``).
MISS_GROUP_PRESENCE = 0.1

#: A class the segmentation does not predict on a tile counts as in its label (missed: IoU 0)
#: from this presence on, else as absent (no IoU); see ``resolve_classes``.
PRESENCE_THRESHOLD = 0.5


def resolve_classes(
    metrics: np.ndarray, presence: np.ndarray, predicted_share: np.ndarray
) -> np.ndarray:
    """Metric vectors that say which classes they are about, as true metrics do.

    The softmax regressor's heads give an IoU for every class, but its mIoU counts a class only
    where the segmentation predicts it, or with the chance (``presence``) that the label holds
    it all the same: the IoU of any other class is a number that means nothing, and showing
    it beside the mIoU contradicts it. Here each class is resolved as the metrics define it:

    - predicted on the tile (a share > 0): the head's IoU;
    - not predicted, presence ≥ ``PRESENCE_THRESHOLD``: in the label and missed, IoU 0;
    - otherwise absent from label and prediction: no IoU (NaN);

    and mIoU is the mean over the classes that have an IoU, as for true metrics (the heads'
    own mIoU weighs a missed class by its presence instead of 0 or 1). Dice is the heads'.

    The price of numbers that agree with each other, measured with the demo's regressor: mIoU
    MAE 0.031 for both rules on the storm its segmentation model was trained on, 0.060 against
    the heads' own 0.052 on the other storm (hatteras-val); 98.6-99% of the classes called
    absent are absent from the label too.
    """
    out = np.array(metrics, dtype=np.float32, copy=True)
    nclasses = out.shape[1] - 2
    predicted = np.asarray(predicted_share)[:, :nclasses] > 0
    counted = predicted | (np.asarray(presence) >= PRESENCE_THRESHOLD)
    iou = np.where(predicted, out[:, :nclasses], np.where(counted, 0.0, np.nan))
    out[:, :nclasses] = iou
    out[:, nclasses] = np.nan
    some = counted.any(axis=1)
    out[some, nclasses] = np.nanmean(iou[some], axis=1)
    return out


@dataclass
class RegressorOutputs:
    """What the regressor computes for a batch of chips: its metric vectors and, for the
    softmax kind, the mean presence of its heads and the segmentation's predicted shares."""

    metrics: np.ndarray  # (N, C + 2)
    presence: np.ndarray | None = None  # (N, C)
    predicted_share: np.ndarray | None = None  # (N, C)

    def resolved(self) -> np.ndarray:
        """The metric vectors (``resolve_classes`` where the kind allows it)."""
        if self.presence is None or self.predicted_share is None:
            return self.metrics
        return resolve_classes(self.metrics, self.presence, self.predicted_share)

    def interval_inputs(self) -> IntervalInputs:
        """Each tile's interval inputs (``iou_maps.models.intervals``): group 1 where the
        segmentation leaves out a class the heads think may be in the label, else 0; one
        scale for every tile (plain split conformal within each group)."""
        n, nmetrics = self.metrics.shape
        scale = np.ones((n, nmetrics), np.float32)
        if self.presence is None or self.predicted_share is None:
            return IntervalInputs(scale, np.zeros(n, np.uint8))
        absent = np.asarray(self.predicted_share) <= 0
        maybe_missed = (absent & (np.asarray(self.presence) >= MISS_GROUP_PRESENCE)).any(axis=1)
        return IntervalInputs(scale, np.asarray(maybe_missed, np.uint8))


@dataclass
class Regressor:
    """A loaded metric regressor with a compiled, retrace-free prediction path.

    Predictions run an inference copy of the model (``iou_maps.models.inference_graph``): batch
    norms
    folded into their convolutions, the frozen network on ``branches`` parallel branches
    (default: what ``iou_maps.models.runtime`` chose for this process), in the precision its
    heads were trained for (``precision``).
    """

    model: keras.Model
    metadata: dict[str, Any]
    branches: int | None = None

    def __post_init__(self) -> None:
        if self.branches is None:
            self.branches = runtime.inference_branches()
        network = NETWORK[kind_of(self.model)]
        self.inference = InferenceModel(
            with_class_outputs(self.model), network, self.branches, self.precision
        )
        model = self.inference

        # One trace for every batch size: the batch dimension is None in the signature.
        @tf.function(
            input_signature=[tf.TensorSpec([None, CHIP_SIZE, CHIP_SIZE, 3], tf.uint8)],
            reduce_retracing=True,
        )
        def _predict(chips: tf.Tensor) -> Any:
            return model(tf.cast(chips, tf.float32))

        self._predict = _predict

    @property
    def kind(self) -> str:
        """``softmax`` or ``encoder`` (see the module docstring)."""
        return str(self.metadata.get("kind", KINDS[0]))

    @property
    def classes(self) -> ClassSet:
        """The classes of its segmentation model, which its metric vectors are about."""
        return class_set_of_metadata(self.metadata)

    @property
    def precision(self) -> str:
        """The float precision of its network (``iou_maps.models.precision``): its heads were
        trained on that network's features. A regressor saved before precisions is float32."""
        return str(self.metadata.get("precision", PRECISIONS[0]))

    @property
    def model_id(self) -> str:
        """The model id (a hash of the weights and metadata; part of every cache key)."""
        return str(self.metadata["model_id"])

    @property
    def analysis_zoom(self) -> int:
        """The zoom of the analysis tiles the regressor was trained on."""
        return int(self.metadata["analysis_zoom"])

    @property
    def input_size(self) -> tuple[int, int]:
        """The segmentation model's input size (height, width)."""
        height, width = self.metadata["input_size"]
        return int(height), int(width)

    def outputs(self, chips: np.ndarray) -> RegressorOutputs:
        """The model's outputs for (N, 256, 256, 3) uint8 chips, before ``resolve_classes``."""
        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(f"expected (N, {CHIP_SIZE}, {CHIP_SIZE}, 3) chips, got {chips.shape}")
        if len(chips) == 0:
            return RegressorOutputs(np.zeros((0, self.classes.nmetrics), np.float32))
        # The UNet's full-resolution activations of many chips (four flips each) overflow the
        # CPU caches: on 2 vCPUs 2 chips a call run 36 tiles/s, 32 chips a call 21 tiles/s.
        parts = [
            self._predict(tf.constant(chips[i : i + PREDICT_CHUNK], tf.uint8))
            for i in range(0, len(chips), PREDICT_CHUNK)
        ]
        if not isinstance(parts[0], list | tuple):  # the encoder kind: the metrics alone
            return RegressorOutputs(np.concatenate([p.numpy() for p in parts]))
        joined = [np.concatenate([p[j].numpy() for p in parts]) for j in range(len(parts[0]))]
        metrics, *presence, stats = joined
        nclasses = metrics.shape[1] - 2
        return RegressorOutputs(metrics, np.mean(presence, axis=0), stats[:, :nclasses])

    def predict(self, chips: np.ndarray) -> np.ndarray:
        """(N, 256, 256, 3) uint8 → (N, C + 2) float32 metric vectors (``resolve_classes``: NaN
        for the IoU of a class predicted absent, as the metrics define it)."""
        return self.outputs(chips).resolved()

    @property
    def calibration(self) -> Calibration | None:
        """The calibration of its intervals (held-out tiles at training); None for a regressor
        saved before intervals."""
        record = self.metadata.get("intervals")
        return Calibration.from_dict(record) if record else None

    def predict_with_intervals(self, chips: np.ndarray) -> tuple[np.ndarray, IntervalInputs]:
        """``predict``'s metric vectors and the tiles' interval inputs (bounds:
        ``self.calibration.bounds(values, inputs)``)."""
        out = self.outputs(chips)
        return out.resolved(), out.interval_inputs()

    def trace_count(self) -> int:
        """How many graphs the compiled path holds (1 after any number of batch sizes)."""
        return int(self._predict.experimental_get_tracing_count())
