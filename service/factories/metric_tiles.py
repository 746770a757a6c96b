"""Metric tiles: PNG/WebP colour-mapped, GeoTIFF/NPY raw, of one metric layer of a storm (one
source: predicted, true or error), from the cache or computed on demand within a budget."""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import mercantile
from anyio import to_thread
from attrs import define, field
from fastapi import Depends, HTTPException, Path
from mercantile import Tile
from rio_tiler.types import ColorMapType
from rio_tiler.utils import CRS_to_uri
from starlette.responses import Response
from titiler.core.dependencies import DefaultDependency

from iou_maps.layers.registry import Source
from iou_maps.layers.render import WEB_MERCATOR, MetricFormat, encode_metric_tile
from iou_maps.layers.tile_values import TileGrid
from iou_maps.storms.catalog import Storm
from service.admission import Busy, ComputeQueue
from service.factories.metric_base import MetricFactory, zoom_range
from service.http_cache import Validator, cells_digest
from service.params.tiles import TileCoordsParams, TMSId
from service.sources import source_colormap, source_rescale, source_scenes

#: Content-Crs of every metric tile (the analysis grid is Web Mercator).
WEB_MERCATOR_URI = f"<{CRS_to_uri(WEB_MERCATOR)}>"

#: Response headers of a metric tile (exposed to browsers through CORS).
MISSING, CACHED, COMPUTED, MODEL, CACHE, SOURCE = METRIC_HEADERS = (
    "X-IoU-Missing", "X-IoU-Cached", "X-IoU-Computed", "X-IoU-Model", "X-IoU-Cache",
    "X-IoU-Source",
)  # fmt: skip
#: The metric tile route (its endpoint validates itself: its ETag hashes the cells it read).
METRIC_TILE_PATH = "/{metric}/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}"

#: The name of the metric tile route (TileJSON and WMTS link to it).
METRIC_TILE_ROUTE = "metric_tile"


async def _no_validator() -> None:
    """No HTTP validation (the factory without a caching policy)."""
    return None


@define(kw_only=True)
class MetricTileFactory(MetricFactory):
    """The metric tile route of the metric layers of a storm."""

    tile_dependency: Callable[..., Tile | Awaitable[Tile]] = TileCoordsParams
    #: A tile request's ETag inputs and If-None-Match (service/http_cache.py); None: no
    #: validation, no cache headers beyond no-store on incomplete tiles.
    validator_dependency: Callable[..., Awaitable[Validator | None]] = _no_validator
    #: On-demand computation's admission (shared with the point lookup).
    queue: ComputeQueue = field(factory=lambda: ComputeQueue(256))

    def register_routes(self) -> None:
        """The metric tile route."""
        self.tile()

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
            grid.values, grid.has_imagery, tile, metric, format, cmap, rescale,
            classes=self.engine.classes,
        )  # fmt: skip
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
            name=METRIC_TILE_ROUTE,
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
            scenes = source_scenes(loaded, source)
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
            args = (storm, metric, tile, budget, format, source_colormap(colormap, source))
            rescale = source_rescale(render_params, source)
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
