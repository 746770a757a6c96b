"""Injectable FastAPI dependencies of the IoU Maps endpoints (titiler style)."""

import functools
import inspect
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from fastapi import HTTPException, Path, Query
from mercantile import Tile
from morecantile import TileMatrixSet
from morecantile import tms as morecantile_tms
from morecantile.defaults import TileMatrixSets
from pydantic import BeforeValidator, StringConstraints
from rio_tiler.colormap import ColorMaps, parse_color
from rio_tiler.colormap import cmap as default_cmap
from rio_tiler.models import ImageData
from rio_tiler.mosaic.methods.base import MosaicMethodBase
from rio_tiler.types import ColorMapType, RIOResampling
from titiler.core.dependencies import DefaultDependency

from iou_maps.compute.engine import MetricEngine
from iou_maps.layers.registry import Source
from iou_maps.models.classes import METRICS
from iou_maps.storms.catalog import STORM_NAME_RE, Storm
from iou_maps.storms.grid import MAX_ZOOM, validate_tile
from iou_maps.storms.mosaic import FirstFill

#: The analysis grid and StormBackend's asset lookups are Web-Mercator: the only TMS served.
WEB_MERCATOR_QUAD: TileMatrixSet = morecantile_tms.get("WebMercatorQuad")
SUPPORTED_TMS = TileMatrixSets({"WebMercatorQuad": WEB_MERCATOR_QUAD})

MetricName = Literal[METRICS]  # type: ignore[valid-type]


class CachedColorMaps(ColorMaps):
    """rio-tiler's colormaps, each loaded from its .npy file once per process, not per tile."""

    def get(self, name: str) -> ColorMapType:
        """The colormap ``name``, loaded once per process."""
        cache: dict[str, ColorMapType] = self.__dict__.setdefault("_loaded", {})
        if name not in cache:
            cache[name] = super().get(name)
        return cache[name]


T = TypeVar("T")


