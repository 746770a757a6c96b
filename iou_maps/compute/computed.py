"""What computing values of analysis tiles means, for every computer (the regressor's in
``computers``, the segmentation model's in ``truth``): the ``Computer`` and ``Predictor``
interfaces, the ``Computed`` result, and ``compute_reads`` (read chips → batched model calls).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from mercantile import Tile

from iou_maps.compute.metric_store import NO_IMAGERY, Entry, stored
from iou_maps.errors import ImageryReadError
from iou_maps.models.classes import ClassSet
from iou_maps.storms.chips import ChipRead


class Predictor(Protocol):
    """What computing needs of a metric regressor."""

    @property
    def model_id(self) -> str:
        """The regressor's model id."""
        ...

    @property
    def classes(self) -> ClassSet:
        """The class set its metric vectors are about."""
        ...

    def predict(self, chips: np.ndarray) -> np.ndarray:
        """(N, 256, 256, 3) uint8 → (N, C + 2) float32."""
        ...


@dataclass
class Computed:
    """Entries computed for tiles, the tiles whose imagery could not be read, and the cost."""

    entries: dict[Tile, Entry] = field(default_factory=dict)
    failed: dict[Tile, ImageryReadError] = field(default_factory=dict)
    model_calls: int = 0

    @property
    def tiles_inferred(self) -> int:
        """Tiles the model ran on (those with imagery)."""
        return sum(1 for e in self.entries.values() if e.has_imagery)


def compute_reads(
    reads: Iterable[ChipRead], infer: Callable[[list[ChipRead]], np.ndarray], max_batch: int
) -> Computed:
    """Entries of read tiles: failures and "no imagery" as they are, the rest from ``infer``
    in batches of ``max_batch`` (one model call each)."""
    out = Computed()
    todo: list[ChipRead] = []
    for read in reads:
        if read.error is not None:
            out.failed[read.tile] = read.error
        elif read.chip is None:
            out.entries[read.tile] = NO_IMAGERY
        else:
            todo.append(read)
    for start in range(0, len(todo), max_batch):
        part = todo[start : start + max_batch]
        values = infer(part)
        out.model_calls += 1
        for read, v in zip(part, values, strict=True):
            # Served as stored: the tile's bytes do not change once it is cached.
            out.entries[read.tile] = Entry(stored(v), 1)
    return out


class Computer(Protocol):
    """Computes entries of analysis tiles of a storm (no cache read or write)."""

    @property
    def model_id(self) -> str:
        """The id of the model behind the values (part of their cache keys)."""
        ...

    @property
    def classes(self) -> ClassSet:
        """The class set of the model behind the values (their metrics)."""
        ...

    def compute(self, storm_name: str, tiles: list[Tile]) -> Computed:
        """Read and infer ``tiles``; failures are returned, not raised."""
        ...

    def close(self) -> None:
        """Release what the computer holds (threads, processes, files)."""
        ...
