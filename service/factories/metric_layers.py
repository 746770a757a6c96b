"""Descriptions of a metric layer of a storm: TileJSON (with a legend) and WMTS capabilities,
linking to the metric tile route (service/factories/metric_tiles.py)."""

from typing import Annotated
from urllib.parse import urlencode

from attrs import define, field
from fastapi import Depends, Query
from rio_tiler.types import ColorMapType
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates
from titiler.core.dependencies import DefaultDependency
from titiler.core.resources.enums import ImageType
from titiler.core.resources.responses import XMLResponse
from titiler.core.utils import tms_limits
from titiler.mosaic.extensions.wmts import DEFAULT_TEMPLATES as WMTS_TEMPLATES

from iou_maps.layers.registry import Source
from iou_maps.layers.render import MetricFormat, default_colormap, legend_stops
from iou_maps.storms.catalog import Storm
from service.factories.metric_base import MetricFactory, zoom_range
from service.factories.metric_tiles import METRIC_TILE_ROUTE
from service.models import LegendStop, MetricTileJSON
from service.params.tiles import TMSId
from service.sources import source_colormap, source_rescale, source_suffix, source_title


def layer_query(request: Request) -> str:
    """The request's query string for the tile URLs of a layer description (TileJSON, WMTS):
    every parameter but ``tile_format``, which picks the URLs' format instead."""
    return urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "tile_format"])


def layer_name(storm: Storm, metric: str, source: Source) -> str:
    """The name of a metric layer (the predicted one keeps its plain name)."""
    return f"{storm.name} {metric}{source_suffix(source, ' ')}"


@define(kw_only=True)
class MetricLayerFactory(MetricFactory):
    """TileJSON and WMTS of the metric layers of a storm. Their tile URLs name the metric tile
    route: give this factory the router of the ``MetricTileFactory``, already registered."""

    wmts_templates: Jinja2Templates = field(default=WMTS_TEMPLATES)

    def register_routes(self) -> None:
        """The metric TileJSON and WMTS routes."""
        self.tilejson()
        self.wmts()

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
                METRIC_TILE_ROUTE,
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
            vmin, vmax = source_rescale(render_params, source)
            name = request.query_params.get("colormap_name")
            if colormap is None and not request.query_params.get("colormap"):
                name = default_colormap(source)
            return MetricTileJSON(
                name=layer_name(storm, metric, source),
                description=f"{source_title(source)} {metric} of storm {storm.name!r} "
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
                    for stop in legend_stops(source_colormap(colormap, source), vmin, vmax)
                ],
                model_id=engine.sources.source_id(source),
                metrics=list(engine.classes.metrics),
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
                    METRIC_TILE_ROUTE,
                    metric=metric,
                    tileMatrixSetId=tms_id,
                    z="{TileMatrix}",
                    x="{TileCol}",
                    y="{TileRow}",
                    format=tile_format.value,
                )
                ident = f"{storm.name}_{metric}{source_suffix(source, '_')}_{tms_id}"
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
