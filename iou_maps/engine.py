"""Metric vectors of analysis tiles: cache → compute once → store.

The one path by which the service, the point lookup and precompute get numbers:

1. tiles outside the storm's coverage are "no imagery" without any read;
2. the cache is read in bulk (one Redis round trip);
3. misses (within a budget) are computed once however many requests and processes ask
   (``SingleFlight``), by a ``Computer``: in this process, or in worker processes;
4. computed values are stored behind the answer, and counted in Redis for every process;
5. when Redis is unavailable the values are still computed and returned, uncached.

Far-out zooms read the aggregated levels that precompute writes.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import mercantile
import numpy as np
import redis
import shapely
from mercantile import Tile

from iou_maps.catalog import Catalog, Storm
from iou_maps.chips import ChipReader, ImageryReadError
from iou_maps.classes import NMETRICS
from iou_maps.compute import Computer, LocalComputer, Predictor, ProcessComputer
from iou_maps.config import Settings
from iou_maps.grid import analysis_tiles_for, descendants, tile_polygons
from iou_maps.metric_store import NO_IMAGERY, Entry, GuardedStore, MetricStore
from iou_maps.mosaic import LoadedStorm, OpenScenes, OpenStorms
from iou_maps.single_flight import LOCK_WAIT, SingleFlight

__all__ = ["ImageryReadError", "MetricEngine", "OutsideStorm", "TileGrid", "Values", "open_engine"]

log = logging.getLogger(__name__)

#: A metric tile at zoom z is drawn as a grid of cells at zoom min(za, z + GRID_LEVELS).
GRID_LEVELS = 4
#: Most analysis tiles read from the cache to aggregate a far-out cell on the fly.
MAX_ON_THE_FLY = 4096


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
    """Metric vectors of the storms of a catalog, from the cache or computed once.

    ``computer``: a ``Computer`` (in this process or in worker processes), or a regressor to
    run in this process (with ``read_threads`` and batches of ``max_batch``).
    """

    def __init__(
        self,
        catalog: Catalog,
        computer: Computer | Predictor,
        client: redis.Redis | None,
        analysis_zoom: int,
        budget: int = 64,
        read_threads: int = 4,
        max_batch: int = 64,
        lock_wait: float = LOCK_WAIT,
    ) -> None:
        self.catalog = catalog
        self.storms = OpenStorms(catalog)
        if not isinstance(computer, LocalComputer | ProcessComputer):
            computer = LocalComputer(computer, self.storms, ChipReader(read_threads), max_batch)
        self.computer: Computer = computer
        self.analysis_zoom = analysis_zoom
        self.budget = budget
        self.store = MetricStore(client, computer.model_id) if client is not None else None
        self.cache = GuardedStore(self.store) if self.store is not None else None
        self.flight = SingleFlight(computer, self.cache, lock_wait)
        self._geom_lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """The regressor's model id (part of every cache key)."""
        return self.computer.model_id

    @property
    def scenes(self) -> OpenScenes:
        """Open scene files shared by every read of this engine (and the service's imagery)."""
        return self.storms.scenes

    @property
    def cache_ok(self) -> bool:
        """Whether the last Redis command succeeded (False without Redis)."""
        return self.cache is not None and self.cache.ok

    @property
    def model_calls(self) -> int:
        """Model calls this process made for its requests."""
        return self.flight.model_calls

    @property
    def tiles_computed(self) -> int:
        """Tiles this process computed for its requests."""
        return self.flight.tiles_computed

    def local(self) -> LocalComputer:
        """The in-process computer (precompute's pipeline drives it directly)."""
        if not isinstance(self.computer, LocalComputer):
            raise TypeError("this engine computes in worker processes, not in this one")
        return self.computer

    def close(self) -> None:
        """Store what was computed, then stop the computer and close the scene files."""
        self.flight.close()  # values already computed still reach Redis
        self.computer.close()
        self.storms.close()

    def flush(self) -> None:
        """Wait until every computed value is stored (or has failed)."""
        self.flight.flush()

    # ------------------------------------------------------------------ storms

    def storm(self, storm_name: str) -> LoadedStorm:
        """The storm and its mosaic backend, reloaded when its catalog file changes."""
        return self.storms.get(storm_name)

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

    def _cached(self, storm_name: str, tiles: Sequence[Tile]) -> dict[Tile, Entry]:
        return self.cache.get_many(storm_name, tiles) if self.cache is not None else {}

    # ------------------------------------------------------------------ queries

    def analysis_values(
        self, storm_name: str, tiles: Sequence[Tile], budget: int | None = None
    ) -> Values:
        """Entries of analysis tiles: cached, else computed within ``budget`` tiles."""
        loaded = self.storm(storm_name)
        budget = self.budget if budget is None else budget
        out = Values()
        inside = self.covered(loaded.storm, tiles)
        candidates = [t for t, ok in zip(tiles, inside, strict=True) if ok]
        out.entries.update((t, NO_IMAGERY) for t, ok in zip(tiles, inside, strict=True) if not ok)
        stores_seen = self.cache.stores if self.cache is not None else None
        cached = self._cached(storm_name, candidates)
        out.entries.update(cached)
        out.cached = len(cached)
        misses = [t for t in candidates if t not in cached]
        to_compute, out.missing = misses[:budget], misses[budget:]
        if to_compute:
            computed, ready = self.flight.entries(storm_name, to_compute, stores_seen)
            out.entries.update(computed)
            out.cached += ready
            out.computed = len(computed) - ready
        out.cache_ok = self.cache_ok
        return out

    def tile_grid(self, storm_name: str, tile: Tile, budget: int | None = None) -> TileGrid:
        """The cells of metric tile ``tile``: analysis tiles, or aggregates at far-out zooms."""
        za = self.analysis_zoom
        level = min(za, tile.z + GRID_LEVELS)
        if level == za:
            cells = analysis_tiles_for(tile, za)
            vals = self.analysis_values(storm_name, cells, budget)
            entries, missing = vals.entries, len(vals.missing)
            cached, computed = vals.cached, vals.computed
        else:
            cells = descendants(tile, level)
            entries, missing = self._aggregates(storm_name, cells)
            cached, computed = len(entries), 0
        n = int(math.isqrt(len(cells)))
        values = np.full((n, n, NMETRICS), np.nan, np.float32)
        has = np.zeros((n, n), bool)
        x0, y0 = cells[0].x, cells[0].y
        for t in cells:
            e = entries.get(t)
            if e is not None and e.values is not None:
                values[t.y - y0, t.x - x0] = e.values
                has[t.y - y0, t.x - x0] = True
        return TileGrid(tile, level, values, has, missing, cached, computed, self.cache_ok)

    def _aggregates(self, storm_name: str, cells: list[Tile]) -> tuple[dict[Tile, Entry], int]:
        """Pre-aggregated cells (written by precompute); the rest from cached analysis tiles."""
        storm = self.storm(storm_name).storm
        inside = self.covered(storm, cells)
        wanted = [c for c, ok in zip(cells, inside, strict=True) if ok]
        entries = self._cached(storm_name, wanted)
        absent = [c for c in wanted if c not in entries]
        per_cell = 4 ** (self.analysis_zoom - cells[0].z)
        if not absent or len(absent) * per_cell > MAX_ON_THE_FLY:
            return entries, len(absent)
        missing = 0
        kids = {c: descendants(c, self.analysis_zoom) for c in absent}
        # Children outside the coverage are never stored: they have no imagery, not "missing".
        every = [k for ks in kids.values() for k in ks]
        inside_kids = {k for k, ok in zip(every, self.covered(storm, every), strict=True) if ok}
        kids = {c: [k for k in ks if k in inside_kids] for c, ks in kids.items()}
        cached = self._cached(storm_name, [k for ks in kids.values() for k in ks])
        for c, ks in kids.items():
            vals = [cached[k].values for k in ks if k in cached and cached[k].has_imagery]
            if vals:
                with np.errstate(invalid="ignore"):
                    mean = np.nanmean(np.stack(vals), axis=0)
                entries[c] = Entry(mean.astype(np.float32), len(vals))
            if any(k not in cached for k in ks):
                missing += 1  # partly known at best
        return entries, missing

    def point_tile(self, storm_name: str, lon: float, lat: float) -> Tile:
        """The analysis tile at a coordinate; OutsideStorm outside the storm's scenes."""
        storm = self.storm(storm_name).storm
        with self._geom_lock:
            inside = bool(shapely.intersects(storm.coverage, shapely.Point(lon, lat)))
        if not inside:
            raise OutsideStorm(f"({lon}, {lat}) is outside every scene of storm {storm_name!r}")
        return mercantile.tile(lon, lat, self.analysis_zoom)

    def point(
        self, storm_name: str, lon: float, lat: float, budget: int = 1
    ) -> tuple[Tile, Entry | None, bool]:
        """(analysis tile, entry, came from cache) at a coordinate; OutsideStorm outside it.
        The entry is None if it is not cached and ``budget`` is 0."""
        tile = self.point_tile(storm_name, lon, lat)
        vals = self.analysis_values(storm_name, [tile], budget=budget)
        entry = vals.entries.get(tile)
        if entry is not None and not entry.has_imagery:
            raise OutsideStorm(f"no imagery of storm {storm_name!r} at ({lon}, {lat})")
        return tile, entry, vals.cached == 1


def open_engine(
    settings: Settings, *, budget: int | None = None, processes: int = 0
) -> MetricEngine:
    """The engine for ``settings``: its catalog, its model's regressor, its Redis.

    ``processes`` > 0: the model runs in that many worker processes (``ProcessComputer``),
    and this process never imports TensorFlow."""
    from iou_maps.metric_store import connect
    from iou_maps.models import load_regressor_model, regressor_metadata

    computer: Computer | Predictor
    if processes > 0:
        computer = ProcessComputer(settings.data_dir, settings.model, processes)
        computer.start()
        zoom = int(regressor_metadata(settings.data_dir, settings.model)["analysis_zoom"])
    else:
        regressor = load_regressor_model(settings.data_dir, settings.model)
        computer, zoom = regressor, regressor.analysis_zoom
    client = connect(settings.redis_url, settings.data_dir)
    return MetricEngine(
        Catalog(settings.data_dir),
        computer,
        client,
        zoom,
        settings.compute_budget if budget is None else budget,
    )
