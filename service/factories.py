"""Endpoint factories (attrs classes like titiler.core.factory) assembling routes from dependencies.

- ``StormMosaicFactory``: titiler.mosaic's MosaicTilerFactory over StormBackend, with only the
  parameters that mean something for RGB scenes, each bounded, and without the endpoints that
  would expose server file paths.
- ``MetricTilerFactory``: metric tiles (PNG/WebP colour-mapped, GeoTIFF/NPY raw), TileJSON with a
  legend and WMTS capabilities of one metric layer, of one source (``?source=``: predicted,
  true or error).
- ``StormsFactory``: storm list/detail, the metric point lookup and the storm summary.
- ``HealthFactory``: ``/healthz``.
"""

import math
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import mercantile
from anyio import to_thread
from attrs import define, field
from fastapi import Depends, HTTPException, Path, Query
from mercantile import Tile
from morecantile.defaults import TileMatrixSets
from rio_tiler.types import ColorMapType
from rio_tiler.utils import CRS_to_uri
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.templating import Jinja2Templates
from titiler.core.dependencies import DefaultDependency
from titiler.core.factory import BaseFactory
from titiler.core.resources.enums import ImageType
from titiler.core.resources.responses import XMLResponse
from titiler.core.routing import EndpointScope
from titiler.core.utils import tms_limits
from titiler.mosaic.extensions.wmts import DEFAULT_TEMPLATES as WMTS_TEMPLATES
from titiler.mosaic.extensions.wmts import wmtsExtension
from titiler.mosaic.factory import MosaicTilerFactory

from iou_maps.compute.engine import GRID_LEVELS, MetricEngine
from iou_maps.layers.base import SEGMENTATION
from iou_maps.layers.error import difference
from iou_maps.layers.registry import Source
from iou_maps.layers.render import (
    WEB_MERCATOR,
    MetricFormat,
    default_colormap,
    default_rescale,
    encode_metric_tile,
    legend_stops,
)
from iou_maps.layers.tile_values import TileGrid
from iou_maps.models.classes import METRICS
from iou_maps.storms.catalog import Storm
from iou_maps.storms.mosaic import metric_zoom_range
from service.admission import Busy, ComputeQueue
from service.dependencies import (
    SUPPORTED_TMS,
    ColorMapParams,
    FirstSceneParams,
    GeographicCRSParams,
    ImageryDatasetParams,
    ImageryRenderingParams,
    Latitude,
    Longitude,
    MetricParams,
    NoParams,
    PointCRSParams,
    RenderParams,
    SourceParams,
    TileCoordsParams,
    TileSizeParams,
    WMTSZoomsParams,
    ZoomRangeParams,
    cached_cmap,
    inline,
)
from service.http_cache import Validator, cells_digest
from service.models import (
    AnalysisTile,
    Health,
    HistogramBin,
    LegendStop,
    Link,
    MetricAccuracy,
    MetricTileJSON,
    PointMetrics,
    StormInfo,
    StormList,
    StormSummary,
    TileCounts,
)

#: Content-Crs of every metric tile (the analysis grid is Web Mercator).
WEB_MERCATOR_URI = f"<{CRS_to_uri(WEB_MERCATOR)}>"

#: Response headers of a metric tile (exposed to browsers through CORS).
MISSING, CACHED, COMPUTED, MODEL, CACHE, SOURCE = METRIC_HEADERS = (
    "X-IoU-Missing", "X-IoU-Cached", "X-IoU-Computed", "X-IoU-Model", "X-IoU-Cache",
    "X-IoU-Source",
)  # fmt: skip
#: The metric tile route (its endpoint validates itself: its ETag hashes the cells it read).
METRIC_TILE_PATH = "/{metric}/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}"

# The analysis grid is Web Mercator: the one tile matrix set served (checked below).
assert SUPPORTED_TMS.list() == ["WebMercatorQuad"]
TMSId = Annotated[
    Literal["WebMercatorQuad"],
    Path(description="Tile matrix set (the analysis grid is WebMercatorQuad)."),
]


