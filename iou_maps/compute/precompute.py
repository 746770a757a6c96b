"""Fill the metric cache for a whole storm: every analysis tile, then the aggregated levels.

In this process (the default, the fastest on one small machine): imagery reads run ahead of
inference in a thread pool, the regressor runs on full batches and each batch's Redis write
goes to a writer thread. On a Dask cluster (``iou_maps.compute.cluster``) every worker runs the same
pipeline (``fill``) on blocks of tiles. Every value is written atomically (one hash field), so
a killed run leaves only whole values behind; a re-run skips what is cached for this model id
and finishes the job. ``refresh=True`` recomputes everything.

``source=true`` fills the true metrics instead (``iou_maps.compute.truth``: the segmentation model
on
the labelled tiles), then the error layer: the predicted values of the tiles that have a true
value (where they are not cached yet) and the mean absolute errors of the lower zooms.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import shapely
from mercantile import Tile

from iou_maps.compute.engine import MetricEngine
from iou_maps.compute.metric_store import NO_IMAGERY, Entry, MetricStore
from iou_maps.errors import CacheUnavailable
from iou_maps.layers.sources import Sources, abs_errors
from iou_maps.models.classes import Source
from iou_maps.storms.catalog import Storm
from iou_maps.storms.chips import ChipRead
from iou_maps.storms.grid import tiles_intersecting
from iou_maps.storms.mosaic import StormBackend, storm_zoom_range

#: How much lower than the process the read threads run (see _yield_to_inference).
READ_THREAD_NICENESS = 10
#: Cache reads for the skip check go in chunks of this many tiles (one round trip each).
LOOKUP_CHUNK = 4096
#: Failure messages kept in a summary (the count is always complete).
MAX_FAILURES_KEPT = 100


@dataclass
class FillCounts:
    """What filling a set of tiles did."""

    computed: int = 0
    no_imagery: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    model_calls: int = 0

    def add(self, other: FillCounts) -> None:
        """Add ``other``'s counts (a block's, to a run's)."""
        self.computed += other.computed
        self.no_imagery += other.no_imagery
        self.failed += other.failed
        self.failures.extend(other.failures[: MAX_FAILURES_KEPT - len(self.failures)])
        self.model_calls += other.model_calls


@dataclass
class PrecomputeSummary(FillCounts):
    """What a precompute run did (the counts of every tile of the storm, and the time)."""

    storm: str = ""
    model_id: str = ""
    source: str = Source.predicted.value
    total: int = 0
    already_cached: int = 0
    aggregated: int = 0
    #: ``source=true``: predicted values computed for the error layer, its aggregates written.
    error_predictions: int = 0
    error_aggregated: int = 0
    seconds: float = 0.0

    @property
    def tiles_per_second(self) -> float:
        """Tiles computed per second of the whole run (aggregates included)."""
        return self.computed / self.seconds if self.seconds > 0 else 0.0


Progress = Callable[[int, int], None]  # (tiles done now, total) after each batch


def tiles_of(
    storm: Storm,
    zoom: int,
    bbox: Sequence[float] | None = None,
    source: Source = Source.predicted,
) -> list[Tile]:
    """Analysis tiles at ``zoom`` under the storm's footprints (for true values: under its
    labelled scenes), and inside ``bbox`` W,S,E,N if given."""
    area = Sources.area(storm, source)
    if bbox is not None:
        w, s, e, n = bbox
        if not (w < e and s < n):
            raise ValueError(f"bbox {bbox} must be W,S,E,N with W < E and S < N")
        area = shapely.intersection(area, shapely.box(w, s, e, n))
    return tiles_intersecting(area, zoom)


def storm_tiles(
    engine: MetricEngine, storm_name: str, bbox: Sequence[float] | None = None
) -> list[Tile]:
    """Analysis tiles under the storm's footprints (and inside ``bbox`` W,S,E,N if given)."""
    return tiles_of(engine.storm(storm_name).storm, engine.analysis_zoom, bbox)


