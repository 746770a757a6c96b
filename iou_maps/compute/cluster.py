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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import mercantile
from distributed import Client, LocalCluster, WorkerPlugin, as_completed, get_worker
from mercantile import Tile

from iou_maps.compute.engine import MetricEngine
from iou_maps.compute.metric_store import MetricStore, connect
from iou_maps.compute.precompute import (
    FillCounts,
    PrecomputeSummary,
    Progress,
    aggregate_levels,
    error_leaves,
    fill,
    tiles_of,
    uncached,
    with_values,
)
from iou_maps.compute.truth import ERROR_NAMESPACE, TRUE_NAMESPACE, SegmentationSource, error_id
from iou_maps.config import Settings
from iou_maps.errors import CacheUnavailable, NoLabels
from iou_maps.models.classes import Source
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
    source: Source = Source.predicted,
) -> FillCounts:
    """A Dask task: compute and store the ``source`` entries of ``tiles`` with the worker's
    engine (its regressor, or its segmentation model for true values)."""
    engine_plugin = get_worker().plugins[plugin]
    assert isinstance(engine_plugin, EngineOnWorker) and engine_plugin.engine is not None
    engine = engine_plugin.engine
    store = engine.sources.channel(source).store
    if store is None:
        raise CacheUnavailable("the worker has no Redis to store values in")
    counts = fill(
        engine.local_computer(source), engine.storm(storm_name).backend, tiles,
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
    source: Source = Source.predicted,
    bbox: Sequence[float] | None = None,
    refresh: bool = False,
    block_levels: int = BLOCK_LEVELS,
    batch_size: int = 64,
    read_threads: int = 2,
    min_zoom: int | None = None,
    progress: Progress | None = None,
) -> PrecomputeSummary:
    """``precompute`` on the cluster of ``client``: the same values in the same Redis.

    The workers must see the data directory at the same path and reach the same Redis
    (``settings.redis_url``; the embedded Redis only serves workers on this machine).
    """
    if source is Source.error:
        raise ValueError("precompute fills predicted or true values (true: the error layer too)")
    start = time.perf_counter()
    meta = regressor_metadata(settings.data_dir, settings.model)
    model_id, zoom = str(meta["model_id"]), int(meta["analysis_zoom"])
    redis_client = connect(settings.redis_url, settings.data_dir)
    pred_store = MetricStore(redis_client, model_id)
    if not pred_store.ping():
        raise CacheUnavailable("Redis is not reachable: precompute has nowhere to store values")
    st = Catalog(settings.data_dir).storm(storm_name)
    store = pred_store
    if source is Source.true:
        if not st.has_labels:
            raise NoLabels(f"storm {storm_name!r} has no label rasters: true metrics need labels")
        segmentation = SegmentationSource(truth_segmentation_dir(settings.data_dir, settings.model))
        store = MetricStore(redis_client, segmentation.model_id, TRUE_NAMESPACE)
    tiles = tiles_of(st, zoom, bbox, source)
    summary = PrecomputeSummary(
        storm=storm_name, model_id=store.model_id, source=source.value, total=len(tiles)
    )
    todo, summary.already_cached = (
        (list(tiles), 0) if refresh else uncached(store, storm_name, tiles)
    )
    state = _Progress(summary.already_cached, len(tiles), progress)
    blocks = _Blocks(client, settings, storm_name, block_levels, batch_size, read_threads, state)
    blocks.run(todo, source, summary)
    lowest = storm_zoom_range(st)[0] if min_zoom is None else min_zoom
    summary.aggregated = aggregate_levels(store, storm_name, tiles, zoom, lowest)
    if source is Source.true:
        # The error layer needs a prediction wherever there is a true value.
        need, _ = uncached(pred_store, storm_name, with_values(store, storm_name, tiles))
        state.total += len(need)
        more = PrecomputeSummary()
        blocks.run(need, Source.predicted, more)
        summary.add(more)
        summary.error_predictions = more.computed
        error_store = MetricStore(redis_client, error_id(model_id, store.model_id), ERROR_NAMESPACE)
        summary.error_aggregated = aggregate_levels(
            error_store,
            storm_name,
            tiles,
            zoom,
            lowest,
            leaves=error_leaves(pred_store, store, storm_name),
        )
    state.finish()
    summary.seconds = time.perf_counter() - start
    return summary


class _Progress:
    """Tiles done of a total that may grow, reported to a ``Progress`` callback."""

    def __init__(self, done: int, total: int, callback: Progress | None) -> None:
        self.done, self.total, self.callback = done, total, callback
        self.report()

    def report(self) -> None:
        if self.callback:
            self.callback(self.done, self.total)

    def advance(self, n: int) -> None:
        self.done += n
        self.report()

    def finish(self) -> None:
        self.done = self.total
        self.report()


class _Blocks:
    """Runs ``fill_block`` tasks on the cluster, one per block of tiles."""

    def __init__(
        self, client: Client, settings: Settings, storm_name: str, block_levels: int,
        batch_size: int, read_threads: int, progress: _Progress,
    ) -> None:  # fmt: skip
        self.client, self.settings, self.storm = client, settings, storm_name
        self.block_levels, self.batch_size, self.read_threads = (
            block_levels,
            batch_size,
            read_threads,
        )
        self.progress = progress

    def run(self, todo: list[Tile], source: Source, summary: FillCounts) -> None:
        """Compute and store the ``source`` values of ``todo``, adding the counts to
        ``summary`` (a failed block counts its tiles as failed, the run goes on)."""
        if not todo:
            return
        plugin = prepare_workers(self.client, self.settings)
        futures = {
            self.client.submit(
                fill_block, plugin, self.storm, block_tiles, self.batch_size, self.read_threads,
                source,
                key=f"precompute-{self.storm}-{source.value}-{b.z}-{b.x}-{b.y}-{time.time_ns()}",
                pure=False,
            ): block_tiles
            for b, block_tiles in blocks_of(todo, self.block_levels).items()
        }  # fmt: skip
        for future in as_completed(futures):
            block_tiles = futures[future]
            try:
                summary.add(future.result())
            except Exception as exc:  # the block's tiles failed, not the run
                summary.add(FillCounts(failed=len(block_tiles), failures=[_block_failure(
                    block_tiles, exc)]))  # fmt: skip
            self.progress.advance(len(block_tiles))


def _block_failure(tiles: list[Tile], exc: BaseException) -> str:
    first = tiles[0]
    where = mercantile.parent(first, zoom=max(0, first.z - BLOCK_LEVELS))
    return f"block {where.z}/{where.x}/{where.y} ({len(tiles)} tiles): {type(exc).__name__}: {exc}"
