"""What the cache knows about a storm: how many analysis tiles it has values for, how the
predicted mIoU is distributed, and, where labels exist, how far the regressor's predictions
are from the true metrics (MAE, Pearson r): the storm's own validation of the regressor.

Read from the cache alone (nothing is computed): ``precompute`` (with ``--source true`` for
the true values) makes the counts complete.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from mercantile import Tile

from iou_maps.compute.metric_store import Entry
from iou_maps.models.classes import ClassSet
from iou_maps.storms.catalog import Storm
from iou_maps.storms.grid import tiles_intersecting

#: Bins of the predicted mIoU's histogram (equal widths over 0..1).
HISTOGRAM_BINS = 10
#: Cache reads go in chunks of this many tiles (one round trip each).
READ_CHUNK = 4096


class CacheReader(Protocol):
    """What a summary reads: ``MetricStore`` or ``GuardedStore``."""

    def get_many(self, storm_name: str, tiles: Sequence[Tile]) -> Mapping[Tile, Entry]:
        """Cached entries of ``tiles``."""
        ...


@dataclass
class Accuracy:
    """Predicted against true values of one metric on the tiles that have both."""

    n: int
    mae: float | None  # None without any tile
    pearson_r: float | None  # None where undefined (fewer than 3 tiles, or a constant)


@dataclass
class StormSummary:
    """Counts of analysis tiles, the predicted mIoU's histogram and the regressor's accuracy."""

    storm: str
    model_id: str
    segmentation_id: str | None
    analysis_zoom: int
    metrics: list[str]  # the names of the model's metrics (``accuracy``'s keys)
    analysis_tiles: int  # under the storm's scenes
    cached: int  # with a predicted value or the "no imagery" marker in the cache
    with_imagery: int  # cached with a predicted value
    labelled: int  # under labelled scenes
    true_cached: int  # labelled, with a true value or the "too few labels" marker cached
    evaluated: int  # with a true value (enough labelled pixels)
    compared: int  # with both a predicted and a true value
    histogram_edges: list[float] = field(default_factory=list)
    histogram_counts: list[int] = field(default_factory=list)
    accuracy: dict[str, Accuracy] | None = None  # None: no true values to compare with

    @property
    def has_labels(self) -> bool:
        """Whether the storm has labelled scenes."""
        return self.labelled > 0


def read_all(cache: CacheReader, storm_name: str, tiles: Sequence[Tile]) -> dict[Tile, Entry]:
    """Every cached entry of ``tiles``, in chunks of ``READ_CHUNK``."""
    out: dict[Tile, Entry] = {}
    for i in range(0, len(tiles), READ_CHUNK):
        out.update(cache.get_many(storm_name, tiles[i : i + READ_CHUNK]))
    return out


def accuracy(pred: np.ndarray, true: np.ndarray, classes: ClassSet) -> dict[str, Accuracy]:
    """Per metric of ``classes``: MAE and Pearson r of (N, C + 2) predictions against true
    values, over the tiles where both are defined."""
    out = {}
    for i, name in enumerate(classes.metrics):
        ok = np.isfinite(pred[:, i]) & np.isfinite(true[:, i])
        p, t = pred[ok, i].astype(np.float64), true[ok, i].astype(np.float64)
        r = None
        if ok.sum() > 2 and p.std() > 0 and t.std() > 0:
            r = float(np.corrcoef(p, t)[0, 1])
        mae = float(np.mean(np.abs(p - t))) if ok.any() else None
        out[name] = Accuracy(int(ok.sum()), mae, r)
    return out


def summarize(
    storm: Storm,
    analysis_zoom: int,
    predicted: CacheReader,
    model_id: str,
    true: CacheReader | None = None,
    segmentation_id: str | None = None,
    *,
    classes: ClassSet,
) -> StormSummary:
    """The summary of ``storm`` from the caches of predicted and (if given) true values, the
    metric vectors of ``classes``."""
    tiles = tiles_intersecting(storm.coverage, analysis_zoom)
    labelled = tiles_intersecting(storm.label_coverage, analysis_zoom) if storm.has_labels else []
    pred = read_all(predicted, storm.name, tiles)
    values = {t: e.values for t, e in pred.items() if e.values is not None}
    miou = np.array([v[classes.metric_index("miou")] for v in values.values()], np.float64)
    counts, edges = np.histogram(miou[np.isfinite(miou)], HISTOGRAM_BINS, range=(0.0, 1.0))
    summary = StormSummary(
        storm=storm.name,
        model_id=model_id,
        segmentation_id=segmentation_id,
        analysis_zoom=analysis_zoom,
        metrics=list(classes.metrics),
        analysis_tiles=len(tiles),
        cached=len(pred),
        with_imagery=len(values),
        labelled=len(labelled),
        true_cached=0,
        evaluated=0,
        compared=0,
        histogram_edges=[round(float(e), 6) for e in edges],
        histogram_counts=[int(c) for c in counts],
    )
    if true is None or not labelled:
        return summary
    truth = read_all(true, storm.name, labelled)
    true_values = {t: e.values for t, e in truth.items() if e.values is not None}
    both = [t for t in true_values if t in values]
    summary.true_cached, summary.evaluated, summary.compared = (
        len(truth), len(true_values), len(both)
    )  # fmt: skip
    if both:
        summary.accuracy = accuracy(
            np.array([values[t] for t in both]), np.array([true_values[t] for t in both]),
            classes,
        )  # fmt: skip
    return summary


__all__ = ["Accuracy", "StormSummary", "accuracy", "read_all", "summarize"]
