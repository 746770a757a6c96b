"""The metric point lookup: the metric vectors of the analysis tile at a coordinate."""

from collections.abc import Awaitable, Callable
from typing import Annotated

import mercantile
from anyio import to_thread
from attrs import define, field
from fastapi import Depends, HTTPException
from starlette.responses import JSONResponse, Response
from titiler.core.factory import BaseFactory

from iou_maps.compute.engine import MetricEngine
from iou_maps.layers.base import SEGMENTATION
from iou_maps.layers.registry import Source
from iou_maps.storms.catalog import Storm
from service.admission import Busy, ComputeQueue
from service.models import AnalysisTile, PointMetrics
from service.params.location import Latitude, Longitude
from service.params.metric import SourceParams
from service.sources import point_sources


@define(kw_only=True)
class PointFactory(BaseFactory):
    """``/storms/{storm}/point/{lon},{lat}``: metrics at a coordinate, computed when not
    cached (through the compute queue)."""

    engine: MetricEngine
    path_dependency: Callable[..., Storm | Awaitable[Storm]]
    source_dependency: Callable[..., Source | Awaitable[Source]] = SourceParams
    #: On-demand computation's admission (shared with the metric tiles).
    queue: ComputeQueue = field(factory=lambda: ComputeQueue(256))

    def register_routes(self) -> None:
        """The point lookup route."""

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
            source: Annotated[Source, Depends(self.source_dependency)],
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
            values = point_sources(got, engine.classes)
            predicted, chosen = values[Source.predicted], values[source]
            assert predicted is not None  # computed above
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
                true=values[Source.true],
                error=values[Source.error],
                labelled=values[Source.true] is not None,
                layers=values,
                model_id=engine.model_id,
                segmentation_id=engine.sources.ids.get(SEGMENTATION),
                from_cache=got.cached,
            )
