"""A segmentation model's classes and the metric names that follow from them.

The class set (count, names, order, display colours) is the model's: segmentation_gym's
``config.json`` (``NCLASSES``, ``MY_CLASS_NAMES``), a ``classes.txt`` beside it, or
``class0…classN-1``. The index of a name is the class id written in label rasters; the metric
vector of a tile is ``iou_<name>`` for each class, then ``miou`` and ``dice``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from iou_maps.errors import BadClassSet, MetricNotInModel

#: Label value for pixels without a label (outside the scene, unlabelled).
NODATA_LABEL: Final[int] = 255

#: A class name: lower-case letters, digits and '_' (it is part of metric names and URLs).
CLASS_NAME_RE = re.compile(r"[a-z0-9_]+")
#: A metric name of some class set (which ones a model has: ``ClassSet.metrics``).
METRIC_NAME_RE = re.compile(r"iou_[a-z0-9_]+|miou|dice")

RGB = tuple[int, int, int]

#: Colours of well-known class names, whatever their position in a class set.
KNOWN_COLORS: Final[Mapping[str, RGB]] = {
    "water": (31, 120, 180),
    "sand": (240, 220, 150),
    "vegetation": (51, 160, 44),
    "development": (190, 80, 80),
    "not_water": (200, 190, 160),
}
#: Colours of other names, by position (ColorBrewer Set2/Dark2 hues).
PALETTE: Final[tuple[RGB, ...]] = (
    (102, 194, 165), (252, 141, 98), (141, 160, 203), (231, 138, 195), (166, 216, 84),
    (255, 217, 47), (229, 196, 148), (179, 179, 179), (27, 158, 119), (217, 95, 2),
)  # fmt: skip


def _color_of(name: str, index: int) -> RGB:
    return KNOWN_COLORS.get(name, PALETTE[index % len(PALETTE)])


@dataclass(frozen=True)
class ClassSet:
    """The classes of a segmentation model, in class-id order, with display colours."""

    names: tuple[str, ...]
    colors: tuple[RGB, ...] = field(default=())

    def __post_init__(self) -> None:
        names = tuple(self.names)
        if len(names) < 2:
            raise BadClassSet(f"a class set needs at least 2 classes, got {list(names)}")
        bad = [n for n in names if not isinstance(n, str) or not CLASS_NAME_RE.fullmatch(n)]
        if bad:
            raise BadClassSet(
                f"class names must be lower-case letters, digits and '_' (URL-safe): {bad}"
            )
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise BadClassSet(f"class names must be unique; repeated: {dupes}")
        colors = tuple(self.colors) or tuple(_color_of(n, i) for i, n in enumerate(names))
        if len(colors) != len(names):
            raise BadClassSet(f"{len(colors)} colours for {len(names)} classes")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "colors", tuple(tuple(int(v) for v in c) for c in colors))

    @classmethod
    def generic(cls, n: int) -> ClassSet:
        """``class0 … class{n-1}``: the classes of a model that does not name them."""
        if n < 2:
            raise BadClassSet(f"NCLASSES must be >= 2, got {n}")
        return cls(tuple(f"class{i}" for i in range(n)))

    @classmethod
    def parse(cls, text: str) -> ClassSet:
        """The class set of a comma-separated list (``--classes water,sand,…``)."""
        return cls(tuple(n.strip() for n in text.split(",") if n.strip()))

    @classmethod
    def of(cls, names: Iterable[str], nclasses: int, where: str) -> ClassSet:
        """The class set of ``names``, which must be ``nclasses`` long (BadClassSet naming
        ``where`` the names come from otherwise)."""
        names = tuple(names)
        if len(names) != nclasses:
            raise BadClassSet(
                f"{where} names {len(names)} classes {list(names)} but the model has "
                f"NCLASSES = {nclasses}"
            )
        return cls(names)

    @property
    def nclasses(self) -> int:
        """How many classes."""
        return len(self.names)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metric vector's names: ``iou_<class>`` for each class, ``miou``, ``dice``."""
        return (*(f"iou_{n}" for n in self.names), "miou", "dice")

    @property
    def nmetrics(self) -> int:
        """The length of a metric vector (classes + 2)."""
        return self.nclasses + 2

    def metric_index(self, name: str) -> int:
        """Position of a metric in the vector; MetricNotInModel naming the valid ones otherwise."""
        try:
            return self.metrics.index(name)
        except ValueError:
            raise MetricNotInModel(
                f"unknown metric {name!r} for this model; valid: {', '.join(self.metrics)}"
            ) from None

    def hex_colors(self) -> dict[str, str]:
        """``{name: '#rrggbb'}`` in class order (legends)."""
        return {
            n: "#{:02x}{:02x}{:02x}".format(*c)
            for n, c in zip(self.names, self.colors, strict=True)
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON form: names, metrics and colours (the API's and exports' metadata)."""
        return {"names": list(self.names), "metrics": list(self.metrics),
                "colors": self.hex_colors()}  # fmt: skip


#: The demo's four classes (water, sand, vegetation, development), as before class sets.
DEMO_CLASSES: Final[ClassSet] = ClassSet(("water", "sand", "vegetation", "development"))


def class_set_of_metadata(metadata: Mapping[str, Any]) -> ClassSet:
    """The class set a regressor's metadata records (``classes``; every regressor saved so far
    lists them, the demo's four before class sets)."""
    names = metadata.get("classes")
    if not isinstance(names, Sequence) or isinstance(names, str):
        return DEMO_CLASSES
    return ClassSet(tuple(str(n) for n in names))