def uncached(store: MetricStore, storm_name: str, tiles: Sequence[Tile]) -> tuple[list[Tile], int]:
    """(tiles not cached for the store's model, how many are), in chunks of round trips."""
    todo: list[Tile] = []
    cached = 0
    for i in range(0, len(tiles), LOOKUP_CHUNK):
        chunk = tiles[i : i + LOOKUP_CHUNK]
        got = store.get_many(storm_name, chunk)
        cached += len(got)
        todo.extend(t for t in chunk if t not in got)
    return todo, cached


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
) -> FillCounts:
    """Read, infer and ``write`` the entries of ``tiles``: reads ``2 × workers`` chunks ahead
    in read threads, inference on full batches, each batch's write in a writer thread (a
    failed write surfaces at the next batch). ``advance(n)`` after each batch's ``n`` tiles."""
    counts = FillCounts()
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
                counts.failed += 1
                if len(counts.failures) < MAX_FAILURES_KEPT:
                    counts.failures.append(str(read.error))
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


def precompute(
    engine: MetricEngine,
    storm_name: str,
    *,
    source: Source = Source.predicted,
    bbox: Sequence[float] | None = None,
    batch_size: int = 64,
    workers: int = 4,
    refresh: bool = False,
    min_zoom: int | None = None,
    progress: Progress | None = None,
) -> PrecomputeSummary:
    """Compute and cache every analysis tile of ``storm`` (``source``: predicted or true
    values) in this process, then the lower-zoom aggregates (for ``true``: also the error
    layer's)."""
    if source is Source.error:
        raise ValueError("precompute fills predicted or true values (true: the error layer too)")
    if engine.store is None or not engine.store.ping():
        raise CacheUnavailable("Redis is not reachable: precompute has nowhere to store values")
    loaded = engine.check_source(storm_name, source)
    channel = engine.sources.channel(source)
    store = channel.store
    assert store is not None
    start = time.perf_counter()
    tiles = tiles_of(loaded.storm, engine.analysis_zoom, bbox, source)
    summary = PrecomputeSummary(
        storm=storm_name, model_id=channel.computer.model_id, source=source.value, total=len(tiles)
    )
    todo, summary.already_cached = (
        (list(tiles), 0) if refresh else uncached(store, storm_name, tiles)
    )
    done = [summary.already_cached]
    total = [len(tiles)]
    if progress:
        progress(done[0], total[0])

    def advance(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], total[0])

    counts = fill(
        engine.local_computer(source), loaded.backend, todo,
        lambda entries: store.set_many(storm_name, entries),
        batch_size=batch_size, workers=workers, advance=advance,
    )  # fmt: skip
    summary.add(counts)
    store.count(counts.model_calls, counts.computed)
    lowest = storm_zoom_range(loaded.storm)[0] if min_zoom is None else min_zoom
    summary.aggregated = aggregate_levels(store, storm_name, tiles, engine.analysis_zoom, lowest)
    if source is Source.true:
        pred_store, error_store = engine.store, engine.sources.error_store
        assert error_store is not None
        # The error layer needs a prediction wherever there is a true value.
        need, _ = uncached(pred_store, storm_name, with_values(store, storm_name, tiles))
        total[0] += len(need)
        more = fill(
            engine.local(), loaded.backend, need,
            lambda entries: pred_store.set_many(storm_name, entries),
            batch_size=batch_size, workers=workers, advance=advance,
        )  # fmt: skip
        summary.add(more)
        summary.error_predictions = more.computed
        pred_store.count(more.model_calls, more.computed)
        summary.error_aggregated = aggregate_levels(
            error_store, storm_name, tiles, engine.analysis_zoom, lowest,
            leaves=error_leaves(pred_store, store, storm_name),
        )  # fmt: skip
    if progress:
        progress(total[0], total[0])
    summary.seconds = time.perf_counter() - start
    return summary


