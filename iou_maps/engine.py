"""Metric vectors of analysis tiles: cache → compute once → store.

The one path by which the service, the point lookup and precompute get numbers:

1. tiles outside the storm's coverage are "no imagery" without any read;
2. the cache is read in bulk (one Redis round trip);
3. misses (within a budget) are computed once however many requests and processes ask
   (``SingleFlight``), by a ``Computer``: in this process, or in worker processes;
4. computed values are stored behind the answer, and counted in Redis for every process;
5. when Redis is unavailable the values are still computed and returned, uncached.

Far-out zooms read the aggregated levels that precompute writes.

Each source has its ``Channel`` (computer, cache, single flight): ``predicted`` values (the
regressor) and ``true`` values (the segmentation model against the labels, ``iou_maps.truth``);
``error`` values are predicted − true, computed from the two, and their far-out aggregates
(mean absolute errors) are read from their own key space.
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
from iou_maps.chips import ChipReader
from iou_maps.classes import NMETRICS, Source
from iou_maps.compute import Computer, LocalComputer, Predictor, ProcessComputer
from iou_maps.config import Settings
from iou_maps.errors import ImageryReadError, ModelNotFound, NoLabels, OutsideStorm
from iou_maps.grid import analysis_tiles_for, descendants, tile_polygons
from iou_maps.metric_store import (
    NO_IMAGERY,
    PREDICTED_NAMESPACE,
    Entry,
    GuardedStore,
    MetricStore,
)
from iou_maps.mosaic import LoadedStorm, OpenScenes, OpenStorms
from iou_maps.single_flight import LOCK_WAIT, SingleFlight
from iou_maps.summary import StormSummary, summarize
from iou_maps.truth import (
    ERROR_NAMESPACE,
    TRUE_NAMESPACE,
    SegmentationSource,
    TruthComputer,
    error_id,
)

__all__ = [
    "Channel",
    "ImageryReadError",
    "MetricEngine",
    "NoLabels",
    "OutsideStorm",
    "PointValues",
    "TileGrid",
    "Values",
    "open_engine",
]

log = logging.getLogger(__name__)

#: A metric tile at zoom z is drawn as a grid of cells at zoom min(za, z + GRID_LEVELS).
GRID_LEVELS = 4
#: Most analysis tiles read from the cache to aggregate a far-out cell on the fly.
MAX_ON_THE_FLY = 4096


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
    source: Source = Source.predicted


@dataclass
class PointValues:
    """The analysis tile at a coordinate, its predicted and (where labelled) true values."""

    tile: Tile
    predicted: Entry | None  # None: not cached, and no budget to compute it
    true: Entry | None  # None: no true value (no label there), or not computed yet
    labelled: bool  # the tile lies under a labelled scene (true values may exist there)
    cached: bool  # every value came from the cache
    missing: int  # values left to compute (over the budget)


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


class MetricEngine:
    """Metric vectors of the storms of a catalog, from the cache or computed once.

    ``computer``: a ``Computer`` (in this process or in worker processes), or a regressor to
    run in this process (with ``read_threads`` and batches of ``max_batch``). ``truth``: the
    computer of the true metrics (``iou_maps.truth``), or the segmentation model to run in this
    process; None: no true or error layers (``truth_missing`` says why).
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
        truth: Computer | SegmentationSource | None = None,
        truth_missing: str = "this engine has no segmentation model for true metrics",
    ) -> None:
        self.catalog = catalog
        self.storms = OpenStorms(catalog)
        if not isinstance(computer, LocalComputer | ProcessComputer):
            computer = LocalComputer(computer, self.storms, ChipReader(read_threads), max_batch)
        self.computer: Computer = computer
        self.analysis_zoom = analysis_zoom
        self.budget = budget
        self.predicted = Channel.open(computer, client, PREDICTED_NAMESPACE, lock_wait)
        self.store = self.predicted.store
        self.cache = self.predicted.cache
        self.flight = self.predicted.flight
        if isinstance(truth, SegmentationSource):
            truth = TruthComputer(truth, self.storms, read_threads)
        self.truth = Channel.open(truth, client, TRUE_NAMESPACE, lock_wait) if truth else None
        self.truth_missing = truth_missing
        self.error_store: MetricStore | None = None
        self.error_cache: GuardedStore | None = None
        if truth is not None and client is not None:
            ids = error_id(computer.model_id, truth.model_id)
            self.error_store = MetricStore(client, ids, ERROR_NAMESPACE)
            self.error_cache = GuardedStore(self.error_store)
        self._geom_lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """The regressor's model id (part of every cache key)."""
        return self.computer.model_id

    @property
    def truth_id(self) -> str | None:
        """The segmentation model's id (the true values' keys), None without one."""
        return self.truth.computer.model_id if self.truth is not None else None

    def source_id(self, source: Source) -> str:
        """The id of the model(s) behind the values of ``source``."""
        if source is Source.predicted or self.truth_id is None:
            return self.model_id
        return self.truth_id if source is Source.true else error_id(self.model_id, self.truth_id)

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

    def local_computer(self, source: Source) -> LocalComputer | TruthComputer:
        """The in-process computer of predicted or true values (for precompute's ``fill``)."""
        if source is Source.predicted:
            return self.local()
        computer = self.channel(source).computer
        if not isinstance(computer, TruthComputer):
            raise TypeError("this engine computes true values in worker processes")
        return computer

    def close(self) -> None:
        """Store what was computed, then stop the computers and close the scene files."""
        for channel in (self.predicted, self.truth):
            if channel is not None:
                channel.flight.close()  # values already computed still reach Redis
        if self.truth is not None:
            self.truth.computer.close()
        self.computer.close()
        self.storms.close()

    def flush(self) -> None:
        """Wait until every computed value is stored (or has failed)."""
        for channel in (self.predicted, self.truth):
            if channel is not None:
                channel.flight.flush()

    # ------------------------------------------------------------------ storms

    def storm(self, storm_name: str) -> LoadedStorm:
        """The storm and its mosaic backend, reloaded when its catalog file changes."""
        return self.storms.get(storm_name)

    def check_source(self, storm_name: str, source: Source) -> LoadedStorm:
        """The storm, if it has ``source`` values: NoLabels for true/error values of a storm
        without labels, ModelNotFound without the segmentation model that computes them."""
        loaded = self.storm(storm_name)
        if source is Source.predicted:
            return loaded
        if not loaded.storm.has_labels:
            raise NoLabels(
                f"storm {storm_name!r} has no label rasters: {source.value} metrics need labels "
                "(ingest them as <image>_label.tif or .png beside each image)"
            )
        if self.truth is None:
            raise ModelNotFound(f"{source.value} metrics are unavailable: {self.truth_missing}")
        return loaded

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

    def covered(
        self, storm: Storm, tiles: Sequence[Tile], area: shapely.Geometry | None = None
    ) -> np.ndarray:
        """Which tiles meet ``area`` (default: the storm's coverage), exact and vectorised."""
        if not tiles:
            return np.zeros(0, bool)
        boxes = tile_polygons(list(tiles))
        cov = storm.coverage if area is None else area
        if cov.is_empty:
            return np.zeros(len(tiles), bool)
        # GEOS prepared geometries build their indexes lazily and are not thread-safe:
        # concurrent requests sharing a storm's coverage crashed the server without this.
        with self._geom_lock:
            shapely.prepare(cov)
            return shapely.intersects(cov, boxes) & ~shapely.touches(cov, boxes)

    def _cached(
        self, storm_name: str, tiles: Sequence[Tile], source: Source = Source.predicted
    ) -> dict[Tile, Entry]:
        """Stored entries of ``tiles`` (aggregates of the error layer for ``error``)."""
        if source is Source.error:
            cache = self.error_cache
        else:
            cache = self.channel(source).cache
        return cache.get_many(storm_name, tiles) if cache is not None else {}

    def _cached_abs_error(self, storm_name: str, tiles: Sequence[Tile]) -> dict[Tile, Entry]:
        """|predicted − true| of analysis tiles whose values are cached (``abs_errors``)."""
        true = self._cached(storm_name, tiles, Source.true)
        want = [t for t, e in true.items() if e.has_imagery]
        return abs_errors(self._cached(storm_name, want, Source.predicted), true)

    # ------------------------------------------------------------------ queries

    def analysis_values(
        self,
        storm_name: str,
        tiles: Sequence[Tile],
        budget: int | None = None,
        source: Source = Source.predicted,
    ) -> Values:
        """Entries of analysis tiles: cached, else computed within ``budget`` tiles."""
        loaded = self.check_source(storm_name, source)
        budget = self.budget if budget is None else budget
        if source is Source.error:
            return self._error_values(storm_name, tiles, budget)
        channel = self.channel(source)
        out = Values()
        inside = self.covered(loaded.storm, tiles, self.area(loaded.storm, source))
        candidates = [t for t, ok in zip(tiles, inside, strict=True) if ok]
        out.entries.update((t, NO_IMAGERY) for t, ok in zip(tiles, inside, strict=True) if not ok)
        cache = channel.cache
        stores_seen = cache.stores if cache is not None else None
        cached = cache.get_many(storm_name, candidates) if cache is not None else {}
        out.entries.update(cached)
        out.cached = len(cached)
        misses = [t for t in candidates if t not in cached]
        to_compute, out.missing = misses[:budget], misses[budget:]
        if to_compute:
            computed, ready = channel.flight.entries(storm_name, to_compute, stores_seen)
            out.entries.update(computed)
            out.cached += ready
            out.computed = len(computed) - ready
        out.cache_ok = cache is not None and cache.ok
        return out

    def _error_values(self, storm_name: str, tiles: Sequence[Tile], budget: int) -> Values:
        """predicted − true of analysis tiles, where both exist (true first: only labelled
        tiles need a prediction). Counts are of values: a tile may cost two."""
        true = self.analysis_values(storm_name, tiles, budget, Source.true)
        want = [t for t in tiles if (e := true.entries.get(t)) is not None and e.has_imagery]
        pred = self.analysis_values(
            storm_name, want, max(0, budget - true.computed), Source.predicted
        )
        missing = set(true.missing) | set(pred.missing)
        out = Values(
            cached=true.cached + pred.cached,
            computed=true.computed + pred.computed,
            missing=[t for t in tiles if t in missing],
            cache_ok=true.cache_ok and pred.cache_ok,
        )
        for t in tiles:
            te, pe = true.entries.get(t), pred.entries.get(t)
            if t in missing or te is None:
                continue
            if not te.has_imagery or pe is None or not pe.has_imagery:
                out.entries[t] = NO_IMAGERY
            else:
                out.entries[t] = difference(pe, te)
        return out

    def tile_grid(
        self,
        storm_name: str,
        tile: Tile,
        budget: int | None = None,
        source: Source = Source.predicted,
    ) -> TileGrid:
        """The cells of metric tile ``tile``: analysis tiles, or aggregates at far-out zooms
        (for ``error``: the mean absolute error of the analysis tiles under a cell)."""
        za = self.analysis_zoom
        level = min(za, tile.z + GRID_LEVELS)
        if level == za:
            cells = analysis_tiles_for(tile, za)
            vals = self.analysis_values(storm_name, cells, budget, source)
            entries, missing = vals.entries, len(vals.missing)
            cached, computed = vals.cached, vals.computed
            cache_ok = vals.cache_ok
        else:
            self.check_source(storm_name, source)
            cells = descendants(tile, level)
            entries, missing = self._aggregates(storm_name, cells, source)
            cached, computed = len(entries), 0
            cache_ok = self.cache_ok
        n = int(math.isqrt(len(cells)))
        values = np.full((n, n, NMETRICS), np.nan, np.float32)
        has = np.zeros((n, n), bool)
        x0, y0 = cells[0].x, cells[0].y
        for t in cells:
            e = entries.get(t)
            if e is not None and e.values is not None:
                values[t.y - y0, t.x - x0] = e.values
                has[t.y - y0, t.x - x0] = True
        return TileGrid(tile, level, values, has, missing, cached, computed, cache_ok, source)

    def _aggregates(
        self, storm_name: str, cells: list[Tile], source: Source = Source.predicted
    ) -> tuple[dict[Tile, Entry], int]:
        """Pre-aggregated cells (written by precompute); the rest from cached analysis tiles."""
        storm = self.storm(storm_name).storm
        area = self.area(storm, source)
        inside = self.covered(storm, cells, area)
        wanted = [c for c, ok in zip(cells, inside, strict=True) if ok]
        entries = self._cached(storm_name, wanted, source)
        absent = [c for c in wanted if c not in entries]
        per_cell = 4 ** (self.analysis_zoom - cells[0].z)
        if not absent or len(absent) * per_cell > MAX_ON_THE_FLY:
            return entries, len(absent)
        missing = 0
        kids = {c: descendants(c, self.analysis_zoom) for c in absent}
        # Children outside the coverage are never stored: they have no imagery, not "missing".
        every = [k for ks in kids.values() for k in ks]
        inside_kids = {
            k for k, ok in zip(every, self.covered(storm, every, area), strict=True) if ok
        }
        kids = {c: [k for k in ks if k in inside_kids] for c, ks in kids.items()}
        children = [k for ks in kids.values() for k in ks]
        if source is Source.error:
            cached = self._cached_abs_error(storm_name, children)
        else:
            cached = self._cached(storm_name, children, source)
        for c, ks in kids.items():
            vals = [cached[k].values for k in ks if k in cached and cached[k].has_imagery]
            if vals:
                with np.errstate(invalid="ignore"):
                    mean = np.nanmean(np.stack(vals), axis=0)
                entries[c] = Entry(mean.astype(np.float32), len(vals))
            if any(k not in cached for k in ks):
                missing += 1  # partly known at best
        return entries, missing

    def summary(self, storm_name: str) -> StormSummary:
        """What the cache knows about a storm (``iou_maps.summary``; nothing is computed)."""
        storm = self.storm(storm_name).storm
        true = self.truth.cache if self.truth is not None else None
        return summarize(
            storm, self.analysis_zoom, self.cache or _NoCache(), self.model_id,
            true if true is not None else (_NoCache() if self.truth else None), self.truth_id,
        )  # fmt: skip

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

    def point_values(self, storm_name: str, lon: float, lat: float, budget: int = 1) -> PointValues:
        """Predicted and (where labelled, with a segmentation model) true values of the
        analysis tile at a coordinate, each computed within ``budget`` if not cached;
        OutsideStorm outside the storm's imagery."""
        tile = self.point_tile(storm_name, lon, lat)
        pred = self.analysis_values(storm_name, [tile], budget=budget)
        entry = pred.entries.get(tile)
        if entry is not None and not entry.has_imagery:
            raise OutsideStorm(f"no imagery of storm {storm_name!r} at ({lon}, {lat})")
        storm = self.storm(storm_name).storm
        labelled = self.truth is not None and bool(
            self.covered(storm, [tile], storm.label_coverage)[0]
        )
        out = PointValues(tile, entry, None, labelled, pred.cached == 1, len(pred.missing))
        if labelled:
            true = self.analysis_values(storm_name, [tile], budget, Source.true)
            got = true.entries.get(tile)
            out.true = got if got is not None and got.has_imagery else None
            out.cached = out.cached and true.cached == 1
            out.missing += len(true.missing)
        return out


