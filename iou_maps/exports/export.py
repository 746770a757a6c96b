"""A storm's maps as files: PMTiles and MBTiles archives of the service's tiles, and a
Cloud-Optimized GeoTIFF of the metric values.

Every tile is the service's own: values from the same Redis cache (computed where missing by
the same engine: ``MetricEngine.analysis_values``, single flight, stored for the service
too), cells from ``MetricEngine.tile_grid`` and bytes from ``render.encode_metric_tile``. A
tile the service answers with 204 (nothing there) is left out of an archive, as map clients
expect of a missing tile. The model loads only if some value is missing, in a worker process
as the service's does: an export of a precomputed storm makes no model call and never
imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import sqlite3
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import mercantile
import numpy as np
import shapely
from mercantile import Tile
from pmtiles.tile import Compression, TileType, zxy_to_tileid
from pmtiles.writer import Writer as PMTilesWriter
from rio_tiler.colormap import cmap as default_cmap
from rio_tiler.types import ColorMapType

from iou_maps.compute.engine import GRID_LEVELS, MetricEngine
from iou_maps.compute.plan import EngineRunner, FillPlan, FillSummary, steps_for, tiles_of
from iou_maps.config import Settings
from iou_maps.errors import CacheUnavailable, ExportError, ModelNotFound
from iou_maps.layers.base import Layer
from iou_maps.layers.registry import LAYERS, Source, get_layer
from iou_maps.layers.render import (
    WEB_MERCATOR,
    MetricFormat,
    default_colormap,
    default_rescale,
    legend_stops,
)
from iou_maps.models.classes import METRICS, metric_index
from iou_maps.storms.catalog import Catalog, Storm
from iou_maps.storms.grid import tile_polygons
from iou_maps.storms.mosaic import metric_zoom_range, storm_zoom_range

__all__ = [
    "SOURCES",
    "ArchiveFormat",
    "ArchiveMetadata",
    "CacheUnavailable",
    "ExportError",
    "ExportSummary",
    "ImageryFormat",
    "MBTilesArchive",
    "MetricLayer",
    "PMTilesArchive",
    "export_cog",
    "export_imagery_archive",
    "export_metric_archive",
    "fill_cache",
    "imagery_tiles",
    "metric_tiles",
    "open_export_engine",
    "tiles_at",
]

#: Where the values of a metric layer come from: the regressor's predictions, the true
#: metrics of labelled scenes, or their difference (the engine's sources).
SOURCES = tuple(LAYERS)
#: Analysis tiles computed per engine call while filling the cache (one model batch).
FILL_CHUNK = 64
#: Block edge (px) of the COG, and the size below which it needs no more overviews.
COG_BLOCKSIZE = 256
#: Media types of the exports (PMTiles': the one its specification registers).
MEDIA_TYPES = {
    "pmtiles": "application/vnd.pmtiles",
    "mbtiles": "application/vnd.sqlite3",
    "cog": "image/tiff; application=geotiff; profile=cloud-optimized",
}

Progress = Callable[[int, int], None]  # (done, total)


def _generator() -> str:
    try:
        return f"iou-maps {importlib.metadata.version('iou-maps')}"
    except importlib.metadata.PackageNotFoundError:
        return "iou-maps"


#: Written into every export's metadata.
GENERATOR = _generator()


class ArchiveFormat(StrEnum):
    """Tile archive formats."""

    pmtiles = "pmtiles"
    mbtiles = "mbtiles"


class ImageryFormat(StrEnum):
    """Encodings of imagery tiles in an archive (WebP: transparency at a fraction of PNG)."""

    webp = "webp"
    png = "png"
    jpeg = "jpeg"


@dataclass(frozen=True)
class MetricLayer:
    """One metric map of a storm, as the service draws it: ``colormap_name`` and ``rescale``
    left out are the service's defaults for the source (``render.default_colormap``,
    ``render.default_rescale``: a diverging colormap over -0.5..0.5 for ``error``)."""

    storm: str
    metric: str = "miou"
    source: str = Source.predicted.value
    colormap_name: str = ""  # "": the source's default
    rescale: tuple[float, float] | None = None  # None: the source's default

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ExportError(f"unknown metric {self.metric!r}; valid: {', '.join(METRICS)}")
        if self.source not in SOURCES:
            raise ExportError(f"unknown source {self.source!r}; valid: {', '.join(SOURCES)}")
        source = Source(self.source)
        object.__setattr__(self, "source", source.value)
        if not self.colormap_name:
            object.__setattr__(self, "colormap_name", default_colormap(source))
        if self.rescale is None:
            object.__setattr__(self, "rescale", default_rescale(source))
        if self.colormap_name not in default_cmap.list():
            raise ExportError(
                f"unknown colormap {self.colormap_name!r}; valid: "
                + ", ".join(sorted(default_cmap.list()))
            )
        lo, hi = self.value_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ExportError(f"rescale: min {lo} must be below max {hi}")

    @property
    def value_range(self) -> tuple[float, float]:
        """The values the colormap spans (``rescale``, the source's default filled in)."""
        assert self.rescale is not None  # filled in at construction
        return self.rescale

    @property
    def colormap(self) -> ColorMapType:
        """The named colormap (rio-tiler's, as the service's ``colormap_name``)."""
        return default_cmap.get(self.colormap_name)

    @property
    def title(self) -> str:
        """E.g. 'alpha miou (predicted)'."""
        return f"{self.storm} {self.metric} ({self.source})"


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


# --------------------------------------------------------------------------- the engine


def open_export_engine(settings: Settings) -> MetricEngine:
    """The service's engine for ``settings`` (catalog, model ids, Redis), whose models load
    in a worker process only when a value must be computed (as the service's, by default):
    the regressor, and the segmentation model of the true metrics (as ``engine.open_engine``
    finds it; without one, true and error layers are refused with the reason).

    The model ids and analysis zoom come from the models' files, without TensorFlow."""
    from iou_maps.compute.computers import Computer, ProcessComputer
    from iou_maps.compute.metric_store import connect
    from iou_maps.compute.truth import SegmentationSource
    from iou_maps.models.registry import regressor_metadata, truth_segmentation_dir

    meta = regressor_metadata(settings.data_dir, settings.model)
    data_dir = settings.data_dir.resolve()
    computer = ProcessComputer(data_dir, settings.model, processes=1)
    computer.model_id = str(meta["model_id"])
    truth: Computer | None = None
    truth_missing = ""
    try:
        segmentation = SegmentationSource(truth_segmentation_dir(data_dir, settings.model))
    except ModelNotFound as exc:
        truth_missing = str(exc)
    else:
        truth = computer.truth(segmentation.model_id)
    client = connect(settings.redis_url, settings.data_dir)
    return MetricEngine(
        Catalog(data_dir), computer, client, int(meta["analysis_zoom"]),
        truth=truth, truth_missing=truth_missing,
    )  # fmt: skip


def _check_source(engine: MetricEngine, storm_name: str, source: str) -> Layer:
    """The layer of that name, if ``storm`` has its values: the engine's NoLabels (a storm
    without labels) or ModelNotFound (no segmentation model) otherwise."""
    if source not in LAYERS:
        raise ExportError(f"unknown source {source!r}; valid: {', '.join(LAYERS)}")
    layer = get_layer(source)
    engine.check_source(storm_name, layer)
    return layer


def fill_cache(
    engine: MetricEngine,
    storm_name: str,
    *,
    source: str = Source.predicted.value,
    progress: Progress | None = None,
    chunk: int = FILL_CHUNK,
) -> FillSummary:
    """Make the cache hold every value the storm's tiles of layer ``source`` show: each
    analysis tile (computed where missing, through the engine as a tile request would) and
    the lower-zoom aggregates, as precompute writes them (``plan.steps_for``: for ``error``,
    the true values, the predictions of the tiles with a true value and the mean absolute
    errors). Nothing is computed if all is cached."""
    layer = _check_source(engine, storm_name, source)
    if engine.store is None or not engine.store.ping():
        raise CacheUnavailable("Redis is not reachable: an export reads the service's cache")
    storm = engine.storm(storm_name).storm
    plan = FillPlan(
        engine.sources, storm, engine.analysis_zoom, storm_zoom_range(storm)[0],
        steps_for(layer), lazy_aggregates=True,
    )  # fmt: skip
    return plan.run(EngineRunner(engine, chunk), progress)


# --------------------------------------------------------------------------- tiles


def tiles_at(storm: Storm, zoom: int) -> list[Tile]:
    """The tiles at ``zoom`` that the service looks at for a storm (those meeting a scene
    footprint, edges included, as its mosaic's asset lookup), in PMTiles' order."""
    w, s, e, n = storm.bounds
    # One tile of margin: a tile that only touches a footprint along the bounds' edge
    # counts too (the service draws it when the analysis tile above it has imagery).
    pad = 360.0 / 2**zoom
    candidates = list(
        mercantile.tiles(max(w - pad, -180), max(s - pad, -85.05), min(e + pad, 180),
                         min(n + pad, 85.05), zooms=[zoom])
    )  # fmt: skip
    if not candidates:
        return []
    cov = storm.coverage
    shapely.prepare(cov)
    hit = shapely.intersects(cov, tile_polygons(candidates))
    found = [t for t, h in zip(candidates, hit, strict=True) if h]
    return sorted(found, key=lambda t: zxy_to_tileid(t.z, t.x, t.y))


def _zoom_range(
    storm: Storm, analysis_zoom: int, minzoom: int | None, maxzoom: int | None, imagery: bool
) -> tuple[int, int]:
    """The requested zooms, checked against those the service serves for the layer."""
    lo, hi = storm_zoom_range(storm) if imagery else metric_zoom_range(storm, analysis_zoom)
    zmin = lo if minzoom is None else minzoom
    zmax = hi if maxzoom is None else maxzoom
    for name, z in (("minzoom", zmin), ("maxzoom", zmax)):
        if not lo <= z <= hi:
            raise ExportError(
                f"{name} {z} is outside {lo}..{hi}, the zooms of storm {storm.name!r}"
            )
    if zmin > zmax:
        raise ExportError(f"minzoom {zmin} is above maxzoom {zmax}")
    return zmin, zmax


def metric_tiles(
    engine: MetricEngine,
    layer: MetricLayer,
    zooms: tuple[int, int],
    fmt: MetricFormat = MetricFormat.png,
) -> Iterator[tuple[Tile, bytes]]:
    """(tile, bytes) of every tile of ``layer`` the service draws at ``zooms``, each zoom in
    PMTiles' order, from the cache alone (``fill_cache`` first). ExportError if a value is
    missing."""
    from iou_maps.layers.render import encode_metric_tile

    source = _check_source(engine, layer.storm, layer.source)
    storm = engine.storm(layer.storm).storm
    cmap = layer.colormap
    za = engine.analysis_zoom
    for z in range(zooms[0], zooms[1] + 1):
        # Past the analysis zoom a tile is its one analysis tile, drawn whole: the grid of
        # the analysis tile (its z = za tile) serves all its descendants.
        above: dict[Tile, Any] = {}
        for tile in tiles_at(storm, z):
            key = mercantile.parent(tile, zoom=za) if z > za else tile
            grid = above.get(key) if z > za else None
            if grid is None:
                grid = engine.tile_grid(layer.storm, tile, 0, source)
                if z > za:
                    above[key] = grid
            if grid.missing:
                raise ExportError(
                    f"tile {z}/{tile.x}/{tile.y}: {grid.missing} value(s) missing from the cache"
                    + ("" if grid.cache_ok else " (Redis unavailable)")
                )
            if not grid.has_imagery.any():
                continue  # the service's 204
            content, _ = encode_metric_tile(
                grid.values, grid.has_imagery, tile, layer.metric, fmt, cmap, layer.value_range
            )
            yield tile, content


def imagery_tiles(
    engine: MetricEngine, storm_name: str, zooms: tuple[int, int], fmt: ImageryFormat
) -> Iterator[tuple[Tile, bytes]]:
    """(tile, bytes) of the storm's imagery tiles as the service renders them without query
    parameters (``iou_maps.storms.imagery.render_tile``, its tile cache's renderer too)."""
    from titiler.core.resources.enums import ImageType

    from iou_maps.storms.imagery import render_tile

    loaded = engine.storm(storm_name)
    for z in range(zooms[0], zooms[1] + 1):
        for tile in tiles_at(loaded.storm, z):
            rendered = render_tile(loaded, tile, ImageType(fmt.value))
            if rendered is not None:  # None: the service's 204
                yield tile, rendered.content


# --------------------------------------------------------------------------- archives


@dataclass
class ArchiveMetadata:
    """What an archive says about itself (TileJSON-like keys, as PMTiles and MBTiles use)."""

    name: str
    description: str
    attribution: str
    tile_format: str  # png | webp | jpeg
    bounds: tuple[float, float, float, float]
    minzoom: int
    maxzoom: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def center(self) -> tuple[float, float, int]:
        """Longitude, latitude and zoom of a good first view (the bounds' centre)."""
        w, s, e, n = self.bounds
        return (w + e) / 2, (s + n) / 2, self.minzoom

    def tile_bounds(self, zoom: int) -> tuple[float, float, float, float]:
        """``bounds`` grown to the edges of ``zoom``'s tiles. GDAL takes an MBTiles' bounds
        as its raster's extent: on that grid it reads the tiles' pixels as they are, at that
        zoom and at each zoom out (its overviews), instead of resampling them by a fraction
        of a pixel."""
        w, s, e, n = self.bounds
        west = mercantile.bounds(mercantile.tile(w, n, zoom))
        east = mercantile.bounds(mercantile.tile(e, s, zoom))
        return west.west, east.south, east.east, west.north

    def as_json(self) -> dict[str, Any]:
        """PMTiles' metadata JSON."""
        return {
            "name": self.name,
            "description": self.description,
            "attribution": self.attribution,
            "type": "overlay",
            "format": self.tile_format,
            "version": "1",
            "bounds": list(self.bounds),
            "center": list(self.center),
            "minzoom": self.minzoom,
            "maxzoom": self.maxzoom,
            **self.extra,
        }

    def as_mbtiles(self) -> dict[str, str]:
        """MBTiles' metadata rows: the spec's text forms, other keys as JSON text."""
        out = {
            k: v if isinstance(v, str) else json.dumps(v)
            for k, v in self.as_json().items()
            if k not in ("bounds", "center")
        }
        out["bounds"] = ",".join(repr(v) for v in self.tile_bounds(self.maxzoom))
        out["center"] = "{:.7f},{:.7f},{}".format(*self.center)
        return out


class TileArchive(Protocol):
    """A tile archive being written: tiles, then ``finish`` with the metadata."""

    def write(self, tile: Tile, data: bytes) -> None: ...

    def finish(self, metadata: ArchiveMetadata) -> None: ...


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


@contextmanager
def _replacing(out: Path) -> Iterator[Path]:
    """A temporary path beside ``out`` that replaces it when the block succeeds: a failed
    export leaves no half-written file (and an old export stays as it was)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def write_archive(
    out: Path,
    archive_format: ArchiveFormat,
    tiles: Iterable[tuple[Tile, bytes]],
    metadata: ArchiveMetadata,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write ``tiles`` and ``metadata`` to ``out`` in ``archive_format``; the tile count."""
    with _replacing(out) as tmp:
        if archive_format is ArchiveFormat.pmtiles:
            with open(tmp, "wb") as f:
                return _write_tiles(PMTilesArchive(f), tiles, metadata, progress)
        tmp.unlink()  # sqlite3 creates it
        return _write_tiles(MBTilesArchive(tmp), tiles, metadata, progress)


def _write_tiles(
    archive: TileArchive,
    tiles: Iterable[tuple[Tile, bytes]],
    metadata: ArchiveMetadata,
    progress: Callable[[int], None] | None,
) -> int:
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


def _count_tiles(storm: Storm, zooms: tuple[int, int]) -> int:
    return sum(len(tiles_at(storm, z)) for z in range(zooms[0], zooms[1] + 1))


def metric_metadata(
    engine: MetricEngine,
    layer: MetricLayer,
    fmt: str,
    zooms: tuple[int, int],
    attribution: str | None,
) -> ArchiveMetadata:
    """The archive metadata of a metric layer: its legend, model and where it came from."""
    storm = engine.storm(layer.storm).storm
    what = {"predicted": "Predicted", "true": "True", "error": "Error of the predicted"}
    model_id = engine.sources.source_id(Source(layer.source))
    return ArchiveMetadata(
        name=layer.title,
        description=(
            f"{what[layer.source]} {layer.metric} of the segmentation model on storm "
            f"{layer.storm!r}, one value per {engine.analysis_zoom}-zoom analysis tile "
            f"(model {model_id})"
        ),
        attribution=attribution or f"IoU Maps, model {model_id}",
        tile_format=fmt,
        bounds=storm.bounds,
        minzoom=zooms[0],
        maxzoom=zooms[1],
        extra={
            "storm": layer.storm,
            "layer": "metric",
            "metric": layer.metric,
            "source": layer.source,
            "model_id": model_id,
            "analysis_zoom": engine.analysis_zoom,
            "colormap_name": layer.colormap_name,
            "rescale": list(layer.value_range),
            "legend_stops": legend_stops(layer.colormap, *layer.value_range),
            "generator": GENERATOR,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def export_metric_archive(
    engine: MetricEngine,
    layer: MetricLayer,
    out: Path,
    archive_format: ArchiveFormat,
    *,
    fmt: MetricFormat = MetricFormat.png,
    minzoom: int | None = None,
    maxzoom: int | None = None,
    attribution: str | None = None,
    fill_progress: Progress | None = None,
    progress: Progress | None = None,
) -> ExportSummary:
    """Write the metric tiles of ``layer`` at every zoom the service serves (or
    ``minzoom``..``maxzoom``) to a PMTiles or MBTiles archive, filling the cache first."""
    if fmt.raw:
        raise ExportError(f"tile format {fmt.value}: archives hold images (png or webp)")
    storm = engine.storm(layer.storm).storm
    zooms = _zoom_range(storm, engine.analysis_zoom, minzoom, maxzoom, imagery=False)
    report = fill_cache(engine, layer.storm, source=layer.source, progress=fill_progress)
    metadata = metric_metadata(engine, layer, fmt.value, zooms, attribution)
    tiles = metric_tiles(engine, layer, zooms, fmt)
    return _export_archive(out, archive_format, tiles, metadata, storm, zooms, progress, report)


def export_imagery_archive(
    engine: MetricEngine,
    storm_name: str,
    out: Path,
    archive_format: ArchiveFormat,
    *,
    fmt: ImageryFormat = ImageryFormat.webp,
    minzoom: int | None = None,
    maxzoom: int | None = None,
    attribution: str | None = None,
    progress: Progress | None = None,
) -> ExportSummary:
    """Write the storm's imagery tiles (the service's imagery layer) to an archive."""
    storm = engine.storm(storm_name).storm
    zooms = _zoom_range(storm, engine.analysis_zoom, minzoom, maxzoom, imagery=True)
    dates = sorted(d for d in storm.footprints["datetime"].dropna().astype(str) if d)
    metadata = ArchiveMetadata(
        name=f"{storm_name} imagery",
        description=f"Aerial imagery of storm {storm_name!r} ({len(storm.footprints)} scenes)",
        attribution=attribution or "IoU Maps",
        tile_format=fmt.value,
        bounds=storm.bounds,
        minzoom=zooms[0],
        maxzoom=zooms[1],
        extra={
            "storm": storm_name,
            "layer": "imagery",
            "scenes": len(storm.footprints),
            "start_datetime": dates[0] if dates else None,
            "end_datetime": dates[-1] if dates else None,
            "generator": GENERATOR,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    tiles = imagery_tiles(engine, storm_name, zooms, fmt)
    return _export_archive(out, archive_format, tiles, metadata, storm, zooms, progress)


def _export_archive(
    out: Path,
    archive_format: ArchiveFormat,
    tiles: Iterable[tuple[Tile, bytes]],
    metadata: ArchiveMetadata,
    storm: Storm,
    zooms: tuple[int, int],
    progress: Progress | None,
    report: FillSummary | None = None,
) -> ExportSummary:
    """``write_archive`` with progress against the storm's tile count, timed and summarised."""
    total = _count_tiles(storm, zooms)
    start = time.perf_counter()
    count = write_archive(
        out, archive_format, tiles, metadata, (lambda n: progress(n, total)) if progress else None
    )
    seconds = time.perf_counter() - start
    return ExportSummary(
        out, archive_format.value, count, out.stat().st_size, zooms, seconds,
        report or FillSummary(),
    )  # fmt: skip


# --------------------------------------------------------------------------- COG


@dataclass(frozen=True)
class CogGrid:
    """The COG's pixel grid: analysis tiles ``x0..x1-1`` × ``y0..y1-1`` at ``zoom``, each
    ``pixels_per_tile`` px wide, and ``levels`` overviews (level k: zoom - k), the origin
    aligned so that each overview pixel block is exactly one aggregate cell."""

    zoom: int
    x0: int
    y0: int
    x1: int
    y1: int
    pixels_per_tile: int
    levels: int

    @classmethod
    def of(
        cls, tiles: Sequence[Tile], zoom: int, lowest_zoom: int, pixels_per_tile: int
    ) -> CogGrid:
        xs = [t.x for t in tiles]
        ys = [t.y for t in tiles]
        span = max(max(xs) - min(xs) + 1, max(ys) - min(ys) + 1) * pixels_per_tile
        # Overviews until the image fits in a block (as GDAL's default), at most down to
        # the storm's lowest zoom (the aggregates precompute writes).
        levels = 0
        while levels < zoom - lowest_zoom and span / 2**levels > COG_BLOCKSIZE:
            levels += 1
        step = 2**levels
        x0, y0 = min(xs) // step * step, min(ys) // step * step
        x1, y1 = (max(xs) // step + 1) * step, (max(ys) // step + 1) * step
        return cls(zoom, x0, y0, x1, y1, pixels_per_tile, levels)

    def shape(self, level: int = 0) -> tuple[int, int]:
        """(height, width) of ``level``."""
        k = 2**level
        return (self.y1 - self.y0) // k * self.pixels_per_tile, (
            self.x1 - self.x0
        ) // k * self.pixels_per_tile

    def transform(self, level: int = 0) -> Any:
        from rasterio.transform import from_origin

        left, _, _, top = mercantile.xy_bounds(Tile(self.x0, self.y0, self.zoom))
        size = 2 * math.pi * 6378137 / 2**self.zoom  # a tile's edge in metres
        res = size * 2**level / self.pixels_per_tile
        return from_origin(left, top, res, res)


def export_cog(
    engine: MetricEngine,
    layer: MetricLayer,
    out: Path,
    *,
    pixels_per_tile: int = 1,
    fill_progress: Progress | None = None,
    progress: Progress | None = None,
) -> ExportSummary:
    """A Cloud-Optimized GeoTIFF of ``layer``'s values: float32, EPSG:3857, one pixel (or
    ``pixels_per_tile`` × ``pixels_per_tile``) per analysis tile, NaN where there is no
    value, overviews that are the service's aggregated cells (read through the same
    ``tile_grid`` as its tiles), band description, storm, source and model id in the tags.

    rio-cogeo's ``cog_translate`` computes overviews itself by GDAL resampling (an unweighted
    average of the level above, which is not the service's count-weighted, NaN-aware mean):
    so each level is written here, and GDAL's COG driver lays them out from a VRT that lists
    them as the band's overviews, with rio-cogeo's deflate profile.
    """
    import rasterio
    from rasterio.shutil import copy as rio_copy
    from rio_cogeo.profiles import cog_profiles

    if not 1 <= pixels_per_tile <= 256:
        raise ExportError(f"pixels_per_tile {pixels_per_tile} is outside 1..256")
    store_storm = engine.storm(layer.storm).storm
    report = fill_cache(engine, layer.storm, source=layer.source, progress=fill_progress)
    za = engine.analysis_zoom
    lowest = metric_zoom_range(store_storm, za)[0]
    tiles = tiles_of(store_storm, za)
    if not tiles:
        raise ExportError(f"nothing to export: storm {layer.storm!r} has no analysis tile")
    grid = CogGrid.of(tiles, za, lowest, pixels_per_tile)
    per_level = [tiles_at(store_storm, za - k - GRID_LEVELS) for k in range(grid.levels + 1)]
    total = sum(len(ts) for ts in per_level)
    done = 0
    start = time.perf_counter()
    profile = cog_profiles.get("deflate")
    out.parent.mkdir(parents=True, exist_ok=True)  # its levels are written beside it first
    with tempfile.TemporaryDirectory(prefix="iou-maps-cog-", dir=out.parent) as tmpdir:
        paths = []
        for level, level_tiles in enumerate(per_level):
            path = Path(tmpdir) / f"level{level}.tif"
            height, width = grid.shape(level)
            with rasterio.open(
                path, "w", driver="GTiff", width=width, height=height, count=1,
                dtype="float32", crs=WEB_MERCATOR, transform=grid.transform(level),
                nodata=float("nan"), tiled=True, blockxsize=COG_BLOCKSIZE,
                blockysize=COG_BLOCKSIZE, compress="DEFLATE", predictor=3,
            ) as dst:  # fmt: skip
                dst.write(np.full((height, width), np.nan, np.float32), 1)
                for tile in level_tiles:
                    _write_cells(engine, layer, grid, level, tile, dst)
                    done += 1
                    if progress:
                        progress(done, total)
            paths.append(path)
        vrt = Path(tmpdir) / "levels.vrt"
        vrt.write_text(_levels_vrt(grid, paths, layer, engine))
        with _replacing(out) as tmp:
            rio_copy(
                str(vrt), str(tmp), driver="COG", compress=profile["compress"],
                predictor="FLOATING_POINT", blocksize=COG_BLOCKSIZE,
                overviews="FORCE_USE_EXISTING", bigtiff="IF_SAFER",
            )  # fmt: skip
    return ExportSummary(
        out, "cog", total, out.stat().st_size, (za - grid.levels, za),
        time.perf_counter() - start, report,
    )  # fmt: skip


def _write_cells(
    engine: MetricEngine, layer: MetricLayer, grid: CogGrid, level: int, tile: Tile, dst: Any
) -> None:
    """The cells of metric tile ``tile`` (at zoom level's zoom - 4) into overview ``level``."""
    from rasterio.windows import Window

    cells = engine.tile_grid(layer.storm, tile, 0, Source(layer.source))
    if cells.missing:
        raise ExportError(
            f"tile {tile.z}/{tile.x}/{tile.y}: {cells.missing} value(s) missing from the cache"
        )
    if not cells.has_imagery.any():
        return
    band = np.where(cells.has_imagery, cells.values[:, :, metric_index(layer.metric)], np.nan)
    n = band.shape[0]
    ppt = grid.pixels_per_tile
    # Cell (0, 0) of the tile, in this level's cells from the grid's origin.
    col = tile.x * n - (grid.x0 >> level)
    row = tile.y * n - (grid.y0 >> level)
    height, width = grid.shape(level)
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + n, width // ppt), min(row + n, height // ppt)
    if c1 <= c0 or r1 <= r0:
        return
    part = band[r0 - row : r1 - row, c0 - col : c1 - col].astype(np.float32)
    pixels = np.repeat(np.repeat(part, ppt, axis=0), ppt, axis=1)
    dst.write(pixels, 1, window=Window(c0 * ppt, r0 * ppt, pixels.shape[1], pixels.shape[0]))


def _levels_vrt(grid: CogGrid, paths: list[Path], layer: MetricLayer, engine: MetricEngine) -> str:
    """A VRT of the base level whose band lists the other levels as its overviews."""
    height, width = grid.shape(0)
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    ET.SubElement(root, "SRS").text = WEB_MERCATOR.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(
        repr(v) for v in grid.transform(0).to_gdal()
    )
    tags = ET.SubElement(root, "Metadata")
    for key, value in {
        "STORM": layer.storm,
        "METRIC": layer.metric,
        "SOURCE": layer.source,
        "MODEL_ID": engine.sources.source_id(Source(layer.source)),
        "ANALYSIS_ZOOM": str(engine.analysis_zoom),
        "PIXELS_PER_TILE": str(grid.pixels_per_tile),
        "OVERVIEWS": "aggregates of the analysis tiles as the service shows them (mean of "
        "the tiles with a value, weighted by their counts), one level per zoom",
        "GENERATOR": GENERATOR,
        "AREA_OR_POINT": "Area",
    }.items():
        ET.SubElement(tags, "MDI", key=key).text = value
    band = ET.SubElement(root, "VRTRasterBand", dataType="Float32", band="1")
    ET.SubElement(band, "Description").text = layer.metric
    ET.SubElement(band, "NoDataValue").text = "nan"
    band_tags = ET.SubElement(band, "Metadata")
    ET.SubElement(band_tags, "MDI", key="SOURCE").text = layer.source
    source = ET.SubElement(band, "SimpleSource")
    ET.SubElement(source, "SourceFilename", relativeToVRT="1").text = paths[0].name
    ET.SubElement(source, "SourceBand").text = "1"
    for path in paths[1:]:
        overview = ET.SubElement(band, "Overview")
        ET.SubElement(overview, "SourceFilename", relativeToVRT="1").text = path.name
        ET.SubElement(overview, "SourceBand").text = "1"
    return ET.tostring(root, encoding="unicode")
