"""The storm catalog: the storm list, one storm's description and links, and its summary."""

from collections.abc import Awaitable, Callable
from typing import Annotated

from anyio import to_thread
from attrs import define
from fastapi import Depends
from starlette.requests import Request
from titiler.core.factory import BaseFactory

from iou_maps.compute.engine import GRID_LEVELS, MetricEngine
from iou_maps.storms.catalog import Storm
from service.models import (
    ClassInfo,
    HistogramBin,
    Link,
    MetricAccuracy,
    StormInfo,
    StormList,
    StormSummary,
    TileCounts,
)
from service.sources import storm_sources


@define(kw_only=True)
class StormsFactory(BaseFactory):
    """The storm list, storm detail and storm summary routes."""

    engine: MetricEngine
    path_dependency: Callable[..., Storm | Awaitable[Storm]]

    def register_routes(self) -> None:
        """The storm list, storm detail and summary routes."""
        self.list_storms()
        self.storm_detail()
        self.summary()

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
            metrics=list(self.engine.classes.metrics),
            classes=[
                ClassInfo(name=n, color=c) for n, c in self.engine.classes.hex_colors().items()
            ],
            model_id=self.engine.model_id,
            sources=storm_sources(storm),
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
