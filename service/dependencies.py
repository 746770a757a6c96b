"""Injectable FastAPI dependencies of the IoU Maps endpoints (titiler style)."""

import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal, TypeVar

from fastapi import HTTPException, Path, Query
from mercantile import Tile
from morecantile import TileMatrixSet
from morecantile import tms as morecantile_tms
from morecantile.defaults import TileMatrixSets
from pydantic import BeforeValidator
from rio_tiler.colormap import ColorMaps
from rio_tiler.colormap import cmap as default_cmap
from rio_tiler.types import ColorMapType
from titiler.core.dependencies import DefaultDependency, create_colormap_dependency
from titiler.core.validation import validate_rescale

from iou_maps.catalog import Storm
from iou_maps.classes import METRICS
from iou_maps.engine import MetricEngine
from iou_maps.grid import validate_tile

#: The analysis grid and StormBackend's asset lookups are Web-Mercator: the only TMS served.
WEB_MERCATOR_QUAD: TileMatrixSet = morecantile_tms.get("WebMercatorQuad")
SUPPORTED_TMS = TileMatrixSets({"WebMercatorQuad": WEB_MERCATOR_QUAD})

MetricName = Literal[METRICS]  # type: ignore[valid-type]


class MetricFormat(StrEnum):
    """Metric tile encodings: colour-mapped images, or the raw float32 values."""

    png = "png"
    webp = "webp"
    tif = "tif"
    npy = "npy"

    @property
    def raw(self) -> bool:
        return self in (MetricFormat.tif, MetricFormat.npy)


class CachedColorMaps(ColorMaps):
    """rio-tiler's colormaps, each loaded from its .npy file once per process, not per tile."""

    def get(self, name: str) -> ColorMapType:
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
#: titiler's colormap dependency (``colormap_name`` checked against the list, or ``colormap``
#: JSON) over the cached colormaps.
ColorMapParams = inline(create_colormap_dependency(cached_cmap))


@dataclass
class MetricRenderingParams(DefaultDependency):
    """How a metric layer is coloured: the value range the colormap spans.

    titiler's ``ImageRenderingParams`` also takes ``color_formula`` and ``return_mask``, which
    mean nothing for metric tiles: accepting and ignoring them would mislead, and each
    parameter costs every tile request its validation.
    """

    rescale: Annotated[
        list[str] | None,
        BeforeValidator(validate_rescale),
        Query(
            title="Colour scale range",
            description="'min,max' of the values the colormap spans (default 0,1).",
            examples=["0,1", "0.5,1"],
        ),
    ] = None

    def __post_init__(self) -> None:
        if self.rescale:
            if len(self.rescale) != 1:
                raise HTTPException(422, "rescale: give one 'min,max' range (one band)")
            lo, hi = (float(v) for v in self.rescale[0].split(","))
            if not lo < hi:
                raise HTTPException(422, f"rescale: min {lo} is not below max {hi}")
            self.rescale = [(lo, hi)]  # type: ignore[list-item]


#: The metric layers' rendering options (``rescale``).
RenderParams = inline(MetricRenderingParams)


async def MetricParams(
    metric: Annotated[MetricName, Path(description=f"One of: {', '.join(METRICS)}.")],
) -> str:
    """The metric layer named in the path (FastAPI answers 422 naming the valid ones)."""
    return str(metric)


async def TileCoordsParams(
    z: Annotated[int, Path(description="Zoom level.")],
    x: Annotated[int, Path(description="Tile column.")],
    y: Annotated[int, Path(description="Tile row.")],
) -> Tile:
    """The tile z/x/y, or 422 saying which coordinate is out of range."""
    try:
        return validate_tile(z, x, y)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None


def storm_dependency(engine: MetricEngine) -> Callable[..., Awaitable[Storm]]:
    """A path dependency resolving ``{storm}`` to the engine's cached Storm (no ``url=``).

    The name is validated before any disk access (InvalidStormName → 422, unknown → 404).
    """

    async def StormPathParams(
        storm: Annotated[
            str,
            Path(description="Storm name: 1-64 characters of a-z, 0-9, '_' and '-'."),
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
