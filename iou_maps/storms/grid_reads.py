"""Bulk reads of tiles on their scenes' pixel grid (precompute, chips), and model-input layout.

``read_grid_tiles`` gives the same pixels and mask as ``mosaic.read_tile`` for tiles that are
whole stored blocks of their scenes, without rio-tiler's per-read machinery.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import mercantile
import numpy as np
import rasterio
from rio_tiler.constants import WEB_MERCATOR_TMS

from iou_maps.errors import OffGrid, SceneReadError
from iou_maps.storms.mosaic import FirstFill, StormBackend
from iou_maps.storms.scenes import grid_window, plain_nodata, read_clipped, scene_name


def pixel_interleaved(data: np.ndarray) -> np.ndarray:
    """The first 3 bands of (B, H, W) as a C-contiguous (H, W, 3) uint8 array.

    One copy per band: a third of the time of numpy's generic transposing copy, and
    TensorFlow takes a contiguous batch as one memcpy instead of a strided gather (which
    cost a cold tile ~0.5 ms in the service).
    """
    out = np.empty((*data.shape[1:], 3), np.uint8)
    for b in range(3):
        out[..., b] = data[b]
    return out


def read_grid_tiles(
    backend: StormBackend, tiles: list[mercantile.Tile], tilesize: int = 256
) -> list[np.ma.MaskedArray | None | OffGrid | SceneReadError]:
    """What ``read_tile`` gives for each tile (its masked array, or None without data), for
    many tiles on their scenes' pixel grid, without rio-tiler's per-read machinery.

    Each tile is one stored block of each of its scenes. Scenes are the same as
    ``assets_for_tile`` picks (one spatial-index query for all tiles), taken in the same
    order with the same pixel selection (FirstFill, stopping once the tile is full), so the
    pixels and the mask are the same. This is the bulk path (precompute): ~0.6 ms a tile
    instead of ~2 ms, most of it decoding the blocks. A tile that is off the grid of one of
    its scenes gives OffGrid, a scene that cannot be read gives its SceneReadError.
    """
    out: list[np.ma.MaskedArray | None | OffGrid | SceneReadError] = [None] * len(tiles)
    if not tiles:
        return out
    assets = backend.assets_for_tiles(tiles)  # the scenes assets_for_tile picks
    with ExitStack() as stack:
        opened: dict[str, Any] = {}

        def block(path: str, tile: mercantile.Tile) -> np.ma.MaskedArray | None:
            """Tile ``tile`` of scene ``path`` (None: outside it); OffGrid, SceneReadError."""
            try:
                if path not in opened:
                    opener = backend.scenes.open if backend.scenes is not None else rasterio.open
                    opened[path] = stack.enter_context(opener(path))
                ds = opened[path]
                window = grid_window(ds.transform, mercantile.xy_bounds(tile), tilesize, tilesize)
                on_grid = window is not None and ds.crs == WEB_MERCATOR_TMS.rasterio_crs
                if window is None or not on_grid or not plain_nodata(ds, ds.nodata):
                    raise OffGrid(f"tile {tile} is not on the pixel grid of its scenes")
                c, r = int(window.col_off), int(window.row_off)
                if c >= ds.width or r >= ds.height or c + tilesize <= 0 or r + tilesize <= 0:
                    return None  # rio-tiler skips such a scene (TileOutsideBounds)
                return read_clipped(ds, window, list(ds.indexes), ds.nodata, nomask_if_full=True)
            except OffGrid:
                raise
            except Exception as exc:  # rasterio raises many types for a bad file
                name = scene_name(path)
                raise SceneReadError(f"scene {name}: {type(exc).__name__}: {exc}") from exc

        for i, t in enumerate(tiles):
            scenes = assets[i]
            for _attempt in (1, 2):
                try:
                    out[i] = _grid_mosaic(scenes, functools.partial(block, tile=t))
                    break
                except OffGrid as exc:
                    out[i] = exc
                    break
                except SceneReadError as exc:
                    # A failed GDAL read can leave its error pending in this thread, raised
                    # by the next call on another file: a second attempt tells them apart.
                    out[i] = exc
    return out


def _grid_mosaic(
    scenes: list[str], block: Callable[[str], np.ma.MaskedArray | None]
) -> np.ma.MaskedArray | None:
    """FirstFill over the tile's blocks of ``scenes`` in order, as rio-tiler's mosaic does."""
    selection = FirstFill()
    for path in scenes:
        pixels = block(path)
        if pixels is None:
            continue
        if selection.mosaic is None and pixels.mask is np.ma.nomask:
            return pixels  # a full first block: FirstFill would take it whole and stop there
        selection.feed(pixels)
        if selection.is_done:
            break
    mosaic = selection.data
    if mosaic is None or not np.logical_or.reduce(~np.ma.getmaskarray(mosaic)).any():
        return None
    return mosaic
