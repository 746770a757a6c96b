"""The imagery of a storm: titiler.mosaic's MosaicTilerFactory over StormBackend, with only the
parameters that mean something for RGB scenes, each bounded, and without the endpoints that
would expose server file paths."""

from collections.abc import Callable
from typing import Any

from attrs import define, field
from fastapi import Depends
from morecantile.defaults import TileMatrixSets
from titiler.core.dependencies import DefaultDependency
from titiler.core.routing import EndpointScope
from titiler.mosaic.extensions.wmts import wmtsExtension
from titiler.mosaic.factory import MosaicTilerFactory

from service.params.base import inline
from service.params.imagery import (
    FirstSceneParams,
    GeographicCRSParams,
    ImageryDatasetParams,
    NoParams,
    PointCRSParams,
)
from service.params.rendering import ImageryRenderingParams
from service.params.tiles import (
    SUPPORTED_TMS,
    TileCoordsParams,
    TileSizeParams,
    WMTSZoomsParams,
    ZoomRangeParams,
)


def _scopes(*paths: str) -> list[EndpointScope]:
    return [{"path": p, "method": "GET"} for p in paths]


#: Bounds on the parameters titiler's imagery endpoints declare inline (route dependencies:
#: FastAPI checks them first, and their declarations replace titiler's in the schema).
IMAGERY_ROUTE_LIMITS: list[tuple[list[EndpointScope], list[Any]]] = [
    (
        _scopes("/tiles/WebMercatorQuad/0/0/0", "/tiles/WebMercatorQuad/0/0/0.png"),
        # z/x/y out of range → 422 before any read (titiler would answer 404 or 500).
        [Depends(TileCoordsParams), Depends(TileSizeParams)],
    ),
    (
        _scopes("/WebMercatorQuad/tilejson.json"),
        [Depends(TileSizeParams), Depends(ZoomRangeParams)],
    ),
    (_scopes("/tiles/WebMercatorQuad"), [Depends(ZoomRangeParams)]),
    (_scopes("/tiles", "/info.geojson"), [Depends(GeographicCRSParams)]),
    (_scopes("/point/0,0"), [Depends(PointCRSParams)]),
    # The WMTS layer's tile parameters, checked here (titiler's extension answered 400 "no
    # valid layers" without saying which parameter).
    (
        _scopes("/WMTSCapabilities.xml"),
        [
            Depends(WMTSZoomsParams),
            Depends(inline(ImageryDatasetParams)),
            Depends(inline(ImageryRenderingParams)),
        ],
    ),
]


@define(kw_only=True)
class StormMosaicFactory(MosaicTilerFactory):
    """titiler.mosaic's factory for a storm's imagery mosaic (8-bit RGB scenes).

    Kept from titiler's parameters: ``tilesize``, ``nodata`` (a byte), ``resampling``,
    ``rescale``, ``color_formula`` and ``return_mask``, each bounded or checked. Left out,
    as meaningless for RGB photographs or harmful: band math (``bidx``, ``expression``),
    colormaps (one band only), ``algorithm`` (DEM tools), ``buffer``/``padding``,
    ``unscale``/``reproject`` (no scale/offset; stored on the Web-Mercator grid) and
    ``pixel_selection`` (the first scene with data wins, as for the metric engine).
    ``/assets`` endpoints are left out: they would return scene file paths on the server.
    """

    layer_dependency: type[DefaultDependency] = DefaultDependency
    dataset_dependency: Any = inline(ImageryDatasetParams)
    tile_dependency: type[DefaultDependency] = DefaultDependency
    process_dependency: Callable[..., Any] = NoParams
    colormap_dependency: Callable[..., Any] = NoParams
    render_dependency: Any = inline(ImageryRenderingParams)
    pixel_selection_dependency: Callable[..., Any] = FirstSceneParams
    supported_tms: TileMatrixSets = SUPPORTED_TMS
    route_dependencies: list[tuple[list[EndpointScope], list[Any]]] = field(
        factory=lambda: list(IMAGERY_ROUTE_LIMITS)
    )
    extensions: list[Any] = field(
        factory=lambda: [
            wmtsExtension(
                layer_identifier_provider=lambda storm: storm.name,
                tile_dependencies=[],  # checked by IMAGERY_ROUTE_LIMITS instead
            )
        ]
    )
    add_viewer: bool = False

    def assets(self) -> None:
        """Left out: it would return scene file paths on the server."""
        return None
