"""Tile addressing: the one tile matrix set served, tile coordinates and the bounds on titiler's
tile size and zoom parameters."""

from typing import Annotated, Any, Literal

from fastapi import HTTPException, Path, Query
from mercantile import Tile
from morecantile import TileMatrixSet
from morecantile import tms as morecantile_tms
from morecantile.defaults import TileMatrixSets
from pydantic import StringConstraints

from iou_maps.storms.grid import MAX_ZOOM, validate_tile
from service.params.base import bad_param

#: The analysis grid and StormBackend's asset lookups are Web-Mercator: the only TMS served.
WEB_MERCATOR_QUAD: TileMatrixSet = morecantile_tms.get("WebMercatorQuad")
SUPPORTED_TMS = TileMatrixSets({"WebMercatorQuad": WEB_MERCATOR_QUAD})

# The analysis grid is Web Mercator: the one tile matrix set served (checked here).
assert SUPPORTED_TMS.list() == ["WebMercatorQuad"]
TMSId = Annotated[
    Literal["WebMercatorQuad"],
    Path(description="Tile matrix set (the analysis grid is WebMercatorQuad)."),
]

#: Largest tile column or row at the deepest zoom served.
MAX_TILE_INDEX = 2**MAX_ZOOM - 1
#: Largest imagery tile edge (px): 4x a retina tile; larger ones are a memory hazard.
MAX_TILESIZE = 1024


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