def zoom_range(engine: MetricEngine, storm: Storm) -> tuple[int, int]:
    """Zooms of the metric layers: the storm's imagery zooms, extended to the analysis zoom."""
    return metric_zoom_range(engine.storm(storm.name).storm, engine.analysis_zoom)


def layer_query(request: Request) -> str:
    """The request's query string for the tile URLs of a layer description (TileJSON, WMTS):
    every parameter but ``tile_format``, which picks the URLs' format instead."""
    return urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "tile_format"])


def _rescale(
    render_params: DefaultDependency, source: Source = Source.predicted
) -> tuple[float, float]:
    rescale = getattr(render_params, "rescale", None)
    if rescale:
        lo, hi = rescale[0]
        return float(lo), float(hi)
    return default_rescale(source)


#: What a metric layer of each source shows, for TileJSON descriptions.
SOURCE_TITLES = {
    Source.predicted: "Predicted",
    Source.true: "True",
    Source.error: "Error (predicted − true; mean absolute error at lower zooms) of the",
}


def layer_name(storm: Storm, metric: str, source: Source) -> str:
    """The name of a metric layer (the predicted one keeps its plain name)."""
    suffix = "" if source is Source.predicted else f" {source.value}"
    return f"{storm.name} {metric}{suffix}"


def metric_values(values: object) -> dict[str, float | None]:
    """A metric vector as JSON: null where undefined (NaN)."""
    return {
        m: (None if math.isnan(float(v)) else float(v))
        for m, v in zip(METRICS, values, strict=True)  # type: ignore[call-overload]
    }


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


async def _no_validator() -> None:
    """No HTTP validation (the factory without a caching policy)."""
    return None


