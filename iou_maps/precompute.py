"""Fill the metric cache for a whole storm: every analysis tile, then the aggregated levels.

Imagery reads run ahead of inference in a thread pool, the regressor runs on full batches and
Redis writes are pipelined per batch. Every value is written atomically (one hash field), so a
killed run leaves only whole values behind; a re-run skips what is cached for this model id
and finishes the job. ``refresh=True`` recomputes everything.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import mercantile
import numpy as np
import shapely
from mercantile import Tile

from iou_maps.engine import ImageryReadError, MetricEngine
from iou_maps.grid import aggregate, tiles_intersecting
from iou_maps.metric_store import NO_IMAGERY, Entry

#: How much lower than the process the read threads run (see _yield_to_inference).
READ_THREAD_NICENESS = 10
#: Cache reads for the skip check go in chunks of this many tiles (one round trip each).
LOOKUP_CHUNK = 4096


class CacheUnavailable(RuntimeError):
    """Precompute needs a reachable Redis: without it there is nothing to fill."""


@dataclass
class PrecomputeSummary:
    storm: str
    model_id: str
    total: int = 0
    computed: int = 0
    already_cached: int = 0
    no_imagery: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    aggregated: int = 0
    seconds: float = 0.0
    model_calls: int = 0

    @property
    def tiles_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


Progress = Callable[[int, int], None]  # (tiles done now, total) after each batch


def storm_tiles(
    engine: MetricEngine, storm: str, bbox: Sequence[float] | None = None
) -> list[Tile]:
    """Analysis tiles under the storm's footprints (and inside ``bbox`` W,S,E,N if given)."""
    st, _ = engine.storm(storm)
    area = st.coverage
    if bbox is not None:
        w, s, e, n = bbox
        if not (w < e and s < n):
            raise ValueError(f"bbox {bbox} must be W,S,E,N with W < E and S < N")
        area = shapely.intersection(area, shapely.box(w, s, e, n))
    return tiles_intersecting(area, engine.analysis_zoom)


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


def precompute(
    engine: MetricEngine,
    storm: str,
    *,
    bbox: Sequence[float] | None = None,
    batch_size: int = 64,
    workers: int = 4,
    refresh: bool = False,
    min_zoom: int | None = None,
    progress: Progress | None = None,
) -> PrecomputeSummary:
    """Compute and cache every analysis tile of ``storm``, then the lower-zoom aggregates."""
    if engine.store is None or not engine.store.ping():
        raise CacheUnavailable("Redis is not reachable: precompute has nowhere to store values")
    store = engine.store
    st, backend = engine.storm(storm)
    start = time.perf_counter()
    calls_before = engine.model_calls
    tiles = storm_tiles(engine, storm, bbox)
    summary = PrecomputeSummary(storm, engine.model_id, total=len(tiles))

    todo: list[Tile] = []
    if refresh:
        todo = list(tiles)
    else:
        for i in range(0, len(tiles), LOOKUP_CHUNK):
            chunk = tiles[i : i + LOOKUP_CHUNK]
            cached = store.get_many(storm, chunk)
            summary.already_cached += len(cached)
            todo.extend(t for t in chunk if t not in cached)
    done = summary.already_cached
    if progress:
        progress(done, len(tiles))

    writes: deque[Future[None]] = deque()

    def flush(batch: list[tuple[Tile, np.ndarray]], entries: dict[Tile, Entry]) -> None:
        if batch:
            values = engine.infer(np.stack([c for _, c in batch]))
            entries.update((t, Entry(v, 1)) for (t, _), v in zip(batch, values, strict=True))
            summary.computed += len(batch)
        # One pipelined round trip per batch, in the writer thread: the next batch's inference
        # does not wait for it. A failed write (Redis gone) surfaces at the next flush.
        while writes and writes[0].done():
            writes.popleft().result()
        writes.append(writer.submit(store.set_many, storm, entries))

    with (
        ThreadPoolExecutor(
            max(1, workers), thread_name_prefix="precompute-read", initializer=_yield_to_inference
        ) as pool,
        ThreadPoolExecutor(1, thread_name_prefix="precompute-write") as writer,
    ):
        batch: list[tuple[Tile, np.ndarray]] = []
        entries: dict[Tile, Entry] = {}
        pending = 0  # tiles read since the last write
        for tile, chip in engine.stream_chips(backend, todo, pool, ahead=2 * max(1, workers)):
            pending += 1
            if isinstance(chip, ImageryReadError):
                summary.failed += 1
                summary.failures.append(str(chip))
            elif chip is None:
                entries[tile] = NO_IMAGERY
                summary.no_imagery += 1
            else:
                batch.append((tile, chip))  # type: ignore[arg-type]
            if len(batch) >= batch_size or len(entries) >= batch_size:
                flush(batch, entries)
                done += pending
                batch, entries, pending = [], {}, 0
                if progress:
                    progress(done, len(tiles))
        flush(batch, entries)
        for write in writes:  # every value is stored before the summary says so
            write.result()
    if progress:
        progress(len(tiles), len(tiles))

    summary.aggregated = aggregate_levels(engine, storm, tiles, min_zoom)
    summary.seconds = time.perf_counter() - start
    summary.model_calls = engine.model_calls - calls_before
    return summary


def aggregate_levels(
    engine: MetricEngine, storm: str, tiles: Sequence[Tile], min_zoom: int | None = None
) -> int:
    """Write the mean (with its count) of each parent's cached children, level by level.

    Parents whose children have no imagery get the "no imagery" marker, so every cell of every
    metric tile down to ``min_zoom`` is then answered from the cache.
    """
    assert engine.store is not None
    store = engine.store
    _, backend = engine.storm(storm)
    lowest = backend.minzoom if min_zoom is None else min_zoom
    level_tiles = sorted(set(tiles))
    written = 0
    for z in range(engine.analysis_zoom, lowest, -1):
        parents = sorted({mercantile.parent(t) for t in level_tiles})
        children = [c for p in parents for c in mercantile.children(p)]
        entries: dict[Tile, Entry] = {}
        for i in range(0, len(children), LOOKUP_CHUNK):
            entries.update(store.get_many(storm, children[i : i + LOOKUP_CHUNK]))
        with_values = [c for c in children if c in entries and entries[c].has_imagery]
        agg = aggregate(
            with_values,
            np.array([entries[c].values for c in with_values]).reshape(len(with_values), -1),
            np.array([entries[c].count for c in with_values]),
        )
        out: dict[Tile, Entry] = {
            p: Entry(agg[p][0], agg[p][1]) if p in agg else NO_IMAGERY for p in parents
        }
        for i in range(0, len(parents), LOOKUP_CHUNK):
            part = parents[i : i + LOOKUP_CHUNK]
            store.set_many(storm, {p: out[p] for p in part})
        written += len(parents)
        level_tiles = parents
        assert all(p.z == z - 1 for p in parents)
    return written
