"""What the tile archive formats share: a layer's tiles and metadata into an archive.

A format module supplies the archive itself (``TileArchive``: tiles in, then the metadata);
the tiles, their zooms, the cache filling and the summary are the same for every archive.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import ClassVar, Protocol

from mercantile import Tile

from iou_maps.compute.engine import MetricEngine
from iou_maps.compute.plan import FillSummary
from iou_maps.errors import BadTileFormat, ExportError
from iou_maps.exports.filling import fill_cache
from iou_maps.exports.format import ExportFormat
from iou_maps.exports.maps import ImageryFormat, ImageryMap, Map, MetricMap
from iou_maps.exports.metadata import ArchiveMetadata, imagery_metadata, metric_metadata
from iou_maps.exports.options import ExportOptions, Progress
from iou_maps.exports.replace import replacing
from iou_maps.exports.summary import ExportSummary
from iou_maps.exports.tiles import count_tiles, imagery_tiles, metric_tiles, zoom_range
from iou_maps.layers.render import MetricFormat

__all__ = ["TileArchive", "TileArchiveFormat", "imagery_encoding", "metric_encoding"]

Tiles = Iterable[tuple[Tile, bytes]]


class TileArchive(Protocol):
    """A tile archive being written: tiles, then ``finish`` with the metadata."""

    def write(self, tile: Tile, data: bytes) -> None:
        """Add the bytes of tile ``tile``."""

    def finish(self, metadata: ArchiveMetadata) -> None:
        """Write ``metadata`` and whatever the format keeps after the tiles, and close."""


def metric_encoding(options: ExportOptions) -> MetricFormat:
    """The image encoding of metric tiles (default png); BadTileFormat if not an image."""
    try:
        fmt = MetricFormat(options.tile_format or "png")
    except ValueError:
        raise BadTileFormat(f"tile format {options.tile_format!r} is not png or webp") from None
    if fmt.raw:
        raise BadTileFormat(f"tile format {fmt.value}: archives hold images (png or webp)")
    return fmt


def imagery_encoding(options: ExportOptions) -> ImageryFormat:
    """The encoding of imagery tiles (default webp); BadTileFormat if not one of them."""
    try:
        return ImageryFormat(options.tile_format or "webp")
    except ValueError:
        valid = ", ".join(f.value for f in ImageryFormat)
        raise BadTileFormat(
            f"tile format {options.tile_format!r} is not one of the imagery's: {valid}"
        ) from None


class TileArchiveFormat(ExportFormat):
    """An archive of the service's tiles of a metric layer or of a storm's imagery, at every
    zoom the service serves for it (or ``minzoom``..``maxzoom``)."""

    holds: ClassVar[str] = "tiles"

    @abstractmethod
    def open_archive(self, path: Path) -> AbstractContextManager[TileArchive]:
        """A new, empty archive at ``path`` (a temporary file, moved into place after)."""

    def check(self, layer: Map, options: ExportOptions) -> None:
        """BadTileFormat if the layer's tiles cannot have ``options.tile_format``."""
        if isinstance(layer, MetricMap):
            metric_encoding(options)
        else:
            imagery_encoding(options)

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
        """Write the layer's tiles to an archive at ``out``; a metric layer's values are
        filled into the cache first (``fill_cache``)."""
        if isinstance(layer, MetricMap):
            report, metadata, tiles = self._metric(engine, layer, options, fill_progress)
        else:
            report, metadata, tiles = self._imagery(engine, layer, options)
        storm = engine.storm(layer.storm).storm
        zooms = metadata.minzoom, metadata.maxzoom
        total = count_tiles(storm, zooms)
        start = time.perf_counter()
        count = self.write_tiles(
            out, tiles, metadata, (lambda n: progress(n, total)) if progress else None
        )
        seconds = time.perf_counter() - start
        return ExportSummary(out, self.name, count, out.stat().st_size, zooms, seconds, report)

    def write_tiles(
        self,
        out: Path,
        tiles: Tiles,
        metadata: ArchiveMetadata,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Write ``tiles`` and ``metadata`` to an archive at ``out``; the tile count.
        ExportError if there is no tile (and ``out`` is left as it was)."""
        with replacing(out) as tmp, self.open_archive(tmp) as archive:
            count = 0
            for tile, data in tiles:
                archive.write(tile, data)
                count += 1
                if progress:
                    progress(count)
            if not count:
                raise ExportError("nothing to export: no tile of these zooms has imagery")
            archive.finish(metadata)
            return count

    @staticmethod
    def _metric(
        engine: MetricEngine,
        layer: MetricMap,
        options: ExportOptions,
        fill_progress: Progress | None,
    ) -> tuple[FillSummary, ArchiveMetadata, Tiles]:
        fmt = metric_encoding(options)
        storm = engine.storm(layer.storm).storm
        zooms = zoom_range(
            storm, engine.analysis_zoom, options.minzoom, options.maxzoom, imagery=False
        )
        report = fill_cache(
            engine, layer.storm, source=layer.source, progress=fill_progress,
            metric=layer.metric,
        )  # fmt: skip
        metadata = metric_metadata(engine, layer, fmt.value, zooms, options.attribution)
        return report, metadata, metric_tiles(engine, layer, zooms, fmt)

    @staticmethod
    def _imagery(
        engine: MetricEngine, layer: ImageryMap, options: ExportOptions
    ) -> tuple[FillSummary, ArchiveMetadata, Tiles]:
        fmt = imagery_encoding(options)
        storm = engine.storm(layer.storm).storm
        zooms = zoom_range(
            storm, engine.analysis_zoom, options.minzoom, options.maxzoom, imagery=True
        )
        metadata = imagery_metadata(engine, layer, fmt.value, zooms, options.attribution)
        return FillSummary(), metadata, imagery_tiles(engine, layer.storm, zooms, fmt)
