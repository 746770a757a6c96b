"""Fill the metric cache for a whole storm in this process: every analysis tile, then the
aggregated levels (the steps of ``iou_maps.compute.plan``, run by ``LocalRunner``).

Imagery reads run ahead of inference in a thread pool, the model runs on full batches and each
batch's Redis write goes to a writer thread. On a Dask cluster (``iou_maps.compute.cluster``)
every worker runs the same pipeline (``fill``) on blocks of tiles. Every value is written
atomically (one hash field), so a killed run leaves only whole values behind; a re-run skips
what is cached for this model id and finishes the job. ``refresh=True`` recomputes everything.

``source=true`` fills the true metrics instead, then the layers derived from them (the error
layer: the predictions of the tiles that have a true value, and its mean absolute errors).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np
from mercantile import Tile

from iou_maps.compute.engine import MetricEngine, as_layer
from iou_maps.compute.metric_store import NO_IMAGERY, Entry
from iou_maps.compute.plan import FillPlan, FillSummary, Progress, precompute_steps, tiles_of
from iou_maps.errors import CacheUnavailable
from iou_maps.layers.base import Layer
from iou_maps.layers.registry import Source
from iou_maps.storms.chips import ChipRead
from iou_maps.storms.mosaic import StormBackend, storm_zoom_range

#: How much lower than the process the read threads run (see _yield_to_inference).
READ_THREAD_NICENESS = 10


def _yield_to_inference() -> None:
    """Run this read thread at a lower priority than the rest of the process.

    TensorFlow splits each op over every core and waits for the slowest part, so a read
    thread that takes a core from it stalls the whole batch; at a lower priority the reads
    fill the cores' idle moments instead (and still run at full speed when inference waits
    for them). Linux sets priorities per thread; elsewhere this does nothing.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), READ_THREAD_NICENESS)
    except (AttributeError, OSError):
        pass


class FillComputer(Protocol):
    """What ``fill`` drives: a ``LocalComputer`` (predicted values) or a ``TruthComputer``."""

    def stream(
        self, backend: StormBackend, tiles: Sequence[Tile], pool: Executor, ahead: int
    ) -> Iterator[ChipRead]:
        """Chips of ``tiles`` in order, read in ``pool``."""
        ...

    def infer_reads(self, reads: list[ChipRead]) -> np.ndarray:
        """Metric vectors of a batch of read chips."""
        ...


def fill(
    computer: FillComputer,
    backend: StormBackend,
    tiles: Sequence[Tile],
    write: Callable[[dict[Tile, Entry]], None],
    *,
    batch_size: int = 64,
    workers: int = 4,
    advance: Callable[[int], None] | None = None,
) -> FillSummary:
    """Read, infer and ``write`` the entries of ``tiles``: reads ``2 × workers`` chunks ahead
    in read threads, inference on full batches, each batch's write in a writer thread (a
    failed write surfaces at the next batch). ``advance(n)`` after each batch's ``n`` tiles."""
    counts = FillSummary()
    writes: deque[Future[None]] = deque()

    def flush(batch: list[ChipRead], entries: dict[Tile, Entry]) -> None:
        if batch:
            values = computer.infer_reads(batch)
            counts.model_calls += 1
            entries.update((r.tile, Entry(v, 1)) for r, v in zip(batch, values, strict=True))
            counts.computed += len(batch)
        while writes and writes[0].done():
            writes.popleft().result()
        # One pipelined round trip per batch, in the writer thread: the next batch's inference
        # does not wait for it.
        writes.append(writer.submit(write, entries))

    with (
        ThreadPoolExecutor(
            max(1, workers), thread_name_prefix="precompute-read", initializer=_yield_to_inference
        ) as pool,
        ThreadPoolExecutor(1, thread_name_prefix="precompute-write") as writer,
    ):
        batch: list[ChipRead] = []
        entries: dict[Tile, Entry] = {}
        pending = 0  # tiles read since the last write
        for read in computer.stream(backend, tiles, pool, 2 * max(1, workers)):
            pending += 1
            if read.error is not None:
                counts.fail(1, str(read.error))
            elif read.chip is None:
                entries[read.tile] = NO_IMAGERY
                counts.no_imagery += 1
            else:
                batch.append(read)
            if len(batch) >= batch_size or len(entries) >= batch_size:
                flush(batch, entries)
                if advance:
                    advance(pending)
                batch, entries, pending = [], {}, 0
        flush(batch, entries)
        for done in writes:  # every value is stored before the counts say so
            done.result()
    if advance and pending:
        advance(pending)
    return counts


def storm_tiles(
    engine: MetricEngine, storm_name: str, bbox: Sequence[float] | None = None
) -> list[Tile]:
    """Analysis tiles under the storm's footprints (and inside ``bbox`` W,S,E,N if given)."""
    return tiles_of(engine.storm(storm_name).storm, engine.analysis_zoom, bbox)


class LocalRunner:
    """Runs a plan's compute steps in this process, with the engine's own models."""

    def __init__(self, engine: MetricEngine, batch_size: int = 64, workers: int = 4) -> None:
        self.engine, self.batch_size, self.workers = engine, batch_size, workers

    def compute(
        self, layer: Layer, storm_name: str, tiles: list[Tile], advance: Callable[[int], None]
    ) -> FillSummary:
        """Read, infer and store ``layer``'s values of ``tiles`` (``fill``)."""
        store = self.engine.sources.channel(layer).store
        assert store is not None  # precompute checked Redis
        counts = fill(
            self.engine.local_computer(layer), self.engine.storm(storm_name).backend, tiles,
            lambda entries: store.set_many(storm_name, entries),
            batch_size=self.batch_size, workers=self.workers, advance=advance,
        )  # fmt: skip
        store.count(counts.model_calls, counts.computed)
        return counts


def precompute(
    engine: MetricEngine,
    storm_name: str,
    *,
    source: Source | Layer = Source.predicted,
    bbox: Sequence[float] | None = None,
    batch_size: int = 64,
    workers: int = 4,
    refresh: bool = False,
    min_zoom: int | None = None,
    progress: Progress | None = None,
) -> FillSummary:
    """Compute and cache every analysis tile of ``storm`` of layer ``source`` in this
    process, then the lower-zoom aggregates (and the layers filled with it: for ``true``, the
    error layer's)."""
    layer = as_layer(source)
    steps = precompute_steps(layer)
    if engine.store is None or not engine.store.ping():
        raise CacheUnavailable("Redis is not reachable: precompute has nowhere to store values")
    loaded = engine.check_source(storm_name, layer)
    lowest = storm_zoom_range(loaded.storm)[0] if min_zoom is None else min_zoom
    plan = FillPlan(engine.sources, loaded.storm, engine.analysis_zoom, lowest, steps,
                    bbox=bbox, refresh=refresh)  # fmt: skip
    return plan.run(LocalRunner(engine, batch_size, workers), progress)
