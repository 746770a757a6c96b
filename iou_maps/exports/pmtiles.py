"""PMTiles: a single-file tile archive that map clients read by HTTP range requests."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mercantile import Tile
from pmtiles.reader import MmapSource, Reader
from pmtiles.tile import Compression, TileType, zxy_to_tileid
from pmtiles.writer import Writer as PMTilesWriter

from iou_maps.exports.archive import TileArchiveFormat
from iou_maps.exports.metadata import ArchiveMetadata

__all__ = ["PMTILES", "PMTilesArchive", "PMTilesFormat"]


class PMTilesArchive:
    """A PMTiles v3 archive, written by the ``pmtiles`` package (identical tiles stored once)."""

    TILE_TYPES = {"png": TileType.PNG, "webp": TileType.WEBP, "jpeg": TileType.JPEG}

    def __init__(self, f: Any) -> None:
        self.writer = PMTilesWriter(f)
        self.count = 0

    def write(self, tile: Tile, data: bytes) -> None:
        """Add the bytes of tile ``tile`` to the archive."""
        self.writer.write_tile(zxy_to_tileid(tile.z, tile.x, tile.y), data)
        self.count += 1

    def finish(self, metadata: ArchiveMetadata) -> None:
        """Write the header, directory and metadata, and close the archive."""
        w, s, e, n = metadata.bounds
        lon, lat, zoom = metadata.center
        header = {
            "tile_type": self.TILE_TYPES[metadata.tile_format],
            "tile_compression": Compression.NONE,  # PNG/WebP/JPEG are compressed already
            "min_lon_e7": math.floor(w * 1e7),
            "min_lat_e7": math.floor(s * 1e7),
            "max_lon_e7": math.ceil(e * 1e7),
            "max_lat_e7": math.ceil(n * 1e7),
            "center_zoom": zoom,
            "center_lon_e7": round(lon * 1e7),
            "center_lat_e7": round(lat * 1e7),
        }
        self.writer.finalize(header, metadata.as_json())


class PMTilesFormat(TileArchiveFormat):
    """PMTiles v3 archives of a layer's tiles."""

    name = "pmtiles"
    suffixes = (".pmtiles",)
    media_type = "application/vnd.pmtiles"  # the one its specification registers
    title = "PMTiles"

    @contextmanager
    def open_archive(self, path: Path) -> Iterator[PMTilesArchive]:
        """A PMTiles archive written to ``path``."""
        with open(path, "wb") as f:
            yield PMTilesArchive(f)

    def read_metadata(self, path: Path) -> dict[str, Any]:
        """The archive's metadata JSON."""
        with open(path, "rb") as f:
            return dict(Reader(MmapSource(f)).metadata())


PMTILES = PMTilesFormat()
