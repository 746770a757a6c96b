"""The sources of a metric layer: ``predicted``, ``true`` and ``error`` values.

- ``predicted``: the metric regressor's values (``iou_maps.compute.computers``), keyed by
  its model id;
- ``true``: the segmentation model's metrics against the storm's labels
  (``iou_maps.compute.truth``), keyed by the segmentation model's id, so they outlive a
  retrained regressor;
- ``error``: predicted − true, computed from the two; only its far-out aggregates (mean
  absolute errors, written by precompute) are stored, keyed by both ids.

Each computed source has a ``Channel`` (computer, cache, single flight); ``Sources`` holds an
engine's channels and answers which values a storm has and which model ids stand behind them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import redis
import shapely
from mercantile import Tile

from iou_maps.compute.computers import Computer
from iou_maps.compute.metric_store import (
    NO_IMAGERY,
    PREDICTED_NAMESPACE,
    Entry,
    GuardedStore,
    MetricStore,
)
from iou_maps.compute.single_flight import SingleFlight
from iou_maps.compute.truth import ERROR_NAMESPACE, TRUE_NAMESPACE, error_id
from iou_maps.errors import ModelNotFound, NoLabels
from iou_maps.models.classes import Source
from iou_maps.storms.catalog import Storm
from iou_maps.storms.grid import descendants

#: Most analysis tiles read from the cache to aggregate a far-out cell on the fly.
MAX_ON_THE_FLY = 4096


@dataclass
class Channel:
    """Values of one source (predicted or true): computed by ``computer``, cached in
    ``store`` (``cache``: the same, a Redis error meaning "not cached"), each computed once
    (``flight``)."""

    computer: Computer
    store: MetricStore | None
    cache: GuardedStore | None
    flight: SingleFlight

    @classmethod
    def open(
        cls, computer: Computer, client: redis.Redis | None, namespace: str, lock_wait: float
    ) -> Channel:
        """The channel of ``computer``'s values in key space ``namespace`` of ``client``."""
        store = MetricStore(client, computer.model_id, namespace) if client is not None else None
        cache = GuardedStore(store) if store is not None else None
        return cls(computer, store, cache, SingleFlight(computer, cache, lock_wait))


