"""Parameters of the imagery endpoints that titiler declares loosely: how scene pixels are read,
the mosaic method, and the CRSs of bounds and points."""

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Query
from rio_tiler.mosaic.methods.base import MosaicMethodBase
from rio_tiler.types import RIOResampling
from titiler.core.dependencies import DefaultDependency

from iou_maps.storms.mosaic import FirstFill
from service.params.location import Latitude, Longitude


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
