"""What an export wrote: the record every format returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from iou_maps.compute.plan import FillSummary

__all__ = ["ExportSummary"]


@dataclass
class ExportSummary:
    """What an export wrote."""

    path: Path
    format: str
    tiles: int = 0
    bytes: int = 0
    zooms: tuple[int, int] = (0, 0)
    seconds: float = 0.0
    fill: FillSummary = field(default_factory=FillSummary)

    @property
    def tiles_per_second(self) -> float:
        """Tiles written per second of the writing stage."""
        return self.tiles / self.seconds if self.seconds > 0 else 0.0
