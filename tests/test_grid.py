"""Analysis grid: exact footprint intersection, tile family, aggregation."""

from __future__ import annotations

import mercantile
import numpy as np
import pytest
import shapely
from mercantile import Tile

from iou_maps.storms.grid import (
    aggregate,
    analysis_tiles_for,
    ancestor,
    descendants,
    tiles_intersecting,
    validate_tile,
)


def test_exact_intersection_drops_bbox_corners() -> None:
    # A thin diagonal strip: its bbox covers a full square, the strip only the diagonal tiles.
    t0 = mercantile.bounds(Tile(74300, 103000, 18))
    t1 = mercantile.bounds(Tile(74309, 103009, 18))
    line = shapely.LineString(
        [(t0.west + 1e-6, t0.north - 1e-6), (t1.east - 1e-6, t1.south + 1e-6)]
    )
    strip = line.buffer(1e-5)
    tiles = tiles_intersecting(strip, 18)
    bbox_tiles = list(mercantile.tiles(*strip.bounds, zooms=[18]))
    assert len(bbox_tiles) >= 100
    assert 10 <= len(tiles) < 40
    boxes = [shapely.box(*mercantile.bounds(t)) for t in tiles]
    assert all(b.intersects(strip) for b in boxes)
    missing = set(bbox_tiles) - set(tiles)
    assert not any(shapely.box(*mercantile.bounds(t)).intersection(strip).area > 0 for t in missing)


def test_edge_touching_tiles_are_excluded() -> None:
    b = mercantile.bounds(Tile(10, 20, 6))
    tiles = tiles_intersecting(shapely.box(b.west, b.south, b.east, b.north), 6)
    assert tiles == [Tile(10, 20, 6)]
    assert tiles_intersecting(shapely.Polygon(), 6) == []


def test_family() -> None:
    t = Tile(74305, 103007, 18)
    assert ancestor(t, 15) == Tile(74305 >> 3, 103007 >> 3, 15)
    assert ancestor(t, 18) == t
    kids = descendants(Tile(9288, 12875, 15), 17)
    assert len(kids) == 16 and all(ancestor(k, 15) == Tile(9288, 12875, 15) for k in kids)
    assert set(kids) == set(mercantile.children(Tile(9288, 12875, 15), zoom=17))
    assert analysis_tiles_for(Tile(1, 1, 19), 18) == [Tile(0, 0, 18)]
    assert len(analysis_tiles_for(Tile(0, 0, 16), 18)) == 16
    with pytest.raises(ValueError):
        ancestor(t, 19)
    with pytest.raises(ValueError):
        descendants(t, 17)


@pytest.mark.parametrize(
    ("z", "x", "y", "word"),
    [(-1, 0, 0, "zoom"), (3, 8, 0, "x"), (3, 0, 9, "y"), (30, 0, 0, "zoom")],
)
def test_validate_tile(z: int, x: int, y: int, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        validate_tile(z, x, y)
    assert validate_tile(3, 7, 7) == Tile(7, 7, 3)


def test_aggregate_mean_over_children_with_values_and_nan_classes() -> None:
    kids = descendants(Tile(0, 0, 1), 2)  # 4 children of (0,0,1)
    values = np.array(
        [[0.2, np.nan, 1.0], [0.4, 0.5, 0.0], [np.nan, np.nan, np.nan], [0.6, np.nan, 0.5]]
    )
    agg = aggregate(kids, values)
    assert set(agg) == {Tile(0, 0, 1)}
    mean, count = agg[Tile(0, 0, 1)]
    assert count == 3
    np.testing.assert_allclose(mean, [0.4, 0.5, 0.5], rtol=1e-6)
    # Aggregating aggregates with their counts equals aggregating everything at once.
    grand = descendants(Tile(0, 0, 0), 2)
    vals = np.random.default_rng(0).random((16, 2))
    vals[3] = np.nan
    level1 = aggregate(grand, vals)
    parents = list(level1)
    top = aggregate(
        parents,
        np.array([level1[p][0] for p in parents]),
        np.array([level1[p][1] for p in parents]),
    )
    np.testing.assert_allclose(top[Tile(0, 0, 0)][0], np.nanmean(vals, axis=0), rtol=1e-5)
    assert top[Tile(0, 0, 0)][1] == 15
