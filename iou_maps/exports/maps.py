"""What an export holds: a metric map of a storm as the service draws it, or its imagery."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from rio_tiler.colormap import cmap as default_cmap
from rio_tiler.types import ColorMapType

from iou_maps.errors import ExportError
from iou_maps.layers.registry import Source
from iou_maps.layers.render import default_colormap, default_rescale
from iou_maps.models.classes import METRIC_NAME_RE

__all__ = ["SOURCES", "ImageryFormat", "ImageryMap", "Map", "MetricMap"]

#: Where the values of a metric layer come from: the regressor's predictions, the true
#: metrics of labelled scenes, or their difference (the engine's sources).
SOURCES = tuple(s.value for s in Source)


class ImageryFormat(StrEnum):
    """Encodings of imagery tiles in an archive (WebP: transparency at a fraction of PNG)."""

    webp = "webp"
    png = "png"
    jpeg = "jpeg"


@dataclass(frozen=True)
class MetricMap:
    """One metric map of a storm, as the service draws it: ``colormap_name`` and ``rescale``
    left out are the service's defaults for the source (``render.default_colormap``,
    ``render.default_rescale``: a diverging colormap over -0.5..0.5 for ``error``)."""

    storm: str
    metric: str = "miou"
    source: str = Source.predicted.value
    colormap_name: str = ""  # "": the source's default
    rescale: tuple[float, float] | None = None  # None: the source's default

    def __post_init__(self) -> None:
        if not METRIC_NAME_RE.fullmatch(self.metric):
            # Which metrics the model has, the engine checks (``fill_cache``).
            raise ExportError(f"unknown metric {self.metric!r}: iou_<class>, miou or dice")
        if self.source not in SOURCES:
            raise ExportError(f"unknown source {self.source!r}; valid: {', '.join(SOURCES)}")
        source = Source(self.source)
        object.__setattr__(self, "source", source.value)
        if not self.colormap_name:
            object.__setattr__(self, "colormap_name", default_colormap(source))
        if self.rescale is None:
            object.__setattr__(self, "rescale", default_rescale(source))
        if self.colormap_name not in default_cmap.list():
            raise ExportError(
                f"unknown colormap {self.colormap_name!r}; valid: "
                + ", ".join(sorted(default_cmap.list()))
            )
        lo, hi = self.value_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ExportError(f"rescale: min {lo} must be below max {hi}")

    @property
    def value_range(self) -> tuple[float, float]:
        """The values the colormap spans (``rescale``, the source's default filled in)."""
        assert self.rescale is not None  # filled in at construction
        return self.rescale

    @property
    def colormap(self) -> ColorMapType:
        """The named colormap (rio-tiler's, as the service's ``colormap_name``)."""
        return default_cmap.get(self.colormap_name)

    @property
    def title(self) -> str:
        """E.g. 'alpha miou (predicted)'."""
        return f"{self.storm} {self.metric} ({self.source})"


@dataclass(frozen=True)
class ImageryMap:
    """A storm's imagery, as the service's imagery layer renders it."""

    storm: str

    @property
    def title(self) -> str:
        """E.g. 'alpha imagery'."""
        return f"{self.storm} imagery"


#: Anything an export can hold.
Map = MetricMap | ImageryMap
