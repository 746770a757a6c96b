"""What the web layer does differently per metric source (predicted, true, error).

Every switch of the service on ``Source`` is one function here, so that layer objects can
replace them together: the scenes under a layer, its name and title, its default colours,
the sources a storm offers and the values of each at a point.
"""

import math
from typing import Any

from rio_tiler.types import ColorMapType
from titiler.core.dependencies import DefaultDependency

from iou_maps.layers.render import default_colormap, default_rescale
from iou_maps.layers.sources import difference
from iou_maps.layers.tile_values import PointValues
from iou_maps.models.classes import METRICS, Source
from iou_maps.storms.catalog import Storm
from iou_maps.storms.mosaic import LoadedStorm, StormBackend
from service.params.colormaps import cached_cmap

#: What a metric layer of each source shows, for TileJSON descriptions.
SOURCE_TITLES = {
    Source.predicted: "Predicted",
    Source.true: "True",
    Source.error: "Error (predicted − true; mean absolute error at lower zooms) of the",
}

#: A metric vector as JSON (null where undefined).
MetricValues = dict[str, float | None]


def source_scenes(loaded: LoadedStorm, source: Source) -> StormBackend | None:
    """The scenes under a layer of ``source``: the imagery for predicted values, the labelled
    scenes for true and error values (None: the storm has no labels)."""
    return loaded.backend if source is Source.predicted else loaded.labels


def source_suffix(source: Source, sep: str) -> str:
    """What names of a layer of ``source`` add to the metric's (the predicted one keeps its
    plain name)."""
    return "" if source is Source.predicted else f"{sep}{source.value}"


def source_title(source: Source) -> str:
    """What a layer of ``source`` shows, to precede the metric's name in a description."""
    return SOURCE_TITLES[source]


def storm_sources(storm: Storm) -> list[Source]:
    """The sources a storm offers: true and error values only where it has labels."""
    return list(Source) if storm.has_labels else [Source.predicted]


def source_colormap(colormap: ColorMapType | None, source: Source) -> ColorMapType:
    """The colormap asked for, else the default one of ``source``."""
    return colormap if colormap is not None else cached_cmap.get(default_colormap(source))


def source_rescale(
    render_params: DefaultDependency, source: Source = Source.predicted
) -> tuple[float, float]:
    """The value range asked for (``rescale``), else the default one of ``source``."""
    rescale = getattr(render_params, "rescale", None)
    if rescale:
        lo, hi = rescale[0]
        return float(lo), float(hi)
    return default_rescale(source)


def metric_values(values: Any) -> MetricValues:
    """A metric vector as JSON: null where undefined (NaN)."""
    return {
        m: (None if math.isnan(float(v)) else float(v))
        for m, v in zip(METRICS, values, strict=True)
    }


def point_sources(got: PointValues) -> dict[Source, MetricValues | None]:
    """The metric vector of each source at a point (None: no true value there, hence no error
    either). ``got`` must hold its predicted values."""
    assert got.predicted is not None and got.predicted.values is not None
    predicted = metric_values(got.predicted.values)
    if got.true is None:
        return {Source.predicted: predicted, Source.true: None, Source.error: None}
    return {
        Source.predicted: predicted,
        Source.true: metric_values(got.true.values),
        Source.error: metric_values(difference(got.predicted, got.true).values),
    }
