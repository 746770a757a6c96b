"""Class and metric names, in the fixed order every module, table and API uses."""

from __future__ import annotations

from typing import Final

from iou_maps.errors import UnknownMetric

#: Segmentation classes; the index is the class id written in label rasters.
CLASSES: Final[tuple[str, ...]] = ("water", "sand", "vegetation", "development")
NCLASSES: Final[int] = len(CLASSES)
WATER, SAND, VEGETATION, DEVELOPMENT = range(NCLASSES)

#: Label value for pixels without a label (outside the scene, unlabelled).
NODATA_LABEL: Final[int] = 255

#: Metric vector, float32, in this order.
METRICS: Final[tuple[str, ...]] = (
    "iou_water",
    "iou_sand",
    "iou_vegetation",
    "iou_development",
    "miou",
    "dice",
)
NMETRICS: Final[int] = len(METRICS)

#: Display colours of the classes (RGB), used by figures and the viewer legend.
CLASS_COLORS: Final[dict[str, tuple[int, int, int]]] = {
    "water": (31, 120, 180),
    "sand": (240, 220, 150),
    "vegetation": (51, 160, 44),
    "development": (190, 80, 80),
}


def metric_index(name: str) -> int:
    """Position of a metric in the vector; UnknownMetric naming the valid ones otherwise."""
    try:
        return METRICS.index(name)
    except ValueError:
        raise UnknownMetric(f"unknown metric {name!r}; valid: {', '.join(METRICS)}") from None
