"""The plain data objects the metric engine answers with (as rio-tiler's ``ImageData``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from mercantile import Tile

from iou_maps.compute.metric_store import Entry
from iou_maps.layers.registry import Source


@dataclass
class Values:
    """Entries for a set of tiles, with where they came from."""

    entries: dict[Tile, Entry] = field(default_factory=dict)
    cached: int = 0
    computed: int = 0
    missing: list[Tile] = field(default_factory=list)  # over the budget: not computed
    cache_ok: bool = True


@dataclass
class TileGrid:
    """Values of a metric tile as a grid of cells (n × n × 6), NaN where nothing is known."""

    tile: Tile
    level: int
    values: np.ndarray  # (n, n, 6) float32
    has_imagery: np.ndarray  # (n, n) bool
    missing: int
    cached: int
    computed: int
    cache_ok: bool
    source: Source = Source.predicted


@dataclass
class PointValues:
    """The analysis tile at a coordinate, its predicted and (where labelled) true values."""

    tile: Tile
    predicted: Entry | None  # None: not cached, and no budget to compute it
    true: Entry | None  # None: no true value (no label there), or not computed yet
    labelled: bool  # the tile lies under a labelled scene (true values may exist there)
    cached: bool  # every value came from the cache
    missing: int  # values left to compute (over the budget)
