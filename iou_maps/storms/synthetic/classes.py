"""The class sets a synthetic storm can be labelled with: the ground's covers mapped to them.

The ground (``world``) knows five covers; a class set merges some of them:

- ``demo``: water, sand, vegetation, development (houses are development): the demo's four;
- ``water``: water and not_water, a 2-class water mask (every land cover merged);
- ``buildings``: water, sand, vegetation, paved, building (development split: houses apart),
  a 5-class set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iou_maps.errors import SyntheticStormError
from iou_maps.models.classes import DEMO_CLASSES, NODATA_LABEL, ClassSet
from iou_maps.storms.synthetic.noise import Array
from iou_maps.storms.synthetic.world import BUILDING, DEVELOPMENT, SAND, VEGETATION, WATER


@dataclass(frozen=True)
class SyntheticClasses:
    """A class set and, for each cover of the ground, its class id in that set."""

    classes: ClassSet
    of_cover: dict[int, int]

    def relabel(self, covers: Array) -> Array:
        """Class ids of a label raster of covers (``NODATA_LABEL`` stays)."""
        lut = np.full(256, NODATA_LABEL, np.uint8)
        for cover, class_id in self.of_cover.items():
            lut[cover] = class_id
        return lut[np.asarray(covers, np.uint8)]


SYNTHETIC_CLASSES: dict[str, SyntheticClasses] = {
    "demo": SyntheticClasses(
        DEMO_CLASSES,
        {WATER: 0, SAND: 1, VEGETATION: 2, DEVELOPMENT: 3, BUILDING: 3},
    ),
    "water": SyntheticClasses(
        ClassSet(("water", "not_water")),
        {WATER: 0, SAND: 1, VEGETATION: 1, DEVELOPMENT: 1, BUILDING: 1},
    ),
    "buildings": SyntheticClasses(
        ClassSet(("water", "sand", "vegetation", "paved", "building")),
        {WATER: 0, SAND: 1, VEGETATION: 2, DEVELOPMENT: 3, BUILDING: 4},
    ),
}


def synthetic_classes(name: str) -> SyntheticClasses:
    """The synthetic class set ``name``; SyntheticStormError naming the valid ones otherwise."""
    try:
        return SYNTHETIC_CLASSES[name]
    except KeyError:
        raise SyntheticStormError(
            f"unknown synthetic class set {name!r}; valid: {', '.join(SYNTHETIC_CLASSES)}"
        ) from None
