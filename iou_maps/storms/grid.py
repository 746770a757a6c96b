"""The analysis grid: Web-Mercator tiles at the analysis zoom, their family, and aggregation.

Tile math comes from mercantile; this module only adds what the product needs on top:
exact intersection with scene footprints and the parent/child bookkeeping of metric tiles.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import mercantile
import numpy as np
import shapely
from mercantile import Tile
from shapely.geometry.base import BaseGeometry

from iou_maps.errors import InvalidTile

#: Default analysis zoom: a 256 px tile at z18 is ~125 m across, ~0.49 m/px on the Outer Banks,
#: close to the 0.3–0.5 m ground sampling of NOAA's post-storm imagery.
DEFAULT_ANALYSIS_ZOOM = 18
MAX_ZOOM = 24

__all__ = [
    "DEFAULT_ANALYSIS_ZOOM",
    "Tile",
    "aggregate",
    "analysis_tiles_for",
    "ancestor",
    "descendants",
    "tile_polygons",
    "tiles_intersecting",
    "validate_tile",
]


def validate_tile(z: int, x: int, y: int, max_zoom: int = MAX_ZOOM) -> Tile:
    """The tile ``z/x/y``, or InvalidTile (a ValueError) saying which coordinate is out of range."""
    if not 0 <= z <= max_zoom:
        raise InvalidTile(f"zoom {z} out of range 0..{max_zoom}")
    limit = 2**z - 1
    if not 0 <= x <= limit:
        raise InvalidTile(f"x {x} out of range 0..{limit} at zoom {z}")
    if not 0 <= y <= limit:
        raise InvalidTile(f"y {y} out of range 0..{limit} at zoom {z}")
    return Tile(x, y, z)


def tile_polygons(tiles: Sequence[Tile]) -> np.ndarray:
    """Shapely boxes (EPSG:4326) of the tiles, as an array for vectorised predicates."""
    if not tiles:
        return np.empty(0, dtype=object)
    b = np.array([mercantile.bounds(t) for t in tiles], dtype=np.float64)
    return shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])


def tiles_intersecting(geometry: BaseGeometry, zoom: int) -> list[Tile]:
    """Tiles at ``zoom`` whose interior meets ``geometry`` (EPSG:4326), exact, not by bbox.

    Tiles that only touch the geometry along an edge are left out: they hold no imagery.
    """
    if geometry.is_empty:
        return []
    w, s, e, n = geometry.bounds
    candidates = list(mercantile.tiles(w, s, e, n, zooms=[zoom]))
    if not candidates:
        return []
    boxes = tile_polygons(candidates)
    shapely.prepare(geometry)
    hit = shapely.intersects(geometry, boxes) & ~shapely.touches(geometry, boxes)
    return [t for t, h in zip(candidates, hit, strict=True) if h]


def ancestor(tile: Tile, zoom: int) -> Tile:
    """The tile at ``zoom`` (≤ tile.z) containing ``tile``."""
    if zoom > tile.z:
        raise ValueError(f"ancestor zoom {zoom} is below tile zoom {tile.z}")
    if zoom == tile.z:
        return tile
    shift = tile.z - zoom
    return Tile(tile.x >> shift, tile.y >> shift, zoom)


def descendants(tile: Tile, zoom: int) -> list[Tile]:
    """All tiles at ``zoom`` (≥ tile.z) inside ``tile``, row-major (y, then x)."""
    if zoom < tile.z:
        raise ValueError(f"descendant zoom {zoom} is above tile zoom {tile.z}")
    k = 2 ** (zoom - tile.z)
    x0, y0 = tile.x * k, tile.y * k
    return [Tile(x0 + i, y0 + j, zoom) for j in range(k) for i in range(k)]


def analysis_tiles_for(tile: Tile, analysis_zoom: int) -> list[Tile]:
    """Analysis tiles needed to draw ``tile``: its descendants at, or its one ancestor above."""
    if tile.z <= analysis_zoom:
        return descendants(tile, analysis_zoom)
    return [ancestor(tile, analysis_zoom)]


def aggregate(
    tiles: Iterable[Tile], values: np.ndarray, counts: np.ndarray | None = None
) -> dict[Tile, tuple[np.ndarray, int]]:
    """Parent-level aggregates: mean of the children that have values, with their count.

    ``values`` is ``(N, M)`` with NaN rows for children without values. ``counts`` (N,) are the
    children's own counts (1 for analysis tiles) so that aggregating aggregates gives the same
    mean as aggregating all analysis tiles at once. Per metric, NaN entries are ignored
    (a class absent from a tile does not pull its parent's IoU towards 0).
    """
    tiles = list(tiles)
    values = np.asarray(values, dtype=np.float64)
    weights = np.ones(len(tiles)) if counts is None else np.asarray(counts, dtype=np.float64)
    groups: dict[Tile, list[int]] = {}
    for i, t in enumerate(tiles):
        groups.setdefault(mercantile.parent(t), []).append(i)
    out: dict[Tile, tuple[np.ndarray, int]] = {}
    for parent, idx in groups.items():
        v = values[idx]
        w = weights[idx][:, None] * ~np.isnan(v)
        has_value = ~np.isnan(v).all(axis=1)
        count = int(weights[idx][has_value].sum())
        if count == 0:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.nansum(v * w, axis=0) / w.sum(axis=0)
        out[parent] = (mean.astype(np.float32), count)
    return out