class _NoCache:
    """The cache of an engine without Redis: nothing cached."""

    @staticmethod
    def get_many(storm: str, tiles: Sequence[Tile]) -> dict[Tile, Entry]:
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


def open_engine(
    settings: Settings, *, budget: int | None = None, processes: int = 0
) -> MetricEngine:
    """The engine for ``settings``: its catalog, its model's regressor and segmentation model
    (for true metrics; loaded when first needed), its Redis.

    ``processes`` > 0: the models run in that many worker processes (``ProcessComputer``),
    and this process never imports TensorFlow."""
    from iou_maps.metric_store import connect
    from iou_maps.models import load_regressor_model, regressor_metadata, truth_segmentation_dir

    computer: Computer | Predictor
    truth: Computer | SegmentationSource | None = None
    truth_missing = ""
    try:
        segmentation = SegmentationSource(truth_segmentation_dir(settings.data_dir, settings.model))
    except ModelNotFound as exc:
        segmentation, truth_missing = None, str(exc)
    if processes > 0:
        computer = ProcessComputer(settings.data_dir, settings.model, processes)
        computer.start()
        zoom = int(regressor_metadata(settings.data_dir, settings.model)["analysis_zoom"])
        if segmentation is not None:
            truth = computer.truth(segmentation.model_id)
    else:
        regressor = load_regressor_model(settings.data_dir, settings.model)
        computer, zoom = regressor, regressor.analysis_zoom
        truth = segmentation
    client = connect(settings.redis_url, settings.data_dir)
    return MetricEngine(
        Catalog(settings.data_dir),
        computer,
        client,
        zoom,
        settings.compute_budget if budget is None else budget,
        truth=truth,
        truth_missing=truth_missing,
    )
