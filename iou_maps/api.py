"""IoU Maps from Python (a notebook): one storm's metric maps as GeoDataFrames, numbers and
the service's TileJSON URLs for leafmap, folium or ipyleaflet.

::

    import iou_maps

    with iou_maps.open_storm("hatteras") as maps:
        print([layer.name for layer in maps.layers if layer.available])
        tiles = maps.values("predicted", bbox=(-75.6, 35.2, -75.5, 35.3))
        tiles.plot(column="miou", vmin=0, vmax=1)
        url = maps.tilejson_url("predicted", "miou")  # for a running `iou-maps serve`

Everything goes through the metric engine (``iou_maps.compute.engine``) and the layer
registry (``iou_maps.layers.registry``), as the CLI and the service do: the same settings
(``IOU_MAPS_*`` environment variables), the same cache, the same values. Reading never runs
a model unless asked (``compute=True``), and then within a budget of analysis tiles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlencode

import geopandas as gpd
import numpy as np
from mercantile import Tile

from iou_maps.compute.engine import MetricEngine, open_engine
from iou_maps.compute.metric_store import Entry
from iou_maps.compute.plan import tiles_of
from iou_maps.config import Settings
from iou_maps.errors import BadBBox, BadBudget, ModelNotFound, NoLabels, UnknownMetric
from iou_maps.layers.base import Layer
from iou_maps.layers.registry import LAYERS, Source, get_layer
from iou_maps.layers.summary import StormSummary
from iou_maps.storms.catalog import Catalog, Storm
from iou_maps.storms.grid import tile_polygons

#: The ``state`` of a row of ``StormMaps.values``: the tile has metric values; the cache
#: says it has none (no imagery, or too few labelled pixels for true values); nothing is
#: cached for it (and it was not computed: ``compute=False`` or over the budget).
VALUE, EMPTY, MISSING = "value", "empty", "missing"

#: The tile matrix set whose TileJSON the URLs name (the one web maps use).
TILE_MATRIX_SET = "WebMercatorQuad"

#: Default address of ``iou-maps serve``.
DEFAULT_BASE_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class LayerInfo:
    """A metric layer as a notebook lists it, and whether this storm has it."""

    #: The name ``values``, ``tilejson_url`` and the service (``?source=``) take.
    name: str
    title: str
    description: str
    #: Default colormap (rio-tiler name) and the value range its colours span.
    colormap: str
    rescale: tuple[float, float]
    #: What the colours mean, low to high.
    legend: str
    #: Whether it has values only where the storm has label rasters.
    needs_labels: bool
    #: Whether this storm, with the opened models, can have its values.
    available: bool
    #: Why not, when it is not available (no labels, no segmentation model); else None.
    reason: str | None = None


@dataclass(frozen=True)
class PointMetrics:
    """The metrics of the analysis tile at a coordinate (metric name → value, NaN where a
    metric is undefined)."""

    tile: Tile
    #: None: not cached (and not computed).
    predicted: dict[str, float] | None
    #: None: not labelled there, no segmentation model, or not cached (and not computed).
    true: dict[str, float] | None
    #: Whether the tile lies under a labelled scene (true values may exist there).
    labelled: bool
    #: Values left uncomputed (``compute=False``).
    missing: int


class StormMaps:
    """The metric maps of one storm, read through a metric engine; ``open_storm`` makes one.

    Close it (or use it as a context manager) to store what it computed and let go of the
    models, the scene files and Redis.
    """

    def __init__(self, name: str, engine: MetricEngine, settings: Settings) -> None:
        self.name = name
        #: The engine behind every read (for what this API does not cover, e.g. precompute).
        self.engine = engine
        self.settings = settings
        self._closed = False

    def __repr__(self) -> str:
        return f"StormMaps({self.name!r}, model={self.settings.model!r})"

    # ------------------------------------------------------------------ the storm

    @property
    def storm(self) -> Storm:
        """The storm: its folder, footprints (a GeoDataFrame), coverage and bounds."""
        return self.engine.storm(self.name).storm

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """West, south, east, north of its scenes (EPSG:4326)."""
        return self.storm.bounds

    @property
    def analysis_zoom(self) -> int:
        """The zoom of the tiles the model scores (one row of ``values`` each)."""
        return self.engine.analysis_zoom

    @property
    def layers(self) -> list[LayerInfo]:
        """Every metric layer, in the service's order, and whether this storm has it."""
        return [self._info(layer) for layer in LAYERS.values()]

    def _info(self, layer: Layer) -> LayerInfo:
        reason = None
        try:
            self.engine.check_source(self.name, layer)
        except (NoLabels, ModelNotFound) as exc:
            reason = str(exc)
        return LayerInfo(
            name=layer.name,
            title=layer.title,
            description=layer.description,
            colormap=layer.colormap,
            rescale=layer.rescale,
            legend=layer.legend,
            needs_labels=layer.needs_labels,
            available=reason is None,
            reason=reason,
        )

    # ------------------------------------------------------------------ values

    def values(
        self,
        layer: str | Source = Source.predicted,
        bbox: Sequence[float] | None = None,
        *,
        compute: bool = False,
        budget: int | None = None,
    ) -> gpd.GeoDataFrame:
        """One row per analysis tile of ``layer`` under ``bbox`` (W, S, E, N in degrees;
        default: the whole storm): ``z``, ``x``, ``y``, ``state`` (``VALUE``, ``EMPTY``,
        ``MISSING``), one column per metric (NaN where there is no value) and the tile's
        polygon (EPSG:4326).

        Values come from the cache; with ``compute=True`` the missing ones are computed and
        stored, at most ``budget`` analysis tiles of them (default: the ``compute_budget``
        setting, IOU_MAPS_COMPUTE_BUDGET). Errors: UnknownLayer, BadBBox, BadBudget, and
        NoLabels / ModelNotFound for a layer the storm does not have (see ``layers``).
        """
        chosen = get_layer(layer)
        box = _checked_bbox(bbox)
        spend = _checked_budget(self.settings.compute_budget if budget is None else budget)
        self.engine.check_source(self.name, chosen)
        tiles = tiles_of(self.storm, self.analysis_zoom, box, chosen)
        got = self.engine.analysis_values(self.name, tiles, spend if compute else 0, chosen)
        if got.computed:
            self.engine.flush()  # stored before we answer: the service sees them too
        return _tiles_frame(tiles, got.entries, self.engine.classes.metrics)

    def point(self, lon: float, lat: float, *, compute: bool = False) -> PointMetrics:
        """Predicted and (where labelled) true metrics of the analysis tile at ``lon, lat``,
        from the cache, or computed with ``compute=True``; OutsideStorm outside its imagery."""
        got = self.engine.point_values(self.name, lon, lat, budget=1 if compute else 0)
        if compute:
            self.engine.flush()  # stored before we answer, as in ``values``
        return PointMetrics(
            tile=got.tile,
            predicted=_metrics(got.predicted, self.engine.classes.metrics),
            true=_metrics(got.true, self.engine.classes.metrics),
            labelled=got.labelled,
            missing=got.missing,
        )

    def summary(self) -> StormSummary:
        """What the cache knows about the storm: tiles cached, the predicted mIoU's
        histogram, and where labelled the regressor against the truth (nothing computed)."""
        return self.engine.summary(self.name)

    # ------------------------------------------------------------------ web maps

    def tilejson_url(
        self,
        layer: str | Source = Source.predicted,
        metric: str = "miou",
        base_url: str = DEFAULT_BASE_URL,
    ) -> str:
        """The TileJSON URL of a metric layer of this storm on the service at ``base_url``
        (``iou-maps serve``), for leafmap's ``add_tile_layer``, folium or ipyleaflet;
        UnknownLayer, UnknownMetric for bad names."""
        chosen = get_layer(layer)
        metrics = self.engine.classes.metrics
        if metric not in metrics:
            raise UnknownMetric(f"unknown metric {metric!r}; valid: {', '.join(metrics)}")
        path = f"/storms/{self.name}/metrics/{metric}/{TILE_MATRIX_SET}/tilejson.json"
        return f"{base_url.rstrip('/')}{path}?{urlencode({'source': chosen.name})}"

    def imagery_tilejson_url(self, base_url: str = DEFAULT_BASE_URL) -> str:
        """The TileJSON URL of the storm's imagery on the service at ``base_url``."""
        return f"{base_url.rstrip('/')}/storms/{self.name}/imagery/{TILE_MATRIX_SET}/tilejson.json"

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Store what was computed, stop the models, close the scene files and Redis."""
        if not self._closed:
            self._closed = True
            self.engine.close()

    def __enter__(self) -> StormMaps:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_storm(
    name: str,
    data_dir: str | Path | None = None,
    *,
    model: str | None = None,
    redis_url: str | None = None,
    settings: Settings | None = None,
) -> StormMaps:
    """The metric maps of storm ``name``. Unset arguments come from ``settings`` (default:
    the environment, as for the CLI: IOU_MAPS_DATA_DIR, IOU_MAPS_MODEL, REDIS_URL, …).

    The storm is looked up before the model is loaded: InvalidStormName, StormNotFound; then
    ModelNotFound without the model's regressor.
    """
    base = Settings() if settings is None else settings
    update: dict[str, object] = {"data_dir": None if data_dir is None else Path(data_dir),
                                 "model": model, "redis_url": redis_url}  # fmt: skip
    chosen = base.model_copy(update={k: v for k, v in update.items() if v is not None})
    Catalog(chosen.data_dir).storm(name)
    return StormMaps(name, open_engine(chosen), chosen)


def _tiles_frame(
    tiles: Sequence[Tile], entries: Mapping[Tile, Entry], metrics: Sequence[str]
) -> gpd.GeoDataFrame:
    """The rows of ``StormMaps.values``: ``tiles`` with their ``entries`` (absent: MISSING),
    a column per metric of the model (``metrics``)."""
    values = np.full((len(tiles), len(metrics)), np.nan, np.float32)
    states = []
    for i, tile in enumerate(tiles):
        entry = entries.get(tile)
        if entry is None:
            states.append(MISSING)
        elif entry.values is None:
            states.append(EMPTY)
        else:
            values[i] = entry.values
            states.append(VALUE)
    columns: dict[str, object] = {
        axis: np.array([getattr(t, axis) for t in tiles], np.int64) for axis in ("z", "x", "y")
    }
    columns["state"] = states
    columns.update({metric: values[:, i] for i, metric in enumerate(metrics)})
    return gpd.GeoDataFrame(columns, geometry=tile_polygons(tiles), crs="EPSG:4326")


def _checked_bbox(bbox: Sequence[float] | None) -> tuple[float, float, float, float] | None:
    """``bbox`` as four floats W, S, E, N on the globe with W < E and S < N; else BadBBox."""
    if bbox is None:
        return None
    try:
        w, s, e, n = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise BadBBox(f"bbox {bbox!r} must be four numbers W, S, E, N") from None
    if not all(map(math.isfinite, (w, s, e, n))):
        raise BadBBox(f"bbox {bbox!r} must be finite")
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise BadBBox(f"bbox {bbox!r} must be W, S, E, N in degrees with W < E and S < N")
    return w, s, e, n


def _checked_budget(budget: int) -> int:
    """``budget`` if it is a count of tiles (≥ 0); else BadBudget."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise BadBudget(f"budget {budget!r} must be a number of tiles, 0 or more")
    return budget


def _metrics(entry: Entry | None, metrics: Sequence[str]) -> dict[str, float] | None:
    """An entry's values by metric name; None for no entry or the "no value" marker."""
    if entry is None or entry.values is None:
        return None
    return {metric: float(v) for metric, v in zip(metrics, entry.values, strict=True)}


__all__ = [
    "DEFAULT_BASE_URL",
    "EMPTY",
    "MISSING",
    "VALUE",
    "LayerInfo",
    "PointMetrics",
    "StormMaps",
    "open_storm",
]
