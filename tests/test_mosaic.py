"""Reading a storm's mosaic: grid-aligned tiles are the stored pixels; open scenes are reused."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mercantile
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.windows import Window
from rio_tiler.io import Reader

from iou_maps.errors import OffGrid, SceneReadError
from iou_maps.storms.catalog import Catalog
from iou_maps.storms.grid_reads import _grid_mosaic, read_grid_tiles
from iou_maps.storms.mosaic import StormBackend, read_tile
from iou_maps.storms.scenes import OpenScenes, SceneReader, read_clipped


def _tiles_of(storm, zoom: int) -> list[mercantile.Tile]:
    return [
        t
        for t in mercantile.tiles(*storm.bounds, zooms=[zoom])
        if len(storm.scenes_intersecting(shapely.box(*mercantile.bounds(t))))
    ]


def test_a_tile_on_the_scene_grid_is_the_stored_block(served_data) -> None:
    storm = Catalog(served_data.data_dir).storm(served_data.storm)
    path = storm.footprints["path"].iloc[0]
    with rasterio.open(path) as ds:
        # A block well inside the scene: its tile is exactly one 256 px block of the COG.
        col, row = (ds.width // 256 // 2) * 256, (ds.height // 256 // 2) * 256
        stored = ds.read(window=Window(col, row, 256, 256))
        x, y = ds.xy(row + 128, col + 128)
    lon, lat = mercantile.lnglat(x, y)
    tile = mercantile.tile(lon, lat, 18)
    with SceneReader(path) as src:
        fast = src.tile(tile.x, tile.y, tile.z, resampling_method="bilinear")
    assert np.array_equal(fast.data, stored)
    # rio-tiler's own path resamples across the float-noise window: not the stored pixels
    # in general, but the same picture (this guards the comparison above against a no-op).
    with Reader(path) as src:
        slow = src.tile(tile.x, tile.y, tile.z, resampling_method="bilinear")
    assert np.abs(slow.data.astype(int) - stored).mean() < 2
    assert fast.bounds == pytest.approx(slow.bounds)
    assert fast.crs == slow.crs


def test_off_grid_reads_fall_back_to_rio_tiler(served_data) -> None:
    """A tile coarser than the scene (an overview read) is not a stored block: same as rio-tiler."""
    storm = Catalog(served_data.data_dir).storm(served_data.storm)
    path = storm.footprints["path"].iloc[0]
    tile = _tiles_of(storm, 16)[0]
    with SceneReader(path) as fast_src, Reader(path) as ref_src:
        for size in (256, 100):
            a = fast_src.tile(tile.x, tile.y, tile.z, tilesize=size)
            b = ref_src.tile(tile.x, tile.y, tile.z, tilesize=size)
            assert np.array_equal(a.data, b.data) and np.array_equal(a.mask, b.mask)


def test_block_reads_match_tile_reads(served_data) -> None:
    """One read of a 4×4 block of analysis tiles gives each tile's pixels and mask exactly."""
    storm = Catalog(served_data.data_dir).storm(served_data.storm)
    backend = StormBackend(storm, scenes=OpenScenes())
    compared = 0
    for parent in _tiles_of(storm, 16)[:6]:
        block = read_tile(backend, parent.x, parent.y, 16, tilesize=1024)
        for t in mercantile.children(parent, zoom=18):
            img = read_tile(backend, t.x, t.y, 18)
            ox, oy = (t.x - parent.x * 4) * 256, (t.y - parent.y * 4) * 256
            if img is None:
                assert block is None or not block.mask[oy : oy + 256, ox : ox + 256].any()
                continue
            assert block is not None
            assert np.array_equal(img.data, block.data[:, oy : oy + 256, ox : ox + 256])
            assert np.array_equal(img.mask, block.mask[oy : oy + 256, ox : ox + 256])
            compared += 1
    assert compared > 10


def test_open_scenes_reuses_bounded_handles(served_data, tmp_path: Path) -> None:
    storm = Catalog(served_data.data_dir).storm(served_data.storm)
    paths = list(storm.footprints["path"])
    pool = OpenScenes(max_idle=2)
    with pool.open(paths[0]) as first:
        pass
    with pool.open(paths[0]) as again:
        assert again is first  # reused, not reopened
    with pool.open(paths[0]) as a, pool.open(paths[0]) as b:
        assert a is not b  # one user at a time per handle
    handles = []
    for p in paths[1:4]:
        with pool.open(p) as handle:
            handles.append(handle)
    # Two idle handles are kept: the oldest were closed, the two newest are handed out again.
    assert first.closed and handles[0].closed
    assert not handles[1].closed and not handles[2].closed
    with pool.open(paths[2]) as again2, pool.open(paths[3]) as again3:
        assert again2 is handles[1] and again3 is handles[2]

    # A file replaced on disk (a re-ingest) is opened anew, never read through a stale handle.
    copy = tmp_path / "scene.tif"
    shutil.copy(paths[0], copy)
    with pool.open(str(copy)) as old:
        pass
    shutil.copy(paths[1], tmp_path / "other.tif")
    (tmp_path / "other.tif").replace(copy)
    with pool.open(str(copy)) as new:
        assert new is not old
        assert new.bounds == rasterio.open(paths[1]).bounds
    pool.close()
    assert new.closed