def inline(dependency: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """``dependency`` run on the event loop, with the same parameters and documentation.

    FastAPI runs every plain ``def`` dependency in its thread pool: a thread hop each, for
    functions that only check query and path parameters. They add up on a tile request.
    """

    @functools.wraps(dependency)
    async def run(**kwargs: object) -> T:
        return dependency(**kwargs)

    run.__signature__ = inspect.signature(dependency, eval_str=True)  # type: ignore[attr-defined]
    return run


cached_cmap = CachedColorMaps(data=default_cmap.data)

#: Storm names as the catalog accepts them (the schema states the rule; the catalog checks it
#: with a message naming the storm, before any disk access).
STORM_NAME_PATTERN = f"^{STORM_NAME_RE.pattern}$"
#: Largest tile column or row at the deepest zoom served.
MAX_TILE_INDEX = 2**MAX_ZOOM - 1
#: Largest imagery tile edge (px): 4x a retina tile; larger ones are a memory hazard.
MAX_TILESIZE = 1024
#: Largest colormap legend image edge (px).
MAX_LEGEND_SIZE = 2048
#: Web-Mercator latitude limit.
MAX_LATITUDE = 85.06

Longitude = Annotated[
    float,
    Path(ge=-180, le=180, allow_inf_nan=False, description="Longitude (EPSG:4326)."),
]
Latitude = Annotated[
    float,
    Path(
        ge=-MAX_LATITUDE,
        le=MAX_LATITUDE,
        allow_inf_nan=False,
        description="Latitude (EPSG:4326, within Web Mercator's range).",
    ),
]


def bad_param(name: str, message: str) -> HTTPException:
    """The 422 of an invalid ``name`` parameter (FastAPI's own checks answer 422 too)."""
    return HTTPException(status_code=422, detail=f"{name}: {message}")


# --------------------------------------------------------------------------- colormaps


def parse_colormap(text: str) -> ColorMapType:
    """A custom colormap from JSON: ``{"0": "#ff0000", "255": [0, 0, 255, 255]}`` (index →
    colour) or ``[[[min, max], colour], ...]`` (intervals); 422 naming ``colormap`` otherwise.

    titiler's parser lets bad keys, colours and shapes through to the renderer (a 500).
    """
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise bad_param("colormap", f"not valid JSON ({exc})") from None
    try:
        if isinstance(value, dict) and value:
            cmap: dict[int, tuple[int, int, int, int]] = {}
            for key, color in value.items():
                index = int(key)
                if not 0 <= index <= 255:
                    raise ValueError(f"index {key!r} outside 0..255")
                cmap[index] = _color(color)
            return cmap
        if isinstance(value, list) and value:
            intervals = []
            for (lo, hi), color in value:
                lo, hi = float(lo), float(hi)
                if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                    raise ValueError(f"interval [{lo}, {hi}] is not a finite min < max")
                intervals.append(((lo, hi), _color(color)))
            return intervals
    except (ValueError, TypeError, KeyError) as exc:
        raise bad_param("colormap", str(exc)) from None
    raise bad_param(
        "colormap", "give a non-empty JSON object {index: colour} or list [[[min, max], colour]]"
    )


def _color(value: Any) -> tuple[int, int, int, int]:
    """An RGBA colour from '#rrggbb[aa]' or [r, g, b(, a)] with 0..255 integers."""
    if isinstance(value, list) and not all(
        isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value
    ):
        raise ValueError(f"colour {value!r}: use integers 0..255")
    if not isinstance(value, str | list):
        raise ValueError(f"colour {value!r}: use '#rrggbb' or [r, g, b, a]")
    try:
        return parse_color(value)
    except Exception as exc:  # rio-tiler's InvalidColorFormat and friends
        raise ValueError(f"colour {value!r}: {exc}") from None


def colormap_params(
    colormap_name: Annotated[
        Literal[tuple(cached_cmap.list())],  # type: ignore[valid-type]
        Query(description="Colormap name (see /colorMaps)."),
    ] = None,
    colormap: Annotated[
        str | None,
        Query(
            description=(
                'JSON custom colormap: {"index": colour} over the 0..255 scale, or '
                "[[[min, max], colour], ...] intervals; colours '#rrggbb[aa]' or [r, g, b, a]."
            ),
        ),
    ] = None,
) -> ColorMapType | None:
    """The colormap asked for by name or as JSON (None: the layer's default)."""
    if colormap_name:
        return cached_cmap.get(colormap_name)
    if colormap:
        return parse_colormap(colormap)
    return None


#: ``colormap_name`` (checked against the list) or a ``colormap`` JSON, on the event loop.
ColorMapParams = inline(colormap_params)


# --------------------------------------------------------------------------- rendering


def parse_rescale(ranges: list[str] | None, max_ranges: int) -> list[tuple[float, float]] | None:
    """'min,max' strings (their form checked by ``RangeItem``) as finite ranges."""
    if not ranges:
        return None
    if len(ranges) not in {1, max_ranges}:
        counts = "one range" if max_ranges == 1 else f"one range, or one per band ({max_ranges})"
        raise bad_param("rescale", f"give {counts}, not {len(ranges)}")
    out = []
    for r in ranges:
        lo, hi = (float(v) for v in r.split(","))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise bad_param("rescale", f"{r!r} is not finite")
        if not lo < hi:
            raise bad_param("rescale", f"min {lo} is not below max {hi}")
        out.append((lo, hi))
    return out


_FLOAT = r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
#: One 'min,max' range of plain decimal numbers (titiler also took '[0,1]', 'nan' and 'inf';
#: the schema states the form, so generated and hand-written requests get it right).
RangeItem = Annotated[str, StringConstraints(pattern=f"^{_FLOAT},{_FLOAT}$")]

RescaleQuery = Annotated[
    list[RangeItem] | None,
    Query(
        title="Colour scale range",
        description="'min,max' of the values the colours span.",
        examples=["0,1", "0.5,1"],
    ),
]


@dataclass
class MetricRenderingParams(DefaultDependency):
    """How a metric layer is coloured: the value range the colormap spans.

    titiler's ``ImageRenderingParams`` also takes ``color_formula`` and ``return_mask``, which
    mean nothing for metric tiles: accepting and ignoring them would mislead, and each
    parameter costs every tile request its validation.
    """

    rescale: RescaleQuery = None

    def __post_init__(self) -> None:
        self.rescale = parse_rescale(self.rescale, max_ranges=1)  # type: ignore[assignment]


#: The metric layers' rendering options (``rescale``).
RenderParams = inline(MetricRenderingParams)


def validate_color_formula(formula: str | None) -> str | None:
    """A rio-color formula that applies to RGB imagery, tried on one pixel.

    Parsing alone (titiler's check) lets through formulas that fail when applied (a gamma of
    0, band 4 of an RGB image, ...): a 500 on every tile.
    """
    if formula is None:
        return None
    try:
        ImageData(np.ma.MaskedArray(np.full((3, 1, 1), 128, np.uint8))).apply_color_formula(formula)
    except Exception as exc:
        raise ValueError(f"invalid color formula: {exc}") from None
    return formula


@dataclass
class ImageryRenderingParams(DefaultDependency):
    """Display options of the RGB imagery: contrast stretch and colour formula.

    Colormaps apply to one band, not to RGB imagery: none are offered here.
    """

    rescale: Annotated[
        list[RangeItem] | None,
        Query(
            title="Contrast stretch",
            description=(
                "'min,max' of the 0..255 pixel values the output spans: one range for all "
                "bands, or three (red, green, blue)."
            ),
            examples=["20,220"],
        ),
    ] = None
    color_formula: Annotated[
        str | None,
        BeforeValidator(validate_color_formula),
        Query(
            title="Color formula",
            description="rio-color formula, e.g. 'gamma rgb 1.3, sigmoidal rgb 10 0.3'.",
        ),
    ] = None
    add_mask: Annotated[
        bool | None,
        Query(alias="return_mask", description="Transparent where no scene has data (default)."),
    ] = None

    def __post_init__(self) -> None:
        self.rescale = parse_rescale(self.rescale, max_ranges=3)  # type: ignore[assignment]


@dataclass
class ImageryDatasetParams(DefaultDependency):
    """How scene pixels are read: the nodata value and the resampling between zooms.

    Scenes are 8-bit RGB with nodata 0 (ingest makes them so): a nodata override must be a
    byte value. titiler's ``unscale`` and ``reproject`` are left out: the scenes have no scale
    or offset and are stored on the Web-Mercator grid.
    """

    nodata: Annotated[
        int | None,
        Query(
            ge=0,
            le=255,
            title="Nodata value",
            description="Pixel value drawn transparent (default: the scenes' own, 0).",
        ),
    ] = None
    resampling_method: Annotated[
        RIOResampling | None,
        Query(alias="resampling", description="Resampling between zooms (default nearest)."),
    ] = None


def FirstSceneParams() -> MosaicMethodBase:
    """Each pixel from the first scene that has it: what the metric engine reads too (no
    ``pixel_selection``: mixing overlapping frames per band makes colours no scene has)."""
    return FirstFill()


def NoParams() -> None:
    """A dependency slot left empty (e.g. titiler's ``algorithm``: DEM tools, not for RGB)."""
    return None


# --------------------------------------------------------------------------- path and query


async def MetricParams(
    metric: Annotated[MetricName, Path(description=f"One of: {', '.join(METRICS)}.")],
) -> str:
    """The metric layer named in the path (FastAPI answers 422 naming the valid ones)."""
    return str(metric)


async def SourceParams(
    source: Annotated[
        Source,
        Query(
            description=(
                "Where the values come from: predicted (the regressor, everywhere), true (the "
                "segmentation model against the storm's labels, where labelled) or error "
                "(predicted − true; its lower-zoom aggregates are the mean absolute error). "
                "true and error answer 404 for a storm without labels."
            )
        ),
    ] = Source.predicted,
) -> Source:
    """The source of a metric layer or point lookup (FastAPI answers 422 naming the valid
    ones)."""
    return Source(source)


def _index_schema(maximum: int) -> dict[str, Any]:
    return {"minimum": 0, "maximum": maximum}


async def TileCoordsParams(
    z: Annotated[int, Path(description="Zoom level.", json_schema_extra=_index_schema(MAX_ZOOM))],
    x: Annotated[
        int,
        Path(
            description="Tile column (0..2^z-1).", json_schema_extra=_index_schema(MAX_TILE_INDEX)
        ),
    ],
    y: Annotated[
        int,
        Path(description="Tile row (0..2^z-1).", json_schema_extra=_index_schema(MAX_TILE_INDEX)),
    ],
) -> Tile:
    """The tile z/x/y, or 422 saying which coordinate is out of range.

    The schema states the ranges; ``validate_tile`` checks them, and the bound of x and y at
    zoom z that a schema cannot express, with a message naming the coordinate.
    """
    try:
        return validate_tile(z, x, y)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None


async def TileSizeParams(
    tilesize: Annotated[
        int | None,
        Query(ge=1, le=MAX_TILESIZE, description=f"Tile edge in pixels (1..{MAX_TILESIZE})."),
    ] = None,
) -> None:
    """Bounds titiler's ``tilesize`` (a route dependency: its declaration replaces titiler's
    in the schema, and FastAPI checks both)."""


async def ZoomRangeParams(
    minzoom: Annotated[
        int | None, Query(ge=0, le=MAX_ZOOM, description="Overwrite the lowest zoom.")
    ] = None,
    maxzoom: Annotated[
        int | None, Query(ge=0, le=MAX_ZOOM, description="Overwrite the highest zoom.")
    ] = None,
) -> None:
    """Bounds titiler's ``minzoom``/``maxzoom`` overrides (unbounded, a huge one made the tile
    set's limits infinite, a 500, and a TileJSON took a negative zoom)."""
    if minzoom is not None and maxzoom is not None and minzoom > maxzoom:
        raise bad_param("minzoom", f"{minzoom} is above maxzoom {maxzoom}")


#: ``tms::minzoom,maxzoom`` with zooms 0..MAX_ZOOM.
_ZOOM = r"(?:[0-9]|1[0-9]|2[0-4])"
ZoomsItem = Annotated[str, StringConstraints(pattern=rf"^(?:\*|WebMercatorQuad)::{_ZOOM},{_ZOOM}$")]


async def WMTSZoomsParams(
    zooms: Annotated[
        list[ZoomsItem] | None,
        Query(
            description=f"Zoom range of the layer, as 'WebMercatorQuad::min,max' (0..{MAX_ZOOM})."
        ),
    ] = None,
) -> None:
    """Bounds titiler's WMTS ``zooms`` (any integer made the tile matrix limits infinite)."""


async def GeographicCRSParams(
    crs: Annotated[
        Literal["EPSG:4326", "EPSG:3857"] | None,
        Query(description="CRS of the bounds in the answer (default EPSG:4326)."),
    ] = None,
) -> None:
    """Bounds titiler's ``crs`` to the CRSs a storm's bounds make sense in (any CRS rasterio
    parses was accepted; one whose area of use misses the storm answered the whole world)."""


async def PointCRSParams(
    lon: Longitude,
    lat: Latitude,
    coord_crs: Annotated[
        Literal["EPSG:4326"] | None,
        Query(description="CRS of lon/lat: EPSG:4326 only."),
    ] = None,
) -> None:
    """Bounds titiler's imagery point coordinates (lon/lat in EPSG:4326)."""


async def LegendSizeParams(
    height: Annotated[
        int | None, Query(ge=1, le=MAX_LEGEND_SIZE, description="Image height in pixels.")
    ] = None,
    width: Annotated[
        int | None, Query(ge=1, le=MAX_LEGEND_SIZE, description="Image width in pixels.")
    ] = None,
) -> None:
    """Bounds the colormap legend size (a negative one was a 500, a huge one a memory hazard)."""


def storm_dependency(engine: MetricEngine) -> Callable[..., Awaitable[Storm]]:
    """A path dependency resolving ``{storm}`` to the engine's cached Storm (no ``url=``).

    The name is validated before any disk access (InvalidStormName → 422, unknown → 404).
    """

    async def StormPathParams(
        storm: Annotated[
            str,
            Path(
                description="Storm name: 1-64 characters of a-z, 0-9, '_' and '-'.",
                json_schema_extra={"pattern": STORM_NAME_PATTERN},
            ),
        ],
    ) -> Storm:
        return engine.storm(storm).storm

    return StormPathParams


def budget_dependency(cap: int) -> Callable[..., Awaitable[int]]:
    """The per-request compute budget: a query parameter capped by the settings."""

    async def BudgetParams(
        budget: Annotated[
            int | None,
            Query(
                ge=0,
                description=(
                    "Most analysis tiles this request may compute with the model "
                    f"(default and maximum: {cap}). Tiles over the budget are drawn "
                    "transparent and counted in the X-IoU-Missing header."
                ),
            ),
        ] = None,
    ) -> int:
        return cap if budget is None else min(budget, cap)

    return BudgetParams
