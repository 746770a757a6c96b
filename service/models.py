"""Response models of the IoU Maps API (OpenAPI documents them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from titiler.core.models.mapbox import TileJSON

from iou_maps.classes import METRICS


class Link(BaseModel):
    href: str
    rel: str
    title: str | None = None


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
    scenes: int = Field(description="Number of scenes.")
    labelled_scenes: int = Field(description="Scenes that have a label raster.")
    metrics: list[str] = Field(default=list(METRICS), description="Metric layers.")
    links: list[Link] = Field(default_factory=list)


class StormList(BaseModel):
    storms: list[StormInfo]


class AnalysisTile(BaseModel):
    z: int
    x: int
    y: int
    bounds: tuple[float, float, float, float] = Field(
        description="West, south, east, north (EPSG:4326)."
    )


class PointMetrics(BaseModel):
    """The metric vector of the analysis tile under a coordinate."""

    storm: str
    coordinates: tuple[float, float] = Field(description="Longitude, latitude asked for.")
    tile: AnalysisTile
    metrics: dict[str, float | None] = Field(
        description="Every metric (null where undefined, e.g. a class absent from the tile).",
        examples=[{m: 0.5 for m in METRICS}],
    )
    model_id: str
    from_cache: bool = Field(description="True when the value came from Redis, not the model.")


class Health(BaseModel):
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
    value: float
    color: str = Field(description="#rrggbb")


class MetricTileJSON(TileJSON):
    """TileJSON of a metric layer, with the colour stops of its legend."""

    metric: str
    colormap_name: str | None = None
    rescale: tuple[float, float] = (0.0, 1.0)
    legend_stops: list[LegendStop] = Field(default_factory=list)
    model_id: str


class ErrorDetail(BaseModel):
    detail: str
