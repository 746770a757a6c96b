"""Precompute on a Dask cluster: one task per block of analysis tiles, one model per worker.

- The storm's analysis tiles that are not cached yet are grouped into blocks: the tiles under
  one tile ``block_levels`` zooms up (8×8 by default), so a block's imagery reads stay within
  a few scenes. One Dask task per block.
- Each worker loads the regressor once (``EngineOnWorker``, a worker plugin: set up on every
  worker, including those the nanny starts again after one dies) and runs precompute's own
  pipeline (``precompute.fill``) on its blocks, reading imagery from the shared data
  directory and writing to the shared Redis.
- A worker that dies (SIGKILL, out of memory) costs only its block: the scheduler runs the
  block again elsewhere. Values are whole hash fields, so a block computed twice stores the
  same values once more.
- This process never loads the model: it lists tiles, submits blocks, draws the progress and
  writes the aggregated levels from the stored values once every block is done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import mercantile
from distributed import Client, LocalCluster, WorkerPlugin, as_completed, get_worker
from mercantile import Tile

from iou_maps.compute.engine import MetricEngine, as_layer
from iou_maps.compute.metric_store import connect
from iou_maps.compute.plan import FillPlan, FillSummary, Progress, precompute_steps
from iou_maps.compute.precompute import fill
from iou_maps.compute.truth import segmentation_id
from iou_maps.config import Settings
from iou_maps.errors import CacheUnavailable, ModelNotFound, NoLabels
from iou_maps.layers.base import REGRESSOR, SEGMENTATION, Layer
from iou_maps.layers.registry import Source, get_layer
from iou_maps.layers.sources import LayerStores
from iou_maps.models.classes import class_set_of_metadata
from iou_maps.models.registry import regressor_metadata, truth_segmentation_dir
from iou_maps.storms.catalog import Catalog
from iou_maps.storms.grid import ancestor
from iou_maps.storms.mosaic import storm_zoom_range

#: Tiles of a block: those under one tile this many zooms above the analysis zoom (4^levels).
BLOCK_LEVELS = 3


class EngineOnWorker(WorkerPlugin):
    """The metric engine of ``settings`` on a Dask worker, set up as an inference process
    (oneDNN on, one core per worker thread) before TensorFlow is imported there."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = plugin_name(settings)
        self.engine: MetricEngine | None = None

    def setup(self, worker: Any) -> None:
        """Load the model (once per worker process)."""
        from iou_maps.compute.engine import open_engine
        from iou_maps.models import runtime

        runtime.inference_process(max(1, int(worker.state.nthreads)))
        self.engine = open_engine(self.settings, budget=0)

    def teardown(self, worker: Any) -> None:
        """Store what was handed to the writer, close the scene files."""
        if self.engine is not None:
            self.engine.close()


def plugin_name(settings: Settings) -> str:
    """One plugin per data directory and model (several may share a cluster)."""
    return f"iou-maps-engine:{settings.data_dir}:{settings.model}"


def prepare_workers(client: Client, settings: Settings) -> str:
    """Load the model on every worker (and on those that join later), unless already done;
    the plugin's name, by which tasks find the engine."""
    plugin = EngineOnWorker(settings)

    def registered(dask_scheduler: Any, name: str = plugin.name) -> bool:
        return name in dask_scheduler.worker_plugins

    if not client.run_on_scheduler(registered):
        client.register_plugin(plugin, name=plugin.name)
    return plugin.name


def fill_block(
    plugin: str,
    storm_name: str,
    tiles: list[Tile],
    batch_size: int,
    read_threads: int,
    source: str = Source.predicted.value,
) -> FillSummary:
    """A Dask task: compute and store the values of layer ``source`` of ``tiles`` with the
    worker's engine (its regressor, or its segmentation model for true values)."""
    engine_plugin = get_worker().plugins[plugin]
    assert isinstance(engine_plugin, EngineOnWorker) and engine_plugin.engine is not None
    engine = engine_plugin.engine
    layer = get_layer(source)
    store = engine.sources.channel(layer).store
    if store is None:
        raise CacheUnavailable("the worker has no Redis to store values in")
    counts = fill(
        engine.local_computer(layer), engine.storm(storm_name).backend, tiles,
        lambda entries: store.set_many(storm_name, entries),
        batch_size=batch_size, workers=read_threads,
    )  # fmt: skip
    store.count(counts.model_calls, counts.computed)
    return counts


def blocks_of(tiles: Sequence[Tile], levels: int = BLOCK_LEVELS) -> dict[Tile, list[Tile]]:
    """Tiles grouped by their ancestor ``levels`` zooms up, in the tiles' order."""
    blocks: dict[Tile, list[Tile]] = {}
    for t in tiles:
        blocks.setdefault(ancestor(t, max(0, t.z - levels)), []).append(t)
    return blocks


