"""The IoU Maps FastAPI application, assembled from titiler factories and our own.

Routes::

    /                                    viewer (Leaflet, served from /static)
    /healthz                             Redis / model status
    /storms, /storms/{storm}             catalog
    /storms/{storm}/point/{lon},{lat}    metric vectors at a coordinate (predicted, true)
    /storms/{storm}/summary              cached tiles, mIoU histogram, regressor vs truth
    /storms/{storm}/imagery/...          titiler.mosaic: tiles, TileJSON, WMTS, point, info
    /storms/{storm}/metrics/{metric}/... metric tiles, TileJSON (+ legend), WMTS (?source=)
    /tileMatrixSets, /colorMaps          titiler's TMS and colormap endpoints
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from titiler.core.factory import ColorMapFactory, TMSFactory

from iou_maps.compute.engine import MetricEngine, open_engine
from iou_maps.compute.metric_store import release
from iou_maps.compute.tile_cache import TileCache, connect_tile_cache
from iou_maps.config import Settings
from iou_maps.layers.registry import Source
from iou_maps.models import runtime
from iou_maps.storms.mosaic import StormBackend
from iou_maps.storms.scenes import SceneReader
from service import openapi
from service.admission import ComputeQueue
from service.errors import add_exception_handlers
from service.factories.health import HealthFactory
from service.factories.imagery import StormMosaicFactory
from service.factories.metric_layers import MetricLayerFactory
from service.factories.metric_tiles import METRIC_HEADERS, METRIC_TILE_PATH, MetricTileFactory
from service.factories.points import PointFactory
from service.factories.storms import StormsFactory
from service.fast_tiles import Epoch, FastTiles, TileByteCache
from service.http_cache import TILE_CACHE_HEADER, HttpCaching
from service.params.colormaps import LegendSizeParams, cached_cmap
from service.params.location import storm_dependency
from service.params.metric import budget_dependency
from service.params.tiles import SUPPORTED_TMS

HERE = Path(__file__).parent
templates = Jinja2Templates(
    env=jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
)


def create_engine(settings: Settings) -> MetricEngine:
    """The metric engine of the configured model, catalog and Redis (the model decides the
    analysis zoom: it was trained on chips of that zoom). The model runs in
    ``settings.inference_processes`` worker processes (0: in this one)."""
    return open_engine(
        settings.model_copy(update={"data_dir": settings.data_dir.resolve()}),
        processes=settings.inference_processes,
    )


def create_app(
    settings: Settings, engine: MetricEngine | None = None, tile_cache: TileCache | None = None
) -> FastAPI:
    """The application for ``settings`` (``engine``, ``tile_cache``: already built ones, e.g.
    in tests; without ``engine``, the tile cache comes from the settings too)."""
    if engine is None:
        engine = create_engine(settings)
        tile_cache = connect_tile_cache(
            settings.model_copy(update={"data_dir": engine.catalog.data_dir})
        )
    data_dir = engine.catalog.data_dir.resolve()
    epoch = Epoch(engine.client)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        epoch.close()  # its connections first, or an embedded Redis outlives the service
        engine.close()
        if tile_cache is not None:
            release(tile_cache.client)

    app = FastAPI(
        title="IoU Maps",
        description=(
            "Where a segmentation model of post-hurricane aerial imagery can be trusted: "
            "imagery and predicted IoU/Dice tiles, point lookups, TileJSON and WMTS."
        ),
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.settings = settings

    storm_path = storm_dependency(engine)
    budget = budget_dependency(settings.compute_budget)
    # One compute queue for every route that may run the model (see service/admission.py).
    queue = ComputeQueue(settings.compute_queue)
    # Cache-Control, ETags and 304s of tiles, TileJSON and WMTS; the imagery tile cache.
    caching = HttpCaching(
        engine=engine,
        max_age=settings.http_max_age,
        metadata_max_age=settings.http_metadata_max_age,
        immutable=settings.http_immutable,
        tile_cache=tile_cache,
        cache_below=settings.tile_cache_below,
    )
    app.state.caching = caching

    imagery = StormMosaicFactory(
        router=APIRouter(route_class=caching.route_class(model=False)),
        # The engine's open scenes: imagery and metric reads share one pool of handles.
        backend=functools.partial(StormBackend, scenes=engine.scenes),  # type: ignore[arg-type]
        dataset_reader=SceneReader,
        path_dependency=storm_path,
        router_prefix="/storms/{storm}/imagery",
    )
    # One router for the metric layers: their TileJSON and WMTS link to the tile route.
    metric_router = APIRouter(route_class=caching.route_class(model=True, skip=(METRIC_TILE_PATH,)))
    MetricTileFactory(
        router=metric_router,
        validator_dependency=caching.metric_validator(),
        engine=engine,
        path_dependency=storm_path,
        budget_dependency=budget,
        queue=queue,
        router_prefix="/storms/{storm}/metrics",
    )
    MetricLayerFactory(
        router=metric_router,
        engine=engine,
        path_dependency=storm_path,
        budget_dependency=budget,
        router_prefix="/storms/{storm}/metrics",
    )
    storms = StormsFactory(engine=engine, path_dependency=storm_path)
    points = PointFactory(engine=engine, path_dependency=storm_path, queue=queue)
    health = HealthFactory(engine=engine, queue=queue)

    app.include_router(health.router, tags=["Service"])
    app.include_router(storms.router, tags=["Storms"])
    app.include_router(points.router, tags=["Storms"])
    app.include_router(imagery.router, prefix="/storms/{storm}/imagery", tags=["Imagery"])
    app.include_router(metric_router, prefix="/storms/{storm}/metrics", tags=["Metrics"])
    app.include_router(TMSFactory(supported_tms=SUPPORTED_TMS).router, tags=["Tiling Schemes"])
    colormaps = ColorMapFactory(
        supported_colormaps=cached_cmap,
        route_dependencies=[
            ([{"path": "/colorMaps/viridis", "method": "GET"}], [Depends(LegendSizeParams)])
        ],
    )
    app.include_router(colormaps.router, tags=["ColorMaps"])

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def viewer(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            "index.html",
            {
                "metrics": engine.classes.metrics,
                "sources": [s.value for s in Source],
                "colormaps": sorted(cached_cmap.list()),
            },
        )

    add_exception_handlers(app, data_dir)
    openapi.install(app)
    # Kept complete metric tiles answered before routing (inside CORS: same CORS headers).
    app.add_middleware(FastTiles, caching=caching, cache=TileByteCache(tile_cache), epoch=epoch)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET"],
        allow_headers=["*"],
        expose_headers=[*METRIC_HEADERS, "Retry-After", "ETag", TILE_CACHE_HEADER],
    )
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``: settings from the environment (IOU_MAPS_*).

    A server process only infers: TensorFlow gets the inference settings (oneDNN on, one
    core per op) unless the user set them or it was imported before (iou_maps.models.runtime)."""
    runtime.inference_process()
    return create_app(Settings())