class Sources:
    """The channels of an engine: predicted values always, true values (and so errors) where
    a segmentation model is there (``truth_missing`` says why not)."""

    def __init__(
        self,
        computer: Computer,
        truth: Computer | None,
        client: redis.Redis | None,
        lock_wait: float,
        truth_missing: str = "this engine has no segmentation model for true metrics",
    ) -> None:
        self.predicted = Channel.open(computer, client, PREDICTED_NAMESPACE, lock_wait)
        self.truth = Channel.open(truth, client, TRUE_NAMESPACE, lock_wait) if truth else None
        self.truth_missing = truth_missing
        self.error_store: MetricStore | None = None
        self.error_cache: GuardedStore | None = None
        if truth is not None and client is not None:
            ids = error_id(computer.model_id, truth.model_id)
            self.error_store = MetricStore(client, ids, ERROR_NAMESPACE)
            self.error_cache = GuardedStore(self.error_store)

    @property
    def channels(self) -> list[Channel]:
        """The computed sources' channels."""
        return [c for c in (self.predicted, self.truth) if c is not None]

    @property
    def truth_id(self) -> str | None:
        """The segmentation model's id (the true values' keys), None without one."""
        return self.truth.computer.model_id if self.truth is not None else None

    def source_id(self, source: Source) -> str:
        """The id of the model(s) behind the values of ``source``."""
        model_id = self.predicted.computer.model_id
        if source is Source.predicted or self.truth_id is None:
            return model_id
        return self.truth_id if source is Source.true else error_id(model_id, self.truth_id)

    def check(self, storm: Storm, source: Source) -> None:
        """NoLabels for true/error values of a storm without labels, ModelNotFound without
        the segmentation model that computes them."""
        if source is Source.predicted:
            return
        if not storm.has_labels:
            raise NoLabels(
                f"storm {storm.name!r} has no label rasters: {source.value} metrics need labels "
                "(ingest them as <image>_label.tif or .png beside each image)"
            )
        if self.truth is None:
            raise ModelNotFound(f"{source.value} metrics are unavailable: {self.truth_missing}")

    def channel(self, source: Source) -> Channel:
        """The channel of predicted or true values (ModelNotFound without a truth model)."""
        if source is Source.predicted:
            return self.predicted
        if source is Source.true and self.truth is not None:
            return self.truth
        if source is Source.true:
            raise ModelNotFound(f"true metrics are unavailable: {self.truth_missing}")
        raise ValueError("error values are derived from the two channels")

    @staticmethod
    def area(storm: Storm, source: Source) -> shapely.Geometry:
        """Where ``source`` may have values: under the scenes, or under the labelled ones."""
        return storm.coverage if source is Source.predicted else storm.label_coverage

    def cached(
        self, storm_name: str, tiles: Sequence[Tile], source: Source = Source.predicted
    ) -> dict[Tile, Entry]:
        """Stored entries of ``tiles`` (aggregates of the error layer for ``error``)."""
        cache = self.error_cache if source is Source.error else self.channel(source).cache
        return cache.get_many(storm_name, tiles) if cache is not None else {}

    def cached_abs_error(self, storm_name: str, tiles: Sequence[Tile]) -> dict[Tile, Entry]:
        """|predicted − true| of analysis tiles whose values are cached (``abs_errors``)."""
        true = self.cached(storm_name, tiles, Source.true)
        want = [t for t, e in true.items() if e.has_imagery]
        return abs_errors(self.cached(storm_name, want, Source.predicted), true)

    def far_cells(
        self,
        storm: Storm,
        cells: list[Tile],
        source: Source,
        analysis_zoom: int,
        inside: Callable[[Sequence[Tile], shapely.Geometry], np.ndarray],
    ) -> tuple[dict[Tile, Entry], int]:
        """Cells of a far-out metric tile: pre-aggregated ones (written by precompute), the
        rest averaged from cached analysis tiles when few enough; and how many cells are not
        (wholly) known. ``inside(tiles, area)``: which tiles meet ``area``."""
        storm_name, area = storm.name, self.area(storm, source)
        wanted = [c for c, ok in zip(cells, inside(cells, area), strict=True) if ok]
        entries = self.cached(storm_name, wanted, source)
        absent = [c for c in wanted if c not in entries]
        per_cell = 4 ** (analysis_zoom - cells[0].z)
        if not absent or len(absent) * per_cell > MAX_ON_THE_FLY:
            return entries, len(absent)
        missing = 0
        kids = {c: descendants(c, analysis_zoom) for c in absent}
        # Children outside the coverage are never stored: they have no imagery, not "missing".
        every = [k for ks in kids.values() for k in ks]
        inside_kids = {k for k, ok in zip(every, inside(every, area), strict=True) if ok}
        kids = {c: [k for k in ks if k in inside_kids] for c, ks in kids.items()}
        children = [k for ks in kids.values() for k in ks]
        if source is Source.error:
            cached = self.cached_abs_error(storm_name, children)
        else:
            cached = self.cached(storm_name, children, source)
        for c, ks in kids.items():
            vals = [v for k in ks if k in cached and (v := cached[k].values) is not None]
            if vals:
                stacked = np.stack(vals)
                known = ~np.isnan(stacked)
                # np.nanmean's sum / count, without its warning where no child is known (NaN).
                with np.errstate(invalid="ignore"):
                    mean = np.where(known, stacked, 0).sum(axis=0) / known.sum(axis=0)
                entries[c] = Entry(mean.astype(np.float32), len(vals))
            if any(k not in cached for k in ks):
                missing += 1  # partly known at best
        return entries, missing

    def close(self) -> None:
        """Store what was computed, then stop the computers."""
        for channel in self.channels:
            channel.flight.close()  # values already computed still reach Redis
        for channel in self.channels:
            channel.computer.close()

    def flush(self) -> None:
        """Wait until every computed value is stored (or has failed)."""
        for channel in self.channels:
            channel.flight.flush()


class NoCache:
    """The cache of an engine without Redis: nothing cached."""

    @staticmethod
    def get_many(storm_name: str, tiles: Sequence[Tile]) -> dict[Tile, Entry]:
        """Nothing is cached."""
        return {}


def abs_errors(pred: dict[Tile, Entry], true: dict[Tile, Entry]) -> dict[Tile, Entry]:
    """|predicted − true| of the tiles of ``true`` that have a value and a prediction in
    ``pred``; "no value" where ``true`` has none (tiles with a true value but no prediction
    yet are left out: not known)."""
    out = {t: NO_IMAGERY for t, e in true.items() if not e.has_imagery}
    for t, e in true.items():
        p = pred.get(t)
        if e.has_imagery and p is not None:
            out[t] = difference(p, e, absolute=True) if p.has_imagery else NO_IMAGERY
    return out


def difference(pred: Entry, true: Entry, *, absolute: bool = False) -> Entry:
    """predicted − true (``absolute``: its magnitude), NaN where either is undefined."""
    assert pred.values is not None and true.values is not None
    diff = pred.values.astype(np.float32) - true.values.astype(np.float32)
    return Entry(np.abs(diff) if absolute else diff, 1)