@contextmanager
def dask_client(scheduler: str | None, processes: int | None) -> Iterator[Client]:
    """A client of the cluster at ``scheduler``, or of a ``LocalCluster`` of ``processes``
    single-threaded worker processes on this machine (closed afterwards)."""
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=processes or 1, threads_per_worker=1, processes=True,
            dashboard_address=None, silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        yield client


def precompute_on_cluster(
    client: Client,
    settings: Settings,
    storm_name: str,
    *,
    source: Source | Layer = Source.predicted,
    bbox: Sequence[float] | None = None,
    refresh: bool = False,
    block_levels: int = BLOCK_LEVELS,
    batch_size: int = 64,
    read_threads: int = 2,
    min_zoom: int | None = None,
    progress: Progress | None = None,
) -> FillSummary:
    """``precompute`` on the cluster of ``client``: the same values in the same Redis.

    The workers must see the data directory at the same path and reach the same Redis
    (``settings.redis_url``; the embedded Redis only serves workers on this machine).
    """
    layer = as_layer(source)
    steps = precompute_steps(layer)
    storm = Catalog(settings.data_dir).storm(storm_name)
    if layer.needs_labels and not storm.has_labels:
        raise NoLabels(
            f"storm {storm_name!r} has no label rasters: {layer.name} metrics need labels"
        )
    classes = class_set_of_metadata(regressor_metadata(settings.data_dir, settings.model))
    stores = LayerStores(
        connect(settings.redis_url, settings.data_dir), model_ids(settings), classes
    )
    for step in steps:
        if not step.layer.has_models(stores.ids):
            raise ModelNotFound(f"{step.layer.name} metrics are unavailable: no model for them")
    first = stores.store(layer)
    if first is None or not first.ping():
        raise CacheUnavailable("Redis is not reachable: precompute has nowhere to store values")
    zoom = int(regressor_metadata(settings.data_dir, settings.model)["analysis_zoom"])
    lowest = storm_zoom_range(storm)[0] if min_zoom is None else min_zoom
    plan = FillPlan(stores, storm, zoom, lowest, steps, bbox=bbox, refresh=refresh)
    runner = ClusterRunner(client, settings, block_levels, batch_size, read_threads)
    return plan.run(runner, progress)


def model_ids(settings: Settings) -> dict[str, str]:
    """The ids of the models of ``settings`` by role, read from their files (this process
    never loads a model): the regressor's, and the segmentation model's where it is there."""
    meta = regressor_metadata(settings.data_dir, settings.model, settings.precision)
    ids = {REGRESSOR: str(meta["model_id"])}
    try:
        ids[SEGMENTATION] = segmentation_id(
            truth_segmentation_dir(settings.data_dir, settings.model)
        )
    except ModelNotFound:
        pass
    return ids


class ClusterRunner:
    """Runs a plan's compute steps as ``fill_block`` tasks, one per block of tiles."""

    def __init__(
        self, client: Client, settings: Settings, block_levels: int, batch_size: int,
        read_threads: int,
    ) -> None:  # fmt: skip
        self.client, self.settings, self.block_levels = client, settings, block_levels
        self.batch_size, self.read_threads = batch_size, read_threads

    def compute(
        self, layer: Layer, storm_name: str, tiles: list[Tile], advance: Callable[[int], None]
    ) -> FillSummary:
        """Compute and store ``layer``'s values of ``tiles`` (a failed block counts its tiles
        as failed, the run goes on)."""
        summary = FillSummary()
        if not tiles:
            return summary
        plugin = prepare_workers(self.client, self.settings)
        futures = {
            self.client.submit(
                fill_block, plugin, storm_name, block_tiles, self.batch_size, self.read_threads,
                layer.name,
                key=f"precompute-{storm_name}-{layer.name}-{b.z}-{b.x}-{b.y}-{time.time_ns()}",
                pure=False,
            ): block_tiles
            for b, block_tiles in blocks_of(tiles, self.block_levels).items()
        }  # fmt: skip
        for future in as_completed(futures):
            block_tiles = futures[future]
            try:
                summary.add(future.result())
            except Exception as exc:  # the block's tiles failed, not the run
                summary.fail(len(block_tiles), _block_failure(block_tiles, exc))
            advance(len(block_tiles))
        return summary


def _block_failure(tiles: list[Tile], exc: BaseException) -> str:
    first = tiles[0]
    where = mercantile.parent(first, zoom=max(0, first.z - BLOCK_LEVELS))
    return f"block {where.z}/{where.x}/{where.y} ({len(tiles)} tiles): {type(exc).__name__}: {exc}"