@define(kw_only=True)
class MetricTilerFactory(BaseFactory):
    """Metric tiles, TileJSON and WMTS of the metric layers of a storm."""

    # Dependencies may be plain or async functions (FastAPI awaits the latter, on the loop).
    engine: MetricEngine
    path_dependency: Callable[..., Storm | Awaitable[Storm]]
    budget_dependency: Callable[..., int | Awaitable[int]]
    metric_dependency: Callable[..., str | Awaitable[str]] = MetricParams
    source_dependency: Callable[..., Source | Awaitable[Source]] = SourceParams
    tile_dependency: Callable[..., Tile | Awaitable[Tile]] = TileCoordsParams
    colormap_dependency: Callable[..., Awaitable[ColorMapType | None]] = ColorMapParams
    render_dependency: Callable[..., Awaitable[DefaultDependency]] = RenderParams
    #: A tile request's ETag inputs and If-None-Match (service/http_cache.py); None: no
    #: validation, no cache headers beyond no-store on incomplete tiles.
    validator_dependency: Callable[..., Awaitable[Validator | None]] = _no_validator
    #: On-demand computation's admission (shared with the point lookup).
    queue: ComputeQueue = field(factory=lambda: ComputeQueue(256))
    supported_tms: TileMatrixSets = SUPPORTED_TMS
    wmts_templates: Jinja2Templates = field(default=WMTS_TEMPLATES)

    def register_routes(self) -> None:
        """The metric tile, TileJSON and WMTS routes."""
        self.tile()
        self.tilejson()
        self.wmts()

    @staticmethod
    def _colormap(colormap: ColorMapType | None, source: Source) -> ColorMapType:
        return colormap if colormap is not None else cached_cmap.get(default_colormap(source))

    def _render(
        self,
        grid: TileGrid,
        metric: str,
        format: MetricFormat,
        cmap: ColorMapType,
        rescale: tuple[float, float],
        retry_after: int | None = None,
        validator: Validator | None = None,
    ) -> Response:
        """The metric tile response of ``grid``: a 304 if the client holds its ETag (the
        cells are read, not encoded). Only a complete tile has an ETag."""
        etag = None
        if validator is not None and not grid.missing:
            etag = validator.etag(cells_digest(grid.values, grid.has_imagery))
            if (not_modified := validator.not_modified(etag)) is not None:
                return not_modified
        cache_headers = validator.headers(etag) if validator is not None and etag else {}
        if not grid.missing and not grid.has_imagery.any():
            # scenes there, but no imagery in the tile
            return Response(status_code=204, headers=cache_headers)
        tile = grid.tile
        content, media_type = encode_metric_tile(
            grid.values, grid.has_imagery, tile, metric, format, cmap, rescale
        )
        headers = {
            MISSING: str(grid.missing),
            CACHED: str(grid.cached),
            COMPUTED: str(grid.computed),
            MODEL: self.engine.sources.source_id(grid.source),
            CACHE: "ok" if grid.cache_ok else "unavailable",
            SOURCE: grid.source.value,
            "Content-Bbox": ",".join(map(str, mercantile.xy_bounds(tile))),
            "Content-Crs": WEB_MERCATOR_URI,
        }
        if grid.missing:
            # Incomplete: a later request may draw it whole, so do not let clients keep it.
            headers["Cache-Control"] = "no-store"
        headers.update(cache_headers)
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)  # the model is busy: come back then
        return Response(content, media_type=media_type, headers=headers)

    def _draw_tile(
        self,
        storm: Storm,
        metric: str,
        tile: Tile,
        budget: int,
        format: MetricFormat,
        cmap: ColorMapType,
        rescale: tuple[float, float],
        compute: bool,
        validator: Validator | None = None,
        source: Source = Source.predicted,
    ) -> Response | TileGrid:
        """The response of a metric tile (in a worker thread); without ``compute``, from the
        cache alone, or the grid if some of it must be computed first."""
        grid = self.engine.tile_grid(storm.name, tile, budget if compute else 0, source)
        if not compute and grid.missing and budget > 0:
            return grid
        return self._render(grid, metric, format, cmap, rescale, validator=validator)

    def _computed_tile(self, *args: Any, **kwargs: Any) -> Response:
        """``_draw_tile`` computing what is missing (so always a response)."""
        got = self._draw_tile(*args, **kwargs)
        assert isinstance(got, Response)
        return got

    def tile(self) -> None:
        """Register the metric tile route."""
        engine = self.engine

        @self.router.get(
            METRIC_TILE_PATH,
            summary="Metric tile",
            operation_id=f"{self.operation_prefix}getMetricTile",
            response_class=Response,
            responses={
                200: {
                    "content": {
                        "image/png": {},
                        "image/webp": {},
                        "image/tiff; application=geotiff": {},
                        "application/x-binary": {},
                    },
                    "description": (
                        "PNG/WebP: colour-mapped, transparent without imagery. GeoTIFF/NPY: "
                        "1-band float32 values, NaN without a value (no scene under the whole "
                        "tile: 204 No Content instead). Headers: X-IoU-Missing "
                        "(analysis tiles left out over the budget), X-IoU-Cached, "
                        "X-IoU-Computed (for error: values of both sources), X-IoU-Model "
                        "(the id of the model(s) behind the values), X-IoU-Cache "
                        "(ok|unavailable), X-IoU-Source; ETag and a long Cache-Control on a "
                        "complete tile, no-store on an incomplete one."
                    ),
                },
            },
        )
        async def metric_tile(
            tileMatrixSetId: TMSId,
            format: Annotated[MetricFormat, Path(description="png, webp, tif or npy.")],
            storm: Annotated[Storm, Depends(self.path_dependency)],
            metric: Annotated[str, Depends(self.metric_dependency)],
            source: Annotated[Source, Depends(self.source_dependency)],
            tile: Annotated[Tile, Depends(self.tile_dependency)],
            budget: Annotated[int, Depends(self.budget_dependency)],
            colormap: Annotated[ColorMapType | None, Depends(self.colormap_dependency)],
            render_params: Annotated[DefaultDependency, Depends(self.render_dependency)],
            validator: Annotated[Validator | None, Depends(self.validator_dependency)],
        ) -> Response:
            """A tile of one metric: values of the analysis tiles under it (computed on demand
            within the budget, cached in Redis), one block per analysis tile or aggregate."""
            minzoom, maxzoom = zoom_range(engine, storm)
            if not minzoom <= tile.z <= maxzoom:
                raise HTTPException(
                    status_code=422,
                    detail=f"zoom {tile.z} outside {minzoom}..{maxzoom} for storm {storm.name!r}",
                )
            loaded = engine.check_source(storm.name, source)  # NoLabels: 404
            scenes = loaded.backend if source is Source.predicted else loaded.labels
            if scenes is None or not scenes.assets_for_tile(tile.x, tile.y, tile.z):
                # No scene under it, as for the imagery: a fact of this catalogue version.
                if validator is None:
                    return Response(status_code=204)
                etag = validator.etag("no scene")
                return validator.not_modified(etag) or Response(
                    status_code=204, headers=validator.headers(etag)
                )
            # What the cache holds first: one hop to a worker thread (a plain ``def`` endpoint
            # cost FastAPI twice this hop's overhead), no model.
            args = (storm, metric, tile, budget, format, self._colormap(colormap, source))
            rescale = _rescale(render_params, source)
            got = await to_thread.run_sync(
                self._draw_tile, *args, rescale, False, validator, source
            )
            if isinstance(got, Response):
                return got
            # Then the model, through the compute queue: its waits never hold the threads
            # that cached reads use; over the queue's limit, what is cached now.
            try:
                return await self.queue.run(
                    min(got.missing, budget),
                    self._computed_tile,
                    *args,
                    rescale,
                    True,
                    validator,
                    source,
                )
            except Busy as busy:
                return await to_thread.run_sync(
                    self._render, got, metric, format, args[-1], rescale, busy.retry_after
                )

    def tilejson(self) -> None:
        """Register the metric TileJSON route."""
        engine = self.engine

        @self.router.get(
            "/{metric}/{tileMatrixSetId}/tilejson.json",
            summary="TileJSON of a metric layer, with its legend",
            response_model=MetricTileJSON,
            response_model_exclude_none=True,
            operation_id=f"{self.operation_prefix}getMetricTileJSON",
        )
        def metric_tilejson(
            request: Request,
            tileMatrixSetId: TMSId,
            storm: Annotated[Storm, Depends(self.path_dependency)],
            metric: Annotated[str, Depends(self.metric_dependency)],
            source: Annotated[Source, Depends(self.source_dependency)],
            colormap: Annotated[ColorMapType | None, Depends(self.colormap_dependency)],
            render_params: Annotated[DefaultDependency, Depends(self.render_dependency)],
            budget: Annotated[int, Depends(self.budget_dependency)],
            tile_format: Annotated[
                MetricFormat, Query(description="Format of the tile URLs.")
            ] = MetricFormat.png,
        ) -> MetricTileJSON:
            """TileJSON 3.0 of one metric layer; ``legend_stops`` gives the colour scale."""
            engine.check_source(storm.name, source)  # NoLabels: 404
            minzoom, maxzoom = zoom_range(engine, storm)
            url = self.url_for(
                request,
                "metric_tile",
                metric=metric,
                tileMatrixSetId=tileMatrixSetId,
                z="{z}",
                x="{x}",
                y="{y}",
                format=tile_format.value,
            )
            qs = layer_query(request)
            if qs:
                url += f"?{qs}"
            vmin, vmax = _rescale(render_params, source)
            name = request.query_params.get("colormap_name")
            if colormap is None and not request.query_params.get("colormap"):
                name = default_colormap(source)
            return MetricTileJSON(
                name=layer_name(storm, metric, source),
                description=f"{SOURCE_TITLES[source]} {metric} of storm {storm.name!r} "
                f"(model {engine.sources.source_id(source)})",
                tiles=[url],
                minzoom=minzoom,
                maxzoom=maxzoom,
                bounds=list(storm.bounds),
                metric=metric,
                source=source,
                colormap_name=name,
                rescale=(vmin, vmax),
                legend_stops=[
                    LegendStop(value=float(stop["value"]), color=str(stop["color"]))
                    for stop in legend_stops(self._colormap(colormap, source), vmin, vmax)
                ],
                model_id=engine.sources.source_id(source),
            )

    def wmts(self) -> None:
        """Register the metric WMTS capabilities route."""
        engine = self.engine

        @self.router.get(
            "/{metric}/WMTSCapabilities.xml",
            summary="OGC WMTS capabilities of a metric layer",
            response_class=XMLResponse,
            operation_id=f"{self.operation_prefix}getMetricWMTS",
            responses={
                200: {"content": {"application/xml": {}}, "description": "WMTS 1.0.0 (RESTful)."},
            },
        )
        def metric_wmts(
            request: Request,
            storm: Annotated[Storm, Depends(self.path_dependency)],
            metric: Annotated[str, Depends(self.metric_dependency)],
            source: Annotated[Source, Depends(self.source_dependency)],
            colormap: Annotated[ColorMapType | None, Depends(self.colormap_dependency)],
            render_params: Annotated[DefaultDependency, Depends(self.render_dependency)],
            budget: Annotated[int, Depends(self.budget_dependency)],
            tile_format: Annotated[
                MetricFormat, Query(description="Format of the tiles (tif for raw floats).")
            ] = MetricFormat.png,
        ) -> Response:
            """RESTful WMTS capabilities (titiler's template) of one metric layer."""
            engine.check_source(storm.name, source)  # NoLabels: 404
            minzoom, maxzoom = zoom_range(engine, storm)
            qs = layer_query(request)
            layers = []
            matrix_sets = []
            for tms_id in self.supported_tms.list():
                tms = self.supported_tms.get(tms_id)
                url = self.url_for(
                    request,
                    "metric_tile",
                    metric=metric,
                    tileMatrixSetId=tms_id,
                    z="{TileMatrix}",
                    x="{TileCol}",
                    y="{TileRow}",
                    format=tile_format.value,
                )
                kind = "" if source is Source.predicted else f"_{source.value}"
                ident = f"{storm.name}_{metric}{kind}_{tms_id}"
                layers.append(
                    {
                        "title": ident,
                        "identifier": ident,
                        "tms_identifier": tms_id,
                        "tms_limits": tms_limits(tms, storm.bounds, zooms=(minzoom, maxzoom)),
                        "tiles_url": url,
                        "query_string": qs,
                        "bbox_crs_type": "WGS84BoundingBox",
                        "bbox_crs_uri": "urn:ogc:def:crs:OGC:2:84",
                        "bbox": storm.bounds,
                    }
                )
                matrix_sets.append({"id": tms_id, "crs": tms.crs.srs, "matrices": tms.tileMatrices})
            media = (
                "image/tiff"
                if tile_format is MetricFormat.tif
                else ImageType(tile_format.value).mediatype
            )
            return self.wmts_templates.TemplateResponse(
                request,
                name="wmts.xml",
                context={"layers": layers, "tileMatrixSets": matrix_sets, "media_type": media},
                media_type="application/xml",
            )


