"""The tiles of an export, each the service's own: which tiles a storm has at a zoom, the
zooms a layer may be exported at, and the (tile, bytes) of its metric or imagery tiles.

A tile the service answers with 204 (nothing there) is left out, as map clients expect of a
missing tile in an archive.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mercantile
import shapely
from mercantile import Tile
from pmtiles.tile import zxy_to_tileid

from iou_maps.compute.engine import MetricEngine
from iou_maps.errors import ExportError
from iou_maps.exports.maps import ImageryFormat, MetricMap
from iou_maps.layers.registry import Source
from iou_maps.layers.render import MetricFormat, encode_metric_tile
from iou_maps.storms.catalog import Storm
from iou_maps.storms.grid import tile_polygons
from iou_maps.storms.mosaic import metric_zoom_range, storm_zoom_range

__all__ = ["count_tiles", "imagery_tiles", "metric_tiles", "tiles_at", "zoom_range"]


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


def zoom_range(
    storm: Storm, analysis_zoom: int, minzoom: int | None, maxzoom: int | None, imagery: bool
) -> tuple[int, int]:
    """The requested zooms, checked against those the service serves for the layer (its
    imagery's, or its metric tiles'); ExportError naming the one outside them."""
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
    layer: MetricMap,
    zooms: tuple[int, int],
    fmt: MetricFormat = MetricFormat.png,
) -> Iterator[tuple[Tile, bytes]]:
    """(tile, bytes) of every tile of ``layer`` the service draws at ``zooms``, each zoom in
    PMTiles' order, from the cache alone (``fill_cache`` first). ExportError if a value is
    missing."""
    # MetricMap checked the source's name: the engine checks the storm has its values.
    source = Source(layer.source)
    engine.check_source(layer.storm, source)
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
                grid.values, grid.has_imagery, tile, layer.metric, fmt, cmap, layer.value_range,
                classes=engine.classes,
            )  # fmt: skip
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


def count_tiles(storm: Storm, zooms: tuple[int, int]) -> int:
    """How many tiles ``tiles_at`` finds over ``zooms``."""
    return sum(len(tiles_at(storm, z)) for z in range(zooms[0], zooms[1] + 1))
