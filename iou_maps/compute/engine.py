"""Metric vectors of analysis tiles: cache → compute once → store.

The one path by which the service, the point lookup and precompute get numbers:

1. tiles outside the storm's coverage are "no imagery" without any read;
2. the cache is read in bulk (one Redis round trip);
3. misses (within a budget) are computed once however many requests and processes ask
   (``SingleFlight``), by a ``Computer``: in this process, or in worker processes;
4. computed values are stored behind the answer, and counted in Redis for every process;
5. when Redis is unavailable the values are still computed and returned, uncached.

Far-out zooms read the aggregated levels that precompute writes.

Which values a layer has and how they are made is the layer's (``iou_maps.layers``): each
computed layer has a ``Channel`` (computer, cache, single flight) in ``Sources``; a derived
layer's values combine its inputs' here, and its far-out aggregates are read from its own key
space.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import cast

import mercantile
import numpy as np
import redis
import shapely
from mercantile import Tile

from iou_maps.compute.computed import Computer, Predictor
from iou_maps.compute.computers import LocalComputer, ProcessComputer
from iou_maps.compute.metric_store import NO_IMAGERY, release
from iou_maps.compute.single_flight import LOCK_WAIT
from iou_maps.compute.truth import SegmentationSource, TruthComputer
from iou_maps.config import Settings
from iou_maps.errors import ClassSetMismatch, ModelNotFound, OutsideStorm
from iou_maps.layers.base import REGRESSOR, SEGMENTATION, Layer
from iou_maps.layers.predicted import PREDICTED
from iou_maps.layers.registry import Source, computed_layers, get_layer
from iou_maps.layers.sources import NoCache, Sources, combine_cached
from iou_maps.layers.summary import StormSummary, summarize
from iou_maps.layers.tile_values import PointValues, TileGrid, Values
from iou_maps.layers.true import TRUE
from iou_maps.models.classes import ClassSet
from iou_maps.storms.catalog import Catalog, Storm
from iou_maps.storms.chips import ChipReader
from iou_maps.storms.grid import analysis_tiles_for, descendants, tile_polygons
from iou_maps.storms.open_storms import LoadedStorm, OpenStorms
from iou_maps.storms.scenes import OpenScenes

#: A metric tile at zoom z is drawn as a grid of cells at zoom min(za, z + GRID_LEVELS).
GRID_LEVELS = 4


class MetricEngine:
    """Metric vectors of the storms of a catalog, from the cache or computed once.

    ``computer``: a ``Computer`` (in this process or in worker processes), or a regressor to
    run in this process (with ``read_threads`` and batches of ``max_batch``). ``truth``: the
    computer of the true metrics (``iou_maps.compute.truth``), or the segmentation model to
    run in this process; None: no true or error layers (``truth_missing`` says why).
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
        if not isinstance(computer, LocalComputer | ProcessComputer):  # a regressor: run it here
            computer = LocalComputer(cast(Predictor, computer), self.storms,
                                     ChipReader(read_threads), max_batch)  # fmt: skip
        self.computer: Computer = computer
        self.analysis_zoom = analysis_zoom
        self.budget = budget
        truth_computer: Computer | None = (
            TruthComputer(truth, self.storms, read_threads)
            if isinstance(truth, SegmentationSource)
            else truth
        )
        self.client = client
        #: The class set of the models behind the values: every layer's metrics.
        self.classes: ClassSet = self.computer.classes
        computers: dict[str, Computer] = {REGRESSOR: self.computer}
        if truth_computer is not None:
            if truth_computer.classes != self.classes:
                raise ClassSetMismatch(
                    f"the regressor's classes {list(self.classes.names)} are not those of the "
                    f"segmentation model of the true metrics {list(truth_computer.classes.names)}"
                )
            computers[SEGMENTATION] = truth_computer
        self.sources = Sources(
            computers, client, lock_wait, {SEGMENTATION: truth_missing}, classes=self.classes
        )
        predicted = self.sources.channel(PREDICTED)
        self.store, self.cache, self.flight = predicted.store, predicted.cache, predicted.flight
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

    def local_computer(self, layer: Layer) -> LocalComputer | TruthComputer:
        """The in-process computer of a computed layer (precompute's pipeline drives it)."""
        computer = self.sources.channel(layer).computer
        if not isinstance(computer, LocalComputer | TruthComputer):
            raise TypeError(f"this engine computes {layer.name} values in worker processes")
        return computer

    def close(self) -> None:
        """Store what was computed, stop the computers, close the scene files and let go of
        Redis (an embedded server stops unless another process uses it)."""
        self.sources.close()
        self.storms.close()
        release(self.client)

    def flush(self) -> None:
        """Wait until every computed value is stored (or has failed)."""
        self.sources.flush()

    # ------------------------------------------------------------------ storms

    def storm(self, storm_name: str) -> LoadedStorm:
        """The storm and its mosaic backend, reloaded when its catalog file changes."""
        return self.storms.get(storm_name)

    def check_source(self, storm_name: str, source: Source | Layer) -> LoadedStorm:
        """The storm, if it has values of layer ``source`` (``Sources.check``)."""
        loaded = self.storm(storm_name)
        self.sources.check(loaded.storm, as_layer(source))
        return loaded

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

    # ------------------------------------------------------------------ queries

    def analysis_values(
        self,
        storm_name: str,
        tiles: Sequence[Tile],
        budget: int | None = None,
        source: Source | Layer = Source.predicted,
    ) -> Values:
        """Entries of analysis tiles of layer ``source``: cached, else computed within
        ``budget`` tiles (a derived layer's from its inputs', each input's in turn)."""
        layer = as_layer(source)
        loaded = self.check_source(storm_name, layer)
        budget = self.budget if budget is None else budget
        if layer.derived:
            return self._derived_values(storm_name, tiles, budget, layer)
        channel = self.sources.channel(layer)
        out = Values()
        inside = self.covered(loaded.storm, tiles, layer.area(loaded.storm))
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

    def _derived_values(
        self, storm_name: str, tiles: Sequence[Tile], budget: int, layer: Layer
    ) -> Values:
        """A derived layer's entries: its first input's values, then each further input's
        where the first has a value (only labelled tiles need a prediction for the error
        layer), combined. Counts are of values: a tile may cost one per input."""
        got: dict[str, Values] = {}
        out = Values()
        want = list(tiles)
        for name in layer.inputs:
            vals = self.analysis_values(
                storm_name, want, max(0, budget - out.computed), get_layer(name)
            )
            got[name] = vals
            out.cached += vals.cached
            out.computed += vals.computed
            out.cache_ok = out.cache_ok and vals.cache_ok
            if name == layer.inputs[0]:
                want = [
                    t for t in tiles if (e := vals.entries.get(t)) is not None and e.has_imagery
                ]
        missing = {t for v in got.values() for t in v.missing}
        out.missing = [t for t in tiles if t in missing]
        known = [t for t in tiles if t not in missing]
        out.entries = combine_cached(
            layer, lambda name, ts: {t: e for t in ts if (e := got[name].entries.get(t))},
            known, leaf=False,
        )  # fmt: skip
        return out

    def tile_grid(
        self,
        storm_name: str,
        tile: Tile,
        budget: int | None = None,
        source: Source | Layer = Source.predicted,
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
            storm = self.storm(storm_name).storm
            entries, missing = self.sources.far_cells(
                storm, cells, as_layer(source), self.analysis_zoom,
                lambda ts, area: self.covered(storm, ts, area),
            )  # fmt: skip
            cached, computed = len(entries), 0
            cache_ok = self.cache_ok
        n = int(math.isqrt(len(cells)))
        values = np.full((n, n, self.classes.nmetrics), np.nan, np.float32)
        has = np.zeros((n, n), bool)
        x0, y0 = cells[0].x, cells[0].y
        for t in cells:
            e = entries.get(t)
            if e is not None and e.values is not None:
                values[t.y - y0, t.x - x0] = e.values
                has[t.y - y0, t.x - x0] = True
        return TileGrid(
            tile, level, values, has, missing, cached, computed, cache_ok,
            Source(as_layer(source).name),
        )  # fmt: skip

    def summary(self, storm_name: str) -> StormSummary:
        """What the cache knows about a storm (``iou_maps.layers.summary``; nothing is computed)."""
        storm = self.storm(storm_name).storm
        truth = self.sources.channels.get(TRUE.name)
        true = (truth.cache or NoCache()) if truth is not None else None
        return summarize(
            storm, self.analysis_zoom, self.cache or NoCache(), self.model_id, true,
            self.sources.ids.get(SEGMENTATION), classes=self.classes,
        )  # fmt: skip

    def point_tile(self, storm_name: str, lon: float, lat: float) -> Tile:
        """The analysis tile at a coordinate; OutsideStorm outside the storm's scenes."""
        storm = self.storm(storm_name).storm
        with self._geom_lock:
            inside = bool(shapely.intersects(storm.coverage, shapely.Point(lon, lat)))
        if not inside:
            raise OutsideStorm(f"({lon}, {lat}) is outside every scene of storm {storm_name!r}")
        return mercantile.tile(lon, lat, self.analysis_zoom)

    def point_values(self, storm_name: str, lon: float, lat: float, budget: int = 1) -> PointValues:
        """The values of every computed layer at the analysis tile at a coordinate (those
        that need labels where the tile is labelled and their model is there), each computed
        within ``budget`` if not cached; OutsideStorm outside the storm's imagery."""
        tile = self.point_tile(storm_name, lon, lat)
        storm = self.storm(storm_name).storm
        out = PointValues(tile, {}, False, True, 0)
        for layer in computed_layers():
            if layer.name not in self.sources.channels:
                out.entries[layer.name] = None
                continue
            if layer.needs_labels:
                out.labelled = bool(self.covered(storm, [tile], storm.label_coverage)[0])
                if not out.labelled:
                    out.entries[layer.name] = None
                    continue
            vals = self.analysis_values(storm_name, [tile], budget, layer)
            entry = vals.entries.get(tile)
            if layer.primary and entry is not None and not entry.has_imagery:
                raise OutsideStorm(f"no imagery of storm {storm_name!r} at ({lon}, {lat})")
            out.entries[layer.name] = entry if entry is None or entry.has_imagery else None
            out.cached = out.cached and vals.cached == 1
            out.missing += len(vals.missing)
        return out


def as_layer(source: Source | Layer | str) -> Layer:
    """The layer of a name (``Source``) or the layer itself."""
    return source if isinstance(source, Layer) else get_layer(source)


def open_engine(
    settings: Settings, *, budget: int | None = None, processes: int = 0
) -> MetricEngine:
    """The engine for ``settings``: its catalog, its model's regressor and segmentation model
    (for true metrics; loaded when first needed), its Redis.

    ``processes`` > 0: the models run in that many worker processes (``ProcessComputer``),
    and this process never imports TensorFlow."""
    from iou_maps.compute.metric_store import connect
    from iou_maps.models.registry import (
        load_regressor_model,
        regressor_metadata,
        truth_segmentation_dir,
    )

    computer: Computer | Predictor
    truth: Computer | SegmentationSource | None = None
    truth_missing = ""
    try:
        segmentation = SegmentationSource(truth_segmentation_dir(settings.data_dir, settings.model))
    except ModelNotFound as exc:
        segmentation, truth_missing = None, str(exc)
    if processes > 0:
        computer = ProcessComputer(
            settings.data_dir, settings.model, processes, precision=settings.precision
        )
        computer.start()
        meta = regressor_metadata(settings.data_dir, settings.model, settings.precision)
        zoom = int(meta["analysis_zoom"])
        if segmentation is not None:
            truth = computer.truth(segmentation.model_id)
    else:
        regressor = load_regressor_model(settings.data_dir, settings.model, settings.precision)
        computer, zoom = regressor, regressor.analysis_zoom
        truth = segmentation
    client = connect(settings.redis_url, settings.data_dir)
    budget = settings.compute_budget if budget is None else budget
    return MetricEngine(Catalog(settings.data_dir), computer, client, zoom, budget, truth=truth,
                        truth_missing=truth_missing)  # fmt: skip
