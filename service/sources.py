"""What the web layer reads off a layer (``iou_maps.layers``): the scenes under it, its
names and title, its default colours, the layers a storm offers and the values of each at a
point. Nothing here switches on a layer's name.
"""

import math
from typing import Any

from rio_tiler.types import ColorMapType
from titiler.core.dependencies import DefaultDependency

from iou_maps.layers.registry import LAYERS, Source, get_layer
from iou_maps.layers.render import default_colormap, default_rescale
from iou_maps.layers.tile_values import PointValues
from iou_maps.models.classes import ClassSet
from iou_maps.storms.catalog import Storm
from iou_maps.storms.mosaic import StormBackend
from iou_maps.storms.open_storms import LoadedStorm
from service.params.colormaps import cached_cmap

#: A metric vector as JSON (null where undefined).
MetricValues = dict[str, float | None]


def source_scenes(loaded: LoadedStorm, source: Source) -> StormBackend | None:
    """The scenes under a layer of ``source``: the imagery for predicted values, the labelled
    scenes for true and error values (None: the storm has no labels)."""
    return loaded.labels if get_layer(source).needs_labels else loaded.backend


def source_suffix(source: Source, sep: str) -> str:
    """What names of a layer of ``source`` add to the metric's (the predicted one keeps its
    plain name)."""
    layer = get_layer(source)
    return "" if layer.primary else f"{sep}{layer.name}"


def source_title(source: Source) -> str:
    """What a layer of ``source`` shows, to precede the metric's name in a description."""
    return get_layer(source).title


def storm_sources(storm: Storm) -> list[Source]:
    """The layers a storm offers: those that need labels only where it has labels."""
    return [Source(n) for n, layer in LAYERS.items() if storm.has_labels or not layer.needs_labels]


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


def metric_values(values: Any, classes: ClassSet) -> MetricValues:
    """A metric vector of ``classes`` as JSON: null where undefined (NaN)."""
    return {
        m: (None if math.isnan(float(v)) else float(v))
        for m, v in zip(classes.metrics, values, strict=True)
    }


def point_sources(got: PointValues, classes: ClassSet) -> dict[Source, MetricValues | None]:
    """The metric vector of each layer at a point (None: no value there)."""
    return {
        Source(name): None
        if entry is None or entry.values is None
        else metric_values(entry.values, classes)
        for name, entry in got.layers().items()
    }
