"""MBTiles: the SQLite tile archive that GDAL and QGIS open as a raster."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mercantile import Tile

from iou_maps.exports.archive import TileArchiveFormat
from iou_maps.exports.metadata import ArchiveMetadata

__all__ = ["MBTILES", "MBTilesArchive", "MBTilesFormat"]


class MBTilesArchive:
    """An MBTiles 1.3 archive: the specification is an SQLite schema, written with sqlite3.

    Identical tiles are stored once, in the deduplicated layout that mbutil writes and GDAL
    and QGIS read (``map`` + ``images`` tables behind a ``tiles`` view): the flat tiles past
    the analysis zoom repeat a lot. Rows are in the TMS scheme (row 0 is the south).
    """

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        self.db.executescript(
            "CREATE TABLE metadata (name text, value text);"
            "CREATE TABLE map (zoom_level integer, tile_column integer, tile_row integer,"
            " tile_id text);"
            "CREATE TABLE images (tile_data blob, tile_id text);"
            "CREATE VIEW tiles AS SELECT map.zoom_level AS zoom_level,"
            " map.tile_column AS tile_column, map.tile_row AS tile_row,"
            " images.tile_data AS tile_data FROM map JOIN images"
            " ON images.tile_id = map.tile_id;"
        )
        self.stored: set[str] = set()
        self.count = 0

    def write(self, tile: Tile, data: bytes) -> None:
        """Add the bytes of tile ``tile`` (identical tiles are stored once)."""
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self.stored:
            self.db.execute("INSERT INTO images VALUES (?, ?)", (data, digest))
            self.stored.add(digest)
        row = (1 << tile.z) - 1 - tile.y
        self.db.execute("INSERT INTO map VALUES (?, ?, ?, ?)", (tile.z, tile.x, row, digest))
        self.count += 1

    def finish(self, metadata: ArchiveMetadata) -> None:
        """Write the metadata table and close the database."""
        self.db.executemany("INSERT INTO metadata VALUES (?, ?)", metadata.as_mbtiles().items())
        self.db.executescript(
            "CREATE UNIQUE INDEX map_index ON map (zoom_level, tile_column, tile_row);"
            "CREATE UNIQUE INDEX images_id ON images (tile_id);"
            "CREATE UNIQUE INDEX name ON metadata (name);"
        )
        self.db.commit()
        self.db.close()


class MBTilesFormat(TileArchiveFormat):
    """MBTiles 1.3 archives of a layer's tiles."""

    name = "mbtiles"
    suffixes = (".mbtiles",)
    media_type = "application/vnd.sqlite3"
    title = "MBTiles"

    @contextmanager
    def open_archive(self, path: Path) -> Iterator[MBTilesArchive]:
        """An MBTiles archive created at ``path``."""
        path.unlink()  # sqlite3 creates it
        archive = MBTilesArchive(path)
        try:
            yield archive
        finally:
            archive.db.close()  # closed already once finished; not left open on a failure

    def read_metadata(self, path: Path) -> dict[str, Any]:
        """The metadata table, JSON values decoded (the spec's text forms kept as text)."""
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT name, value FROM metadata").fetchall()
        finally:
            db.close()
        meta: dict[str, Any] = {}
        for name, value in rows:
            try:
                meta[name] = json.loads(value)
            except (TypeError, ValueError):
                meta[name] = value
        return meta


MBTILES = MBTilesFormat()
