"""How an export is asked for: the options every format reads what applies to it from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ExportOptions", "Progress"]

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class ExportOptions:
    """Options of an export; a format ignores those that do not apply to it (a COG has no
    tile encoding or zoom range, an archive no pixels per tile)."""

    tile_format: str | None = None  # None: the layer's default (metric png, imagery webp)
    minzoom: int | None = None  # None: the service's for the storm
    maxzoom: int | None = None
    attribution: str | None = None  # None: IoU Maps (and the model, for metric layers)
    pixels_per_tile: int = 1  # COG: pixels across each analysis tile
