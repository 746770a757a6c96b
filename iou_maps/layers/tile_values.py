"""The plain data objects the metric engine answers with (as rio-tiler's ``ImageData``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from mercantile import Tile

from iou_maps.compute.metric_store import Entry
from iou_maps.layers.predicted import PREDICTED
from iou_maps.layers.registry import LAYERS, Source
from iou_maps.layers.true import TRUE


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
    """The analysis tile at a coordinate and the values of each computed layer there."""

    tile: Tile
    #: Computed layer name → its entry; None: no value there (not labelled, no model), or
    #: not cached and no budget to compute it (``missing`` counts those).
    entries: dict[str, Entry | None]
    labelled: bool  # the tile lies under a labelled scene (label-based values may exist)
    cached: bool  # every value came from the cache
    missing: int  # values left to compute (over the budget)

    @property
    def predicted(self) -> Entry | None:
        """The primary layer's entry (the regressor's prediction)."""
        return self.entries.get(PREDICTED.name)

    @property
    def true(self) -> Entry | None:
        """The true values' entry, None where there is none."""
        return self.entries.get(TRUE.name)

    def layers(self) -> dict[str, Entry | None]:
        """Every layer's entry: the computed ones', and each derived layer's combined from
        its inputs' where all of them have one."""
        out = dict(self.entries)
        for layer in LAYERS.values():
            if layer.derived:
                got = [out.get(name) for name in layer.inputs]
                entry = None
                if all(g is not None and g.values is not None for g in got):
                    assert layer.combine is not None
                    entry = got[0]
                    for g in got[1:]:
                        assert entry is not None and g is not None
                        entry = layer.combine(entry, g)
                out[layer.name] = entry
        return out
