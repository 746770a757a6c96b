"""The one interface of an export format: what every format module implements, and all the
CLI, the library and the STAC catalogue know of a format."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from iou_maps.compute.engine import MetricEngine
from iou_maps.exports.maps import Map
from iou_maps.exports.options import ExportOptions, Progress
from iou_maps.exports.summary import ExportSummary

__all__ = ["ExportFormat"]


class ExportFormat(ABC):
    """A file format a storm's layer can be exported to (registered in ``formats.FORMATS``).

    ``holds`` says what the file is to a catalogue: ``tiles`` (an archive of the service's
    rendered tiles) or ``values`` (a raster of the metric values, read with rasterio).
    """

    name: ClassVar[str]  # the CLI's --format and ExportSummary.format
    suffixes: ClassVar[tuple[str, ...]]  # the usual one first
    media_type: ClassVar[str]
    title: ClassVar[str]  # e.g. "PMTiles", as a catalogue names the file's kind
    holds: ClassVar[str]  # tiles | values

    @property
    def suffix(self) -> str:
        """The usual file suffix, e.g. ``.pmtiles``."""
        return self.suffixes[0]

    @abstractmethod
    def check(self, layer: Map, options: ExportOptions) -> None:
        """Raise the ExportError ``write`` would for ``layer`` and ``options`` (a layer the
        format cannot hold, an option out of range), before any engine or file is opened."""

    @abstractmethod
    def write(
        self,
        engine: MetricEngine,
        layer: Map,
        out: Path,
        options: ExportOptions,
        *,
        fill_progress: Progress | None = None,
        progress: Progress | None = None,
    ) -> ExportSummary:
        """Write ``layer`` to ``out`` (replaced whole, only once complete), filling the cache
        first where the layer's values are missing; ``fill_progress`` reports the filling,
        ``progress`` the writing."""

    @abstractmethod
    def read_metadata(self, path: Path) -> dict[str, Any]:
        """The metadata an export of this format at ``path`` holds (the archive's metadata
        JSON; a raster's tags, under the archives' keys). Any exception if it is not one."""