def test_open_scenes_under_concurrent_reads(served_data) -> None:
    """Threads sharing the pool read the same pixels as a fresh reader, and nothing fails."""
    storm = Catalog(served_data.data_dir).storm(served_data.storm)
    tiles = _tiles_of(storm, 18)
    pool = OpenScenes(max_idle=3)  # small: handles are evicted while others are in use
    shared = StormBackend(storm, scenes=pool)
    plain = StormBackend(storm)

    def pixels(backend: StormBackend, t: mercantile.Tile) -> np.ndarray | None:
        img = read_tile(backend, t.x, t.y, t.z)
        return None if img is None else img.data

    with ThreadPoolExecutor(6) as ex:
        got = list(ex.map(lambda t: pixels(shared, t), tiles * 3))
    want = [pixels(plain, t) for t in tiles] * 3
    assert len(got) == len(want) > 20
    for g, w in zip(got, want, strict=True):
        assert (g is None and w is None) or np.array_equal(g, w)
    pool.close()


def test_bulk_grid_reads_are_tile_reads(served_data) -> None:
    """The bulk path gives each tile exactly what read_tile gives: pixels, mask, or None."""
    storm = Catalog(served_data.data_dir).storm(served_data.storm)
    backend = StormBackend(storm, scenes=OpenScenes())
    # Every analysis tile of the storm, plus a ring of tiles around it without any imagery.
    w, s, e, n = storm.bounds
    tiles = list(mercantile.tiles(w - 0.002, s - 0.002, e + 0.002, n + 0.002, zooms=[18]))
    got = read_grid_tiles(backend, tiles)
    with_data = overlaps = 0
    for t, g in zip(tiles, got, strict=True):
        ref = read_tile(backend, t.x, t.y, t.z)
        if ref is None:
            assert g is None, t
            continue
        assert isinstance(g, np.ma.MaskedArray), (t, g)
        assert np.array_equal(g.data, ref.data) and np.array_equal(
            np.logical_or.reduce(~np.ma.getmaskarray(g)), ref.mask.astype(bool)
        )
        with_data += 1
        overlaps += len(ref.assets) > 1
    assert with_data >= 8 and overlaps > 0  # tiles made of two scenes are checked too
    assert any(g is None for g in got)


def test_bulk_reads_off_the_grid_and_broken_scenes(served_data, tmp_path: Path) -> None:
    storm = Catalog(served_data.data_dir).storm(served_data.storm)
    backend = StormBackend(storm)
    t = _tiles_of(storm, 17)[0]  # coarser than the scenes: an overview read
    assert isinstance(read_grid_tiles(backend, [t])[0], OffGrid)

    data = tmp_path / "data"
    shutil.copytree(served_data.data_dir / "storms", data / "storms")
    broken = Catalog(data).storm(served_data.storm)
    tiles = _tiles_of(broken, 18)
    first = Path(broken.footprints["path"].iloc[0])
    first.write_bytes(first.read_bytes()[:4096])  # a truncated scene file
    got = read_grid_tiles(StormBackend(broken), tiles)
    errors = [g for g in got if isinstance(g, SceneReadError)]
    assert errors and all(first.stem in str(e) for e in errors)
    assert any(isinstance(g, np.ma.MaskedArray) for g in got)  # the other scenes still read


def test_full_blocks_skip_the_mask(tmp_path: Path) -> None:
    """A block without nodata comes unmasked from the bulk path and gives FirstFill's pixels;
    a block with a nodata pixel keeps its mask (and FirstFill fills it from the next scene)."""
    rng = np.random.default_rng(0)
    full = rng.integers(1, 256, (3, 256, 256), dtype=np.uint8)
    holed = full.copy()
    holed[:, 10, 20] = 0
    paths = []
    for name, data in (("full", full), ("holed", holed)):
        path = tmp_path / f"{name}.tif"
        with rasterio.open(
            path, "w", driver="GTiff", width=256, height=256, count=3, dtype="uint8",
            nodata=0, crs="EPSG:3857", transform=rasterio.transform.from_origin(0, 256, 1, 1),
        ) as dst:  # fmt: skip
            dst.write(data)
        paths.append(path)
    window = Window(0, 0, 256, 256)
    with rasterio.open(paths[0]) as a, rasterio.open(paths[1]) as b:
        got = read_clipped(a, window, [1, 2, 3], 0, nomask_if_full=True)
        assert got.mask is np.ma.nomask and np.array_equal(got.data, full)
        masked = read_clipped(b, window, [1, 2, 3], 0, nomask_if_full=True)
        assert masked.mask[:, 10, 20].all() and masked.mask.sum() == 3
        blocks = {0: got, 1: masked}
        # A full first block is the mosaic; a holed one is filled from the next scene.
        assert _grid_mosaic([0, 1], blocks.__getitem__) is got
        filled = _grid_mosaic([1, 0], blocks.__getitem__)
        assert np.array_equal(filled.data, full) and not np.ma.getmaskarray(filled).any()
