"""What the factories of the metric layers share: the dependencies that name a layer and how it
is drawn, and the zooms it has."""

from collections.abc import Awaitable, Callable

from attrs import Factory, define
from morecantile.defaults import TileMatrixSets
from rio_tiler.types import ColorMapType
from titiler.core.dependencies import DefaultDependency
from titiler.core.factory import BaseFactory

from iou_maps.compute.engine import MetricEngine
from iou_maps.layers.registry import Source
from iou_maps.storms.catalog import Storm
from iou_maps.storms.mosaic import metric_zoom_range
from service.params.colormaps import ColorMapParams
from service.params.metric import SourceParams, metric_dependency
from service.params.rendering import RenderParams
from service.params.tiles import SUPPORTED_TMS


def zoom_range(engine: MetricEngine, storm: Storm) -> tuple[int, int]:
    """Zooms of the metric layers: the storm's imagery zooms, extended to the analysis zoom."""
    return metric_zoom_range(engine.storm(storm.name).storm, engine.analysis_zoom)


@define(kw_only=True)
class MetricFactory(BaseFactory):
    """A factory of metric layer routes: a layer is a storm, a metric and a source, drawn with
    a colormap over a value range, computed within a budget."""

    # Dependencies may be plain or async functions (FastAPI awaits the latter, on the loop).
    engine: MetricEngine
    path_dependency: Callable[..., Storm | Awaitable[Storm]]
    budget_dependency: Callable[..., int | Awaitable[int]]
    #: The path's metric, one of the engine's model's (a 404 naming them otherwise).
    metric_dependency: Callable[..., str | Awaitable[str]] = Factory(
        lambda self: metric_dependency(self.engine.classes), takes_self=True
    )
    source_dependency: Callable[..., Source | Awaitable[Source]] = SourceParams
    colormap_dependency: Callable[..., Awaitable[ColorMapType | None]] = ColorMapParams
    render_dependency: Callable[..., Awaitable[DefaultDependency]] = RenderParams
    supported_tms: TileMatrixSets = SUPPORTED_TMS