def with_values(store: MetricStore, storm_name: str, tiles: Sequence[Tile]) -> list[Tile]:
    """The tiles that have a value (not the "no value" marker) in ``store``."""
    out: list[Tile] = []
    for i in range(0, len(tiles), LOOKUP_CHUNK):
        got = store.get_many(storm_name, tiles[i : i + LOOKUP_CHUNK])
        out.extend(t for t, e in got.items() if e.has_imagery)
    return out


def error_leaves(
    pred: MetricStore, true: MetricStore, storm_name: str
) -> Callable[[list[Tile]], dict[Tile, Entry]]:
    """Reads |predicted − true| of analysis tiles from the two stores (``abs_errors``)."""

    def read(tiles: list[Tile]) -> dict[Tile, Entry]:
        t = true.get_many(storm_name, tiles)
        return abs_errors(pred.get_many(storm_name, [k for k, e in t.items() if e.has_imagery]), t)

    return read


def aggregate_levels(
    store: MetricStore,
    storm_name: str,
    tiles: Sequence[Tile],
    analysis_zoom: int,
    lowest_zoom: int,
    leaves: Callable[[list[Tile]], dict[Tile, Entry]] | None = None,
) -> int:
    """Write, for every ancestor of ``tiles`` from ``analysis_zoom`` - 1 down to
    ``lowest_zoom``, the mean of the analysis tiles' values under it with the number of those
    that have values; ``leaves`` reads the analysis tiles' values (default: from ``store``; the
    error layer's: |predicted − true| from their stores).

    Each metric is averaged over the tiles where it is defined (a class absent from a tile
    does not pull its IoU towards 0), and over the analysis tiles themselves at every level:
    means of means would weigh a class by the tiles that have any value, not by those that
    have it. Parents whose children have no imagery get the "no imagery" marker, so every cell
    of every metric tile down to ``lowest_zoom`` is then answered from the cache.
    """
    tiles = sorted(set(tiles))
    read = leaves if leaves is not None else (lambda part: store.get_many(storm_name, part))
    entries: dict[Tile, Entry] = {}
    for i in range(0, len(tiles), LOOKUP_CHUNK):
        entries.update(read(tiles[i : i + LOOKUP_CHUNK]))
    known = [t for t in tiles if t in entries and entries[t].has_imagery]
    values = np.array([entries[t].values for t in known], np.float64).reshape(len(known), -1)
    defined = ~np.isnan(values)
    summed = np.where(defined, values, 0.0)
    every = np.array([(t.x, t.y) for t in tiles], np.int64).reshape(-1, 2)
    with_values = np.array([(t.x, t.y) for t in known], np.int64).reshape(-1, 2)
    written = 0
    for z in range(analysis_zoom - 1, lowest_zoom - 1, -1):
        shift = analysis_zoom - z
        parents = np.unique(every >> shift, axis=0)
        # Which parent each analysis tile with values falls in (parents are sorted rows).
        at = np.searchsorted(
            parents[:, 0] * (1 << z) + parents[:, 1],
            (with_values[:, 0] >> shift) * (1 << z) + (with_values[:, 1] >> shift),
        )
        sums = np.zeros((len(parents), values.shape[1]))
        counts = np.zeros((len(parents), values.shape[1]))
        tiles_with_values = np.zeros(len(parents), np.int64)
        np.add.at(sums, at, summed)
        np.add.at(counts, at, defined)
        np.add.at(tiles_with_values, at, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = (sums / counts).astype(np.float32)
        out: dict[Tile, Entry] = {
            Tile(int(px), int(py), z): (
                Entry(means[i], int(tiles_with_values[i])) if tiles_with_values[i] else NO_IMAGERY
            )
            for i, (px, py) in enumerate(parents)
        }
        keys = list(out)
        for i in range(0, len(keys), LOOKUP_CHUNK):
            store.set_many(storm_name, {p: out[p] for p in keys[i : i + LOOKUP_CHUNK]})
        written += len(parents)
    return written
