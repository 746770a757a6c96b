"""Filling the service's cache for an export: every value a storm's tiles of a layer show,
computed where missing through the service's engine (its model in a worker process, loaded
only if some value is missing), and the lower-zoom aggregates precompute writes: the fill
plan's steps (``iou_maps.compute.plan``) run by an ``EngineRunner``."""

from __future__ import annotations

from iou_maps.compute.engine import MetricEngine
from iou_maps.compute.plan import EngineRunner, FillPlan, FillSummary, steps_for
from iou_maps.config import Settings
from iou_maps.errors import CacheUnavailable, ExportError, ModelNotFound
from iou_maps.exports.options import Progress
from iou_maps.layers.base import Layer
from iou_maps.layers.registry import LAYERS, Source, get_layer
from iou_maps.storms.catalog import Catalog
from iou_maps.storms.mosaic import storm_zoom_range

__all__ = ["FILL_CHUNK", "fill_cache", "open_export_engine"]

#: Analysis tiles computed per engine call while filling the cache (one model batch).
FILL_CHUNK = 64


def open_export_engine(settings: Settings) -> MetricEngine:
    """The service's engine for ``settings`` (catalog, model ids, Redis), whose models load
    in a worker process only when a value must be computed (as the service's, by default):
    the regressor, and the segmentation model of the true metrics (as ``engine.open_engine``
    finds it; without one, true and error layers are refused with the reason).

    The model ids and analysis zoom come from the models' files, without TensorFlow."""
    from iou_maps.compute.computed import Computer
    from iou_maps.compute.computers import ProcessComputer
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


def check_layer(engine: MetricEngine, storm_name: str, source: str) -> Layer:
    """The layer of that name, if ``storm`` has its values: the engine's NoLabels (a storm
    without labels) or ModelNotFound (no segmentation model) otherwise."""
    if source not in LAYERS:
        raise ExportError(f"unknown source {source!r}; valid: {', '.join(LAYERS)}")
    layer = get_layer(source)
    engine.check_source(storm_name, layer)
    return layer


def fill_cache(
    engine: MetricEngine,
    storm_name: str,
    *,
    source: str = Source.predicted.value,
    progress: Progress | None = None,
    chunk: int = FILL_CHUNK,
    metric: str | None = None,
) -> FillSummary:
    """Make the cache hold every value the storm's tiles of layer ``source`` show: each
    analysis tile (computed where missing, through the engine as a tile request would) and
    the lower-zoom aggregates, as precompute writes them (``plan.steps_for``: for ``error``,
    the true values, the predictions of the tiles with a true value and the mean absolute
    errors). Nothing is computed if all is cached. ``metric``: the metric the export shows
    (MetricNotInModel, naming the valid ones, if the engine's model has no such metric)."""
    if metric is not None:
        engine.classes.metric_index(metric)
    layer = check_layer(engine, storm_name, source)
    if engine.store is None or not engine.store.ping():
        raise CacheUnavailable("Redis is not reachable: an export reads the service's cache")
    storm = engine.storm(storm_name).storm
    plan = FillPlan(
        engine.sources, storm, engine.analysis_zoom, storm_zoom_range(storm)[0],
        steps_for(layer), lazy_aggregates=True,
    )  # fmt: skip
    return plan.run(EngineRunner(engine, chunk), progress)
