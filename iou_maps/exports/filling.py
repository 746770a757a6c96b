"""Filling the service's cache for an export: every value a storm's tiles of a source show,
computed where missing through the service's engine (its model in a worker process, loaded
only if some value is missing), and the lower-zoom aggregates precompute writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import mercantile
from mercantile import Tile

from iou_maps.compute.engine import MetricEngine
from iou_maps.compute.metric_store import MetricStore
from iou_maps.compute.precompute import (
    aggregate_levels,
    error_leaves,
    tiles_of,
    uncached,
    with_values,
)
from iou_maps.config import Settings
from iou_maps.errors import CacheUnavailable, ExportError, ModelNotFound
from iou_maps.exports.layers import SOURCES
from iou_maps.exports.options import Progress
from iou_maps.models.classes import Source
from iou_maps.storms.catalog import Catalog
from iou_maps.storms.mosaic import storm_zoom_range

__all__ = ["FILL_CHUNK", "FillReport", "fill_cache", "open_export_engine"]

#: Analysis tiles computed per engine call while filling the cache (one model batch).
FILL_CHUNK = 64


@dataclass
class FillReport:
    """What making a storm's cache complete did."""

    analysis_tiles: int = 0
    already_cached: int = 0
    computed: int = 0
    model_calls: int = 0
    aggregates_written: int = 0


def open_export_engine(settings: Settings) -> MetricEngine:
    """The service's engine for ``settings`` (catalog, model ids, Redis), whose models load
    in a worker process only when a value must be computed (as the service's, by default):
    the regressor, and the segmentation model of the true metrics (as ``engine.open_engine``
    finds it; without one, true and error layers are refused with the reason).

    The model ids and analysis zoom come from the models' files, without TensorFlow."""
    from iou_maps.compute.computers import Computer, ProcessComputer
    from iou_maps.compute.metric_store import connect
    from iou_maps.compute.truth import SegmentationSource
    from iou_maps.models.registry import regressor_metadata, truth_segmentation_dir

    meta = regressor_metadata(settings.data_dir, settings.model)
    data_dir = settings.data_dir.resolve()
    computer = ProcessComputer(data_dir, settings.model, processes=1)
    computer.model_id = str(meta["model_id"])
    truth: Computer | None = None
    truth_missing = ""
    try:
        segmentation = SegmentationSource(truth_segmentation_dir(data_dir, settings.model))
    except ModelNotFound as exc:
        truth_missing = str(exc)
    else:
        truth = computer.truth(segmentation.model_id)
    client = connect(settings.redis_url, settings.data_dir)
    return MetricEngine(
        Catalog(data_dir), computer, client, int(meta["analysis_zoom"]),
        truth=truth, truth_missing=truth_missing,
    )  # fmt: skip


def _check_source(engine: MetricEngine, storm_name: str, source: str) -> Source:
    """The engine's source of that name, if ``storm`` has its values: the engine's NoLabels
    (a storm without labels) or ModelNotFound (no segmentation model) otherwise."""
    if source not in SOURCES:
        raise ExportError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
    engine.check_source(storm_name, Source(source))
    return Source(source)


def _model_calls(engine: MetricEngine) -> int:
    """Model calls this process made, of the regressor and the segmentation model."""
    channels = (engine.sources.predicted, engine.sources.truth)
    return sum(c.flight.model_calls for c in channels if c is not None)


def _store(engine: MetricEngine) -> MetricStore:
    if engine.store is None or not engine.store.ping():
        raise CacheUnavailable("Redis is not reachable: an export reads the service's cache")
    return engine.store


def fill_cache(
    engine: MetricEngine,
    storm_name: str,
    *,
    source: str = Source.predicted.value,
    progress: Progress | None = None,
    chunk: int = FILL_CHUNK,
) -> FillReport:
    """Make the cache hold every value the storm's tiles of ``source`` show: each analysis
    tile (computed where missing, through the engine as a tile request would) and the
    lower-zoom aggregates, as precompute writes them. ``true``: the true values of the
    labelled tiles; ``error``: those, the predictions of the tiles with a true value and the
    error layer's aggregates (mean absolute errors), as ``precompute --source true``.
    Nothing is computed if all is cached."""
    wanted = _check_source(engine, storm_name, source)
    pred_store = _store(engine)
    loaded = engine.storm(storm_name)
    za = engine.analysis_zoom
    lowest = storm_zoom_range(loaded.storm)[0]
    report = FillReport()
    calls_before = _model_calls(engine)

    def fill(of: Source, tiles: Sequence[Tile]) -> int:
        """Compute what the cache of ``of`` lacks of ``tiles``; how many were computed."""
        store = engine.sources.channel(of).store
        assert store is not None  # the engine has Redis (_store)
        todo, cached = uncached(store, storm_name, tiles)
        report.analysis_tiles += len(tiles)
        report.already_cached += cached
        done = report.analysis_tiles - len(todo)
        if progress:
            progress(done, report.analysis_tiles)
        computed = 0
        for i in range(0, len(todo), chunk):
            part = todo[i : i + chunk]
            computed += engine.analysis_values(storm_name, part, len(part), of).computed
            if progress:
                progress(done + i + len(part), report.analysis_tiles)
        report.computed += computed
        engine.flush()  # every computed value is in Redis before the aggregates read them
        return computed

    first = Source.predicted if wanted is Source.predicted else Source.true
    store = engine.sources.channel(first).store
    assert store is not None
    tiles = tiles_of(loaded.storm, za, source=first)
    computed = fill(first, tiles)
    if computed or not _aggregates_complete(store, storm_name, tiles, lowest):
        report.aggregates_written += aggregate_levels(store, storm_name, tiles, za, lowest)
    if wanted is Source.error:
        # The error layer needs a prediction wherever there is a true value.
        computed += fill(Source.predicted, with_values(store, storm_name, tiles))
        error_store = engine.sources.error_store
        assert error_store is not None  # the engine has true values and Redis
        if computed or not _aggregates_complete(error_store, storm_name, tiles, lowest):
            report.aggregates_written += aggregate_levels(
                error_store, storm_name, tiles, za, lowest,
                leaves=error_leaves(pred_store, store, storm_name),
            )  # fmt: skip
    report.model_calls = _model_calls(engine) - calls_before
    return report


def _aggregates_complete(
    store: MetricStore, storm_name: str, tiles: Sequence[Tile], lowest_zoom: int
) -> bool:
    """Whether every aggregate cell precompute writes for ``tiles`` is in the cache."""
    level = set(tiles)
    while level and next(iter(level)).z > lowest_zoom:
        level = {mercantile.parent(t) for t in level}
        cells = sorted(level)
        for i in range(0, len(cells), 4096):
            part = cells[i : i + 4096]
            if len(store.get_many(storm_name, part)) < len(part):
                return False
    return True
