"""Metric vectors of analysis tiles: cache → read imagery → infer → store.

The one path by which the service, the point lookup and precompute get numbers:

1. tiles outside the storm's coverage are "no imagery" without any read;
2. the cache is read in bulk (one Redis round trip);
3. misses are computed once even under concurrent requests (in-process single flight): imagery
   windows are read with rio-tiler in a thread pool, the regressor runs once on the batch, and
   the values are written back;
4. when Redis is unavailable the values are still computed and returned, uncached.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import mercantile
import numpy as np
import redis
import shapely
from mercantile import Tile

from iou_maps.catalog import Catalog, Storm
from iou_maps.classes import NMETRICS
from iou_maps.config import Settings
from iou_maps.grid import analysis_tiles_for, descendants, tile_polygons
from iou_maps.metric_store import NO_IMAGERY, Entry, MetricStore
from iou_maps.mosaic import (
    OffGrid,
    OpenScenes,
    SceneReadError,
    StormBackend,
    pixel_interleaved,
    read_grid_tiles,
    read_tile,
)

log = logging.getLogger(__name__)

#: An analysis tile with less valid imagery than this is treated as "no imagery".
MIN_VALID_FRACTION = 0.02
#: A metric tile at zoom z is drawn as a grid of cells at zoom min(za, z + GRID_LEVELS).
GRID_LEVELS = 4
#: Most analysis tiles read from the cache to aggregate a far-out cell on the fly.
MAX_ON_THE_FLY = 4096


class Predictor(Protocol):
    """What the engine needs of a metric regressor."""

    model_id: str

    def predict(self, chips: np.ndarray) -> np.ndarray:
        """(N, 256, 256, 3) uint8 → (N, 6) float32."""
        ...


class ImageryReadError(RuntimeError):
    """A scene needed for a tile could not be read (e.g. a corrupt file)."""


class OutsideStorm(LookupError):
    """A coordinate outside every scene of a storm."""


@dataclass
class Values:
    """Entries for a set of tiles, with where they came from."""

    entries: dict[Tile, Entry] = field(default_factory=dict)
    cached: int = 0
    computed: int = 0
    missing: list[Tile] = field(default_factory=list)  # over the budget: not computed
    cache_ok: bool = True


@dataclass
class TileGrid:
    """Values of a metric tile as a grid of cells (n × n × 6), NaN where nothing is known."""

    tile: Tile
    level: int
    values: np.ndarray  # (n, n, 6) float32
    has_imagery: np.ndarray  # (n, n) bool
    missing: int
    cached: int
    computed: int
    cache_ok: bool


class MetricEngine:
    """Computes and caches metric vectors for the storms of a catalog with one regressor."""

    def __init__(
        self,
        catalog: Catalog,
        predictor: Predictor,
        client: redis.Redis | None,
        analysis_zoom: int,
        budget: int = 64,
        read_threads: int = 4,
        max_batch: int = 64,
    ) -> None:
        self.catalog = catalog
        self.predictor = predictor
        self.store = MetricStore(client, predictor.model_id) if client is not None else None
        self.analysis_zoom = analysis_zoom
        self.budget = budget
        self.max_batch = max_batch
        self.model_calls = 0
        self.tiles_computed = 0
        self._pool = ThreadPoolExecutor(read_threads, thread_name_prefix="imagery")
        # Computed values are stored after the answer is on its way (see _compute_single_flight).
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="cache-writer")
        self._read_threads = read_threads
        self._inflight: dict[tuple[str, Tile], Future[Entry]] = {}
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._geom_lock = threading.Lock()
        self._storms: dict[str, tuple[str, float, Storm, StormBackend]] = {}
        #: Open scene files shared by every read of this engine (and the service's imagery).
        self.scenes = OpenScenes()
        self.cache_ok = True
        # How many stores this engine has made: a request that saw the same number before its
        # cache read can skip reading again once it holds the single-flight slots.
        self._store_count = itertools.count(1)
        self._stores = 0

    @property
    def model_id(self) -> str:
        return self.predictor.model_id

    def close(self) -> None:
        self._writer.shutdown(wait=True)  # values already computed still reach Redis
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.scenes.close()

    # ------------------------------------------------------------------ storms

    def storm(self, name: str) -> tuple[Storm, StormBackend]:
        """The storm and its mosaic backend, reloaded when its catalog file changes."""
        # A request asks several times: a known storm costs one stat of its footprints file.
        cached = self._storms.get(name)
        if cached is not None:
            try:
                if os.stat(cached[0]).st_mtime == cached[1]:
                    return cached[2], cached[3]
            except OSError:
                pass  # removed: the catalog says what is wrong
        storm = self.catalog.storm(name)  # validates the name before any disk access
        path = str(storm.footprints_path)
        cached = (path, os.stat(path).st_mtime, storm, StormBackend(storm, scenes=self.scenes))
        self._storms[name] = cached
        return cached[2], cached[3]

    def covered(self, storm: Storm, tiles: Sequence[Tile]) -> np.ndarray:
        """Which tiles meet the storm's coverage (exact polygon test, vectorised)."""
        if not tiles:
            return np.zeros(0, bool)
        boxes = tile_polygons(list(tiles))
        cov = storm.coverage
        # GEOS prepared geometries build their indexes lazily and are not thread-safe:
        # concurrent requests sharing a storm's coverage crashed the server without this.
        with self._geom_lock:
            shapely.prepare(cov)
            return shapely.intersects(cov, boxes) & ~shapely.touches(cov, boxes)

    # ------------------------------------------------------------------ cache access

    def _cache_get(self, storm: str, tiles: Sequence[Tile]) -> dict[Tile, Entry]:
        if self.store is None or not tiles:
            return {}
        try:
            got = self.store.get_many(storm, tiles)
            self.cache_ok = True
            return got
        except (redis.RedisError, OSError) as exc:
            self._cache_down(exc)
            return {}

    def _cache_set(self, storm: str, entries: dict[Tile, Entry]) -> bool:
        if self.store is None or not entries:
            return self.store is not None
        try:
            self.store.set_many(storm, entries)
            self.cache_ok = True
            self._stores = next(self._store_count)
            return True
        except (redis.RedisError, OSError) as exc:
            self._cache_down(exc)
            return False

    def _cache_down(self, exc: Exception) -> None:
        if self.cache_ok:
            log.warning("Redis unavailable, serving uncached: %s", exc)
        self.cache_ok = False

    # ------------------------------------------------------------------ computing

    def read_chip(self, backend: StormBackend, tile: Tile) -> np.ndarray | None:
        """The 256×256 RGB chip of an analysis tile (zeros outside the imagery), or None.

        Read as the bulk path reads (a third of rio-tiler's per-read cost for a tile on its
        scenes' pixel grid, the same pixels); off the grid, with rio-tiler."""
        return self._grid_chip(backend, tile, read_grid_tiles(backend, [tile])[0])

    def _grid_chip(
        self,
        backend: StormBackend,
        tile: Tile,
        got: np.ma.MaskedArray | None | OffGrid | SceneReadError,
    ) -> np.ndarray | None:
        """The chip of a ``read_grid_tiles`` result (ImageryReadError for a broken scene)."""
        if isinstance(got, OffGrid):
            return self._read_tile_chip(backend, tile)
        if isinstance(got, SceneReadError):
            raise self._read_error(backend, tile, got)
        if got is None:
            return None
        if not np.ma.is_masked(got):  # every band of every pixel: the usual case
            return pixel_interleaved(got.data)
        return _chip(got.data, _valid(got))

    def _read_tile_chip(self, backend: StormBackend, tile: Tile) -> np.ndarray | None:
        """The chip of ``tile`` read with rio-tiler's mosaic (any tile, on the grid or not)."""
        try:
            img = read_tile(backend, tile.x, tile.y, tile.z)
        except Exception as exc:  # rasterio/rio-tiler raise many types for a bad file
            raise self._read_error(backend, tile, exc) from exc
        if img is None:
            return None
        return _chip(img.data, np.asarray(img.mask).astype(bool))

    def _chip_or_error(
        self, backend: StormBackend, tile: Tile, got: Any
    ) -> np.ndarray | None | ImageryReadError:
        try:
            return self._grid_chip(backend, tile, got)
        except ImageryReadError as exc:
            return exc

    @staticmethod
    def _read_error(backend: StormBackend, tile: Tile, exc: Exception) -> ImageryReadError:
        reason = str(exc) if isinstance(exc, SceneReadError) else f"{type(exc).__name__}: {exc}"
        err = ImageryReadError(
            f"cannot read imagery for tile {tile.z}/{tile.x}/{tile.y} of storm "
            f"{backend.input.name!r}: {reason}"
        )
        err.__cause__ = exc
        return err

    def read_chips(
        self, backend: StormBackend, tiles: Sequence[Tile]
    ) -> list[np.ndarray | None | ImageryReadError]:
        """Chips of many tiles read in the thread pool; a failed read is returned, not raised."""
        if len(tiles) == 1:  # a lone tile (a point, a zoomed-in tile): skip the thread hop
            return [self._chip_or_error(backend, tiles[0], read_grid_tiles(backend, tiles)[0])]
        # The bulk path, in one chunk per read thread.
        chunk = max(1, math.ceil(len(tiles) / self._read_threads))
        return [c for _, c in self.stream_chips(backend, tiles, self._pool, chunk=chunk)]

    def stream_chips(
        self,
        backend: StormBackend,
        tiles: Sequence[Tile],
        pool: Executor,
        chunk: int = 32,
        ahead: int = 4,
    ) -> Iterator[tuple[Tile, np.ndarray | None | ImageryReadError]]:
        """Chips of many tiles (exactly as ``read_chip`` gives them), in order, for bulk work.

        Chunks of tiles are read in ``pool``, ``ahead`` chunks before the consumer, with the
        bulk grid read (one stored block per tile and scene, no per-read machinery); tiles
        off the grid are read with rio-tiler. Failures come as ImageryReadError values.
        """
        tiles = list(tiles)

        def read_chunk(part: list[Tile]) -> list[np.ndarray | None | ImageryReadError]:
            got = read_grid_tiles(backend, part)
            return [self._chip_or_error(backend, t, g) for t, g in zip(part, got, strict=True)]

        parts = deque(tiles[i : i + chunk] for i in range(0, len(tiles), chunk))
        pending: deque[tuple[list[Tile], Future]] = deque()
        while parts or pending:
            while parts and len(pending) < ahead:
                part = parts.popleft()
                pending.append((part, pool.submit(read_chunk, part)))
            part, fut = pending.popleft()
            yield from zip(part, fut.result(), strict=True)

    def infer(self, chips: np.ndarray) -> np.ndarray:
        """One regressor call on a batch (serialised: TensorFlow already uses every core)."""
        with self._model_lock:
            self.model_calls += 1
            out = np.asarray(self.predictor.predict(chips), dtype=np.float32)
        self.tiles_computed += len(chips)
        return out

    def compute(
        self, storm: str, tiles: Sequence[Tile], backend: StormBackend | None = None
    ) -> tuple[dict[Tile, Entry], dict[Tile, ImageryReadError]]:
        """Read and infer ``tiles`` (no cache read or write); failures are returned."""
        if backend is None:
            backend = self.storm(storm)[1]
        chips = self.read_chips(backend, tiles)
        entries: dict[Tile, Entry] = {}
        failed: dict[Tile, ImageryReadError] = {}
        todo: list[tuple[Tile, np.ndarray]] = []
        for t, chip in zip(tiles, chips, strict=True):
            if isinstance(chip, ImageryReadError):
                failed[t] = chip
            elif chip is None:
                entries[t] = NO_IMAGERY
            else:
                todo.append((t, chip))
        for start in range(0, len(todo), self.max_batch):
            part = todo[start : start + self.max_batch]
            values = self.infer(np.stack([c for _, c in part]))
            for (t, _), v in zip(part, values, strict=True):
                entries[t] = Entry(v, 1)
        return entries, failed

    def _compute_single_flight(
        self,
        storm: str,
        tiles: Sequence[Tile],
        stores_seen: int | None = None,
        backend: StormBackend | None = None,
    ) -> tuple[dict[Tile, Entry], int]:
        """Entries of ``tiles`` computed once across concurrent requests, and how many of
        them were ready-made (stored or computed by another request before this one asked)."""
        mine: list[Tile] = []
        theirs: dict[Tile, Future[Entry]] = {}
        ready = 0
        with self._lock:
            for t in tiles:
                fut = self._inflight.get((storm, t))
                if fut is None:
                    self._inflight[(storm, t)] = Future()
                    mine.append(t)
                else:
                    theirs[t] = fut
                    ready += fut.done()  # computed, its value on its way to Redis
        result: dict[Tile, Entry] = {}
        handed_off = False
        try:
            # Another request may have stored these between our cache read and now (only
            # possible if this engine stored anything since: values stored by other processes
            # are at worst computed again).
            if stores_seen is None or self._stores != stores_seen:
                result.update(self._cache_get(storm, mine))
                ready += len(result)
            todo = [t for t in mine if t not in result]
            computed, failed = self.compute(storm, todo, backend) if todo else ({}, {})
            result.update(computed)
            if failed:
                self._cache_set(storm, computed)  # what could be computed is kept
                raise next(iter(failed.values()))
            for t in mine:
                self._inflight[(storm, t)].set_result(result[t])
            if computed and self.store is not None and self.cache_ok:
                # Answer now, store in the writer thread: the slots stay taken, their futures
                # done, until the values are in Redis, so no request computes them again.
                self._writer.submit(self._store_and_release, storm, computed, mine)
                handed_off = True
            else:  # Redis known to be down: one quick failure here, nothing held back
                self._cache_set(storm, computed)
        except BaseException as exc:
            for t in mine:
                fut = self._inflight[(storm, t)]
                if not fut.done():
                    fut.set_exception(exc)
            raise
        finally:
            if not handed_off:
                self._release(storm, mine)
        for t, fut in theirs.items():
            result[t] = fut.result()
        return result, ready

    def _store_and_release(self, storm: str, entries: dict[Tile, Entry], tiles: list[Tile]) -> None:
        try:
            self._cache_set(storm, entries)
        finally:
            self._release(storm, tiles)

    def _release(self, storm: str, tiles: Sequence[Tile]) -> None:
        with self._lock:
            for t in tiles:
                self._inflight.pop((storm, t), None)

    def flush(self) -> None:
        """Wait until every computed value handed to the writer is stored (or has failed)."""
        self._writer.submit(lambda: None).result()

    # ------------------------------------------------------------------ queries

    def analysis_values(
        self, storm: str, tiles: Sequence[Tile], budget: int | None = None
    ) -> Values:
        """Entries of analysis tiles: cached, else computed within ``budget`` tiles."""
        st, backend = self.storm(storm)
        budget = self.budget if budget is None else budget
        out = Values()
        inside = self.covered(st, tiles)
        candidates = [t for t, ok in zip(tiles, inside, strict=True) if ok]
        for t, ok in zip(tiles, inside, strict=True):
            if not ok:
                out.entries[t] = NO_IMAGERY
        stores_seen = self._stores
        cached = self._cache_get(storm, candidates)
        out.entries.update(cached)
        out.cached = len(cached)
        misses = [t for t in candidates if t not in cached]
        to_compute, out.missing = misses[:budget], misses[budget:]
        if to_compute:
            computed, ready = self._compute_single_flight(storm, to_compute, stores_seen, backend)
            out.entries.update(computed)
            out.cached += ready
            out.computed = len(computed) - ready
        out.cache_ok = self.store is not None and self.cache_ok
        return out

    def tile_grid(self, storm: str, tile: Tile, budget: int | None = None) -> TileGrid:
        """The cells of metric tile ``tile``: analysis tiles, or aggregates at far-out zooms."""
        za = self.analysis_zoom
        level = min(za, tile.z + GRID_LEVELS)
        if level == za:
            cells = analysis_tiles_for(tile, za)
            vals = self.analysis_values(storm, cells, budget)
            entries, missing = vals.entries, len(vals.missing)
            cached, computed, cache_ok = vals.cached, vals.computed, vals.cache_ok
        else:
            cells = descendants(tile, level)
            entries, missing = self._aggregates(storm, cells)
            cached, computed, cache_ok = len(entries), 0, self.store is not None and self.cache_ok
        n = int(math.isqrt(len(cells)))
        values = np.full((n, n, NMETRICS), np.nan, np.float32)
        has = np.zeros((n, n), bool)
        x0, y0 = cells[0].x, cells[0].y
        for t in cells:
            e = entries.get(t)
            if e is not None and e.values is not None:
                values[t.y - y0, t.x - x0] = e.values
                has[t.y - y0, t.x - x0] = True
        return TileGrid(tile, level, values, has, missing, cached, computed, cache_ok)

    def _aggregates(self, storm: str, cells: list[Tile]) -> tuple[dict[Tile, Entry], int]:
        """Pre-aggregated cells (written by precompute); the rest from cached analysis tiles."""
        st, _ = self.storm(storm)
        inside = self.covered(st, cells)
        wanted = [c for c, ok in zip(cells, inside, strict=True) if ok]
        entries = self._cache_get(storm, wanted)
        absent = [c for c in wanted if c not in entries]
        per_cell = 4 ** (self.analysis_zoom - cells[0].z)
        missing = 0
        if absent and len(absent) * per_cell <= MAX_ON_THE_FLY:
            kids = {c: descendants(c, self.analysis_zoom) for c in absent}
            # Children outside the coverage are never stored: they have no imagery, not "missing".
            every = [k for ks in kids.values() for k in ks]
            inside_kids = {k for k, ok in zip(every, self.covered(st, every), strict=True) if ok}
            kids = {c: [k for k in ks if k in inside_kids] for c, ks in kids.items()}
            cached = self._cache_get(storm, [k for ks in kids.values() for k in ks])
            for c, ks in kids.items():
                vals = [cached[k].values for k in ks if k in cached and cached[k].has_imagery]
                if vals:
                    with np.errstate(invalid="ignore"):
                        mean = np.nanmean(np.stack(vals), axis=0)
                    entries[c] = Entry(mean.astype(np.float32), len(vals))
                if any(k not in cached for k in ks):
                    missing += 1  # partly known at best
        else:
            missing = len(absent)
        return entries, missing

    def point(self, storm: str, lon: float, lat: float) -> tuple[Tile, Entry, bool]:
        """(analysis tile, entry, came from cache) at a coordinate; OutsideStorm outside it."""
        st, _ = self.storm(storm)
        with self._geom_lock:
            inside = bool(shapely.intersects(st.coverage, shapely.Point(lon, lat)))
        if not inside:
            raise OutsideStorm(f"({lon}, {lat}) is outside every scene of storm {storm!r}")
        tile = mercantile.tile(lon, lat, self.analysis_zoom)
        vals = self.analysis_values(storm, [tile], budget=1)
        entry = vals.entries.get(tile, NO_IMAGERY)
        if not entry.has_imagery:
            raise OutsideStorm(f"no imagery of storm {storm!r} at ({lon}, {lat})")
        return tile, entry, vals.cached == 1


def _valid(array: np.ma.MaskedArray) -> np.ndarray:
    """Pixels with data in any band (rio-tiler's ImageData.mask)."""
    return np.logical_or.reduce(~np.ma.getmaskarray(array))


def _chip(data: np.ndarray, valid: np.ndarray) -> np.ndarray | None:
    """(H, W, 3) uint8 chip with zeros where there is no imagery; None if almost empty."""
    if valid.mean() < MIN_VALID_FRACTION:
        return None
    chip = pixel_interleaved(data)
    if not valid.all():
        chip *= valid[..., None]  # zeros where no band has data
    return chip


def open_engine(settings: Settings, *, budget: int | None = None) -> MetricEngine:
    """The engine for ``settings``: its catalog, its model's regressor, its Redis."""
    from iou_maps.metric_store import connect
    from iou_maps.models import load_regressor_model

    regressor = load_regressor_model(settings.data_dir, settings.model)
    client = connect(settings.redis_url, settings.data_dir)
    return MetricEngine(
        Catalog(settings.data_dir),
        regressor,
        client,
        regressor.analysis_zoom,
        settings.compute_budget if budget is None else budget,
    )
