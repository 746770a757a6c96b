"""Response models of the IoU Maps API (OpenAPI documents them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from titiler.core.models.mapbox import TileJSON

from iou_maps.layers.registry import Source


class Link(BaseModel):
    """A link to a related resource."""

    href: str
    rel: str
    title: str | None = None


class ClassInfo(BaseModel):
    """A class of the model: its name (``iou_<name>`` is its IoU layer) and display colour."""

    name: str
    color: str = Field(description="#rrggbb")


class StormInfo(BaseModel):
    """One ingested storm."""

    name: str = Field(description="Storm name (also its URL path segment).")
    bounds: tuple[float, float, float, float] = Field(
        description="West, south, east, north (EPSG:4326)."
    )
    center: tuple[float, float] = Field(description="Longitude, latitude of the bounds' centre.")
    minzoom: int = Field(description="Lowest zoom served for this storm.")
    maxzoom: int = Field(description="Zoom whose pixels first get finer than the imagery.")
    analysis_zoom: int = Field(description="Zoom of the analysis tiles the metrics are for.")
    on_demand_minzoom: int = Field(
        description="Lowest zoom whose metric tiles compute missing values on request; farther "
        "out they are drawn from what precompute aggregated."
    )
    scenes: int = Field(description="Number of scenes.")
    labelled_scenes: int = Field(description="Scenes that have a label raster.")
    metrics: list[str] = Field(
        description="Metric layers: those of the model's classes (iou_<class>, miou, dice)."
    )
    classes: list[ClassInfo] = Field(
        default_factory=list, description="The model's classes, in class-id order (legend)."
    )
    model_id: str = Field(default="", description="The regressor's model id.")
    sources: list[Source] = Field(
        default=[Source.predicted],
        description="Sources of the metric layers (true and error where the storm has labels).",
    )
    links: list[Link] = Field(default_factory=list)


class StormList(BaseModel):
    """Every ingested storm."""

    storms: list[StormInfo]


class AnalysisTile(BaseModel):
    """An analysis tile: its address and bounds."""

    z: int
    x: int
    y: int
    bounds: tuple[float, float, float, float] = Field(
        description="West, south, east, north (EPSG:4326)."
    )


MetricValues = dict[str, float | None]


class PointMetrics(BaseModel):
    """The metric vectors of the analysis tile under a coordinate: predicted, and true beside
    them where the tile is labelled."""

    storm: str
    coordinates: tuple[float, float] = Field(description="Longitude, latitude asked for.")
    tile: AnalysisTile
    source: Source = Field(description="The source of ``metrics``.")
    metrics: MetricValues = Field(
        description="Every metric of ``source`` (what its tiles show here): null where "
        "undefined, e.g. a class absent from the tile (absent from label and prediction).",
        examples=[{"iou_water": 0.5, "iou_sand": None, "miou": 0.5, "dice": 0.6}],
    )
    predicted: MetricValues = Field(description="The regressor's metrics (null: class absent).")
    true: MetricValues | None = Field(
        default=None,
        description="The true metrics (null: no label here, too few labelled pixels, or no "
        "segmentation model).",
    )
    error: MetricValues | None = Field(
        default=None, description="predicted − true where both exist."
    )
    labelled: bool = Field(description="Whether the tile has a true value.")
    layers: dict[Source, MetricValues | None] = Field(
        default_factory=dict,
        description="Every layer's metrics here, by source (null: the layer has none here).",
    )
    model_id: str = Field(description="The regressor's model id.")
    segmentation_id: str | None = Field(
        default=None, description="The id of the segmentation model of the true values."
    )
    from_cache: bool = Field(description="True when every value came from Redis, not a model.")


class TileCounts(BaseModel):
    """Analysis tiles of a storm, as far as the cache knows them."""

    analysis_tiles: int = Field(description="Under the storm's scenes.")
    cached: int = Field(description="With a predicted value (or 'no imagery') in the cache.")
    with_imagery: int = Field(description="Cached with a predicted value.")
    labelled: int = Field(description="Under labelled scenes.")
    true_cached: int = Field(description="Labelled, with a true value (or 'too few labels').")
    evaluated: int = Field(description="With a true value (enough labelled pixels).")
    compared: int = Field(description="With both a predicted and a true value.")


class HistogramBin(BaseModel):
    """One bin of a histogram of predicted mIoU."""

    min: float
    max: float
    count: int


class MetricAccuracy(BaseModel):
    """The regressor against the true values of one metric, on the storm's compared tiles."""

    n: int = Field(description="Tiles where both values are defined.")
    mae: float | None = Field(description="Mean absolute error (null without tiles).")
    pearson_r: float | None = Field(
        description="Pearson correlation (null with fewer than 3 tiles or a constant)."
    )


class StormSummary(BaseModel):
    """What the cache knows about a storm (nothing is computed to answer)."""

    storm: str
    model_id: str
    segmentation_id: str | None = None
    analysis_zoom: int
    tiles: TileCounts
    miou_histogram: list[HistogramBin] = Field(
        description="Predicted mIoU of the cached tiles with imagery, in equal bins over 0..1."
    )
    accuracy: dict[str, MetricAccuracy] | None = Field(
        default=None,
        description="Per metric, the regressor against the true values (null: no true values "
        "cached, e.g. a storm without labels; `precompute --source true` fills them).",
    )


class Health(BaseModel):
    """The service's health: Redis, the model and its counters."""

    status: Literal["ok", "degraded"] = Field(description="degraded: Redis is unreachable.")
    redis: bool = Field(description="Redis answered a PING.")
    model_id: str
    model_calls: int = Field(description="Regressor calls of this process since it started.")
    tiles_computed: int = Field(
        description="Analysis tiles this process computed since it started."
    )
    model_calls_all: int | None = Field(
        default=None,
        description="Regressor calls of every process (API workers, replicas, precompute, Dask "
        "workers) for this model, counted in Redis; null while Redis is unreachable.",
    )
    tiles_computed_all: int | None = Field(
        default=None,
        description="Analysis tiles computed by every process for this model (from Redis).",
    )
    compute_queued: int = Field(
        default=0, description="Analysis tiles waiting for the model in this process now."
    )


class LegendStop(BaseModel):
    """One colour stop of a legend."""

    value: float
    color: str = Field(description="#rrggbb")


class MetricTileJSON(TileJSON):
    """TileJSON of a metric layer, with the colour stops of its legend."""

    metric: str
    source: Source = Source.predicted
    colormap_name: str | None = None
    rescale: tuple[float, float] = (0.0, 1.0)
    legend_stops: list[LegendStop] = Field(default_factory=list)
    model_id: str = Field(description="The id of the model(s) behind the values.")
    metrics: list[str] = Field(
        default_factory=list, description="Every metric layer of this model (its classes')."
    )


class ErrorDetail(BaseModel):
    """An error response."""

    detail: str