@define(kw_only=True)
class StormsFactory(BaseFactory):
    """The storm catalog and the metric point lookup."""

    engine: MetricEngine
    path_dependency: Callable[..., Storm | Awaitable[Storm]]
    #: On-demand computation's admission (shared with the metric tiles).
    queue: ComputeQueue = field(factory=lambda: ComputeQueue(256))

    def register_routes(self) -> None:
        """The storm list, storm detail, summary and point routes."""
        self.list_storms()
        self.storm_detail()
        self.summary()
        self.point()

    def info(self, request: Request, storm: Storm) -> StormInfo:
        """The description of a storm, with links to its layers."""
        backend = self.engine.storm(storm.name).backend
        fp = storm.footprints
        w, s, e, n = storm.bounds
        base = str(request.base_url).rstrip("/") + f"/storms/{storm.name}"
        return StormInfo(
            name=storm.name,
            bounds=(w, s, e, n),
            center=((w + e) / 2, (s + n) / 2),
            minzoom=backend.minzoom,
            maxzoom=backend.maxzoom,
            analysis_zoom=self.engine.analysis_zoom,
            on_demand_minzoom=max(0, self.engine.analysis_zoom - GRID_LEVELS),
            scenes=len(fp),
            labelled_scenes=int(fp["label_path"].notna().sum()),
            metrics=list(METRICS),
            sources=list(Source) if storm.has_labels else [Source.predicted],
            links=[
                Link(href=base, rel="self"),
                Link(
                    href=f"{base}/imagery/WebMercatorQuad/tilejson.json",
                    rel="imagery",
                    title="Imagery TileJSON",
                ),
                Link(
                    href=f"{base}/metrics/miou/WebMercatorQuad/tilejson.json",
                    rel="metric",
                    title="mIoU TileJSON (replace miou by any metric)",
                ),
                Link(href=f"{base}/point/{{lon}},{{lat}}", rel="point", title="Point lookup"),
                Link(href=f"{base}/summary", rel="summary", title="Cached tiles and accuracy"),
            ],
        )

    def list_storms(self) -> None:
        """Register the storm list route."""

        @self.router.get(
            "/storms",
            summary="List the storms",
            response_model=StormList,
            operation_id=f"{self.operation_prefix}listStorms",
        )
        def list_storms(request: Request) -> StormList:
            """Every ingested storm with its bounds, zooms and scene counts."""
            names = self.engine.catalog.names()
            return StormList(storms=[self.info(request, self.engine.storm(n).storm) for n in names])

    def storm_detail(self) -> None:
        """Register the storm detail route."""

        @self.router.get(
            "/storms/{storm}",
            summary="One storm",
            response_model=StormInfo,
            operation_id=f"{self.operation_prefix}getStorm",
        )
        def get_storm(
            request: Request, storm: Annotated[Storm, Depends(self.path_dependency)]
        ) -> StormInfo:
            """Bounds, zooms, scene counts and links of one storm."""
            return self.info(request, storm)

    def summary(self) -> None:
        """Register the storm summary route."""

        @self.router.get(
            "/storms/{storm}/summary",
            summary="What the cache knows about a storm",
            response_model=StormSummary,
            operation_id=f"{self.operation_prefix}getStormSummary",
        )
        async def storm_summary(
            storm: Annotated[Storm, Depends(self.path_dependency)],
        ) -> StormSummary:
            """Counts of analysis tiles (under the scenes, cached, with imagery, labelled, with
            true values), the histogram of the predicted mIoU and, where true values are cached,
            the regressor's MAE and Pearson r against them on this storm. Read from the cache
            alone: ``iou-maps precompute`` (``--source true``) makes it complete."""
            got = await to_thread.run_sync(self.engine.summary, storm.name)
            edges = got.histogram_edges
            return StormSummary(
                storm=got.storm,
                model_id=got.model_id,
                segmentation_id=got.segmentation_id,
                analysis_zoom=got.analysis_zoom,
                tiles=TileCounts(
                    analysis_tiles=got.analysis_tiles,
                    cached=got.cached,
                    with_imagery=got.with_imagery,
                    labelled=got.labelled,
                    true_cached=got.true_cached,
                    evaluated=got.evaluated,
                    compared=got.compared,
                ),  # fmt: skip
                miou_histogram=[
                    HistogramBin(min=lo, max=hi, count=n)
                    for lo, hi, n in zip(edges[:-1], edges[1:], got.histogram_counts, strict=True)
                ],
                accuracy=None
                if got.accuracy is None
                else {
                    m: MetricAccuracy(n=a.n, mae=a.mae, pearson_r=a.pearson_r)
                    for m, a in got.accuracy.items()
                },
            )

    def point(self) -> None:
        """Register the metric point lookup route."""

        @self.router.get(
            "/storms/{storm}/point/{lon},{lat}",
            summary="Metrics at a coordinate",
            response_model=PointMetrics,
            operation_id=f"{self.operation_prefix}getPointMetrics",
        )
        async def point_metrics(
            storm: Annotated[Storm, Depends(self.path_dependency)],
            lon: Longitude,
            lat: Latitude,
            source: Annotated[Source, Depends(SourceParams)],
        ) -> Response | PointMetrics:
            """The metric vectors of the analysis tile at ``lon,lat``: predicted, and true
            beside them where the tile is labelled (each computed when not cached); ``metrics``
            are those of ``source``. 404 outside the storm's imagery, for true/error values of
            a storm without labels or where the tile has no true value; 503 with Retry-After
            while the model is busy."""
            engine = self.engine
            engine.check_source(storm.name, source)  # NoLabels: 404
            got = await to_thread.run_sync(engine.point_values, storm.name, lon, lat, 0)
            if got.predicted is None or got.missing:  # not cached: computed through the queue
                try:
                    got = await self.queue.run(
                        max(1, got.missing), engine.point_values, storm.name, lon, lat, 1
                    )
                except Busy as busy:
                    return JSONResponse(
                        {"detail": str(busy)},
                        status_code=503,
                        headers={"Retry-After": str(busy.retry_after)},
                    )
            assert got.predicted is not None and got.predicted.values is not None
            predicted = metric_values(got.predicted.values)
            true = error = None
            if got.true is not None:
                true = metric_values(got.true.values)
                error = metric_values(difference(got.predicted, got.true).values)
            chosen = {Source.predicted: predicted, Source.true: true, Source.error: error}[source]
            if chosen is None:
                raise HTTPException(
                    status_code=404,
                    detail=f"no {source.value} metrics of storm {storm.name!r} at ({lon}, {lat}): "
                    "no labelled imagery there (or too few labelled pixels)",
                )
            tile = got.tile
            b = mercantile.bounds(tile)
            return PointMetrics(
                storm=storm.name,
                coordinates=(lon, lat),
                tile=AnalysisTile(
                    z=tile.z, x=tile.x, y=tile.y, bounds=(b.west, b.south, b.east, b.north)
                ),
                source=source,
                metrics=chosen,
                predicted=predicted,
                true=true,
                error=error,
                labelled=true is not None,
                model_id=engine.model_id,
                segmentation_id=engine.sources.ids.get(SEGMENTATION),
                from_cache=got.cached,
            )


@define(kw_only=True)
class HealthFactory(BaseFactory):
    """``/healthz``: always 200; ``degraded`` while Redis is unreachable."""

    engine: MetricEngine
    queue: ComputeQueue = field(factory=lambda: ComputeQueue(256))

    def register_routes(self) -> None:
        """The health route."""

        @self.router.get(
            "/healthz",
            summary="Service health",
            response_model=Health,
            operation_id=f"{self.operation_prefix}getHealth",
        )
        def healthz() -> Health:
            """Redis reachability, the model id and the model-call counters (this process's,
            and every process's from Redis)."""
            cache = self.engine.cache
            redis_ok = cache is not None and cache.ping()
            totals = cache.counters() if cache is not None and redis_ok else None
            return Health(
                status="ok" if redis_ok else "degraded",
                redis=redis_ok,
                model_id=self.engine.model_id,
                model_calls=self.engine.model_calls,
                tiles_computed=self.engine.tiles_computed,
                model_calls_all=totals["model_calls"] if totals else None,
                tiles_computed_all=totals["tiles_computed"] if totals else None,
                compute_queued=self.queue.queued,
            )
