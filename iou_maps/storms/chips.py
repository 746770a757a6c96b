"""Chips of analysis tiles: the regressor's input, read from a storm's imagery mosaic.

A chip is the 256×256 RGB imagery of one analysis tile, zeros where no scene has data. Every
read gives a ``ChipRead``: the chip, or no imagery (less than ``MIN_VALID_FRACTION`` of the
tile), or the error of a scene that could not be read. Tiles on their scenes' pixel grid (web-
optimized COGs: all of them) are read with ``mosaic.read_grid_tiles``; any other tile with
rio-tiler's mosaic read, which gives the same pixels.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from mercantile import Tile

from iou_maps.errors import ImageryReadError, OffGrid, SceneReadError
from iou_maps.storms.grid_reads import pixel_interleaved, read_grid_tiles
from iou_maps.storms.mosaic import StormBackend, read_tile

#: An analysis tile with less valid imagery than this is treated as "no imagery".
MIN_VALID_FRACTION = 0.02


@dataclass(frozen=True)
class ChipRead:
    """What reading one analysis tile gave: its chip, no imagery (``chip`` None), or an error;
    with its label where labels were read (``iou_maps.compute.truth``)."""

    tile: Tile
    chip: np.ndarray | None = None
    error: ImageryReadError | None = None
    label: np.ndarray | None = None

    @property
    def has_imagery(self) -> bool:
        """A chip to run the model on."""
        return self.chip is not None


def imagery_chip(data: np.ndarray, valid: np.ndarray) -> np.ndarray | None:
    """(H, W, 3) uint8 chip of (B, H, W) pixels, zeros where no band is ``valid``; None if
    almost empty."""
    if valid.mean() < MIN_VALID_FRACTION:
        return None
    chip = pixel_interleaved(data)
    if not valid.all():
        chip *= valid[..., None]
    return chip


class ChipReader:
    """Reads chips of analysis tiles, alone or in bulk in a pool of read threads."""

    def __init__(self, threads: int = 4) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="imagery")

    def close(self) -> None:
        """Stop the read threads (reads under way are abandoned)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def read_one(self, backend: StormBackend, tile: Tile) -> ChipRead:
        """The chip of one tile, in this thread (a point, a zoomed-in metric tile)."""
        return self._chips(backend, [tile])[0]

    def read(self, backend: StormBackend, tiles: Sequence[Tile]) -> list[ChipRead]:
        """Chips of ``tiles``, in order, read in one chunk per read thread."""
        if len(tiles) <= 1:  # a lone tile: skip the thread hop
            return self._chips(backend, list(tiles))
        chunk = max(1, math.ceil(len(tiles) / self.threads))
        return list(self.stream(backend, tiles, chunk=chunk, ahead=self.threads))

    def stream(
        self,
        backend: StormBackend,
        tiles: Sequence[Tile],
        pool: Executor | None = None,
        chunk: int = 32,
        ahead: int = 4,
    ) -> Iterator[ChipRead]:
        """Chips of ``tiles`` in order, for bulk work: chunks of tiles are read in ``pool``
        (default: this reader's threads), ``ahead`` chunks before the consumer."""
        pool = pool or self._pool
        tiles = list(tiles)
        parts = deque(tiles[i : i + chunk] for i in range(0, len(tiles), chunk))
        pending: deque[Future[list[ChipRead]]] = deque()
        while parts or pending:
            while parts and len(pending) < ahead:
                pending.append(pool.submit(self._chips, backend, parts.popleft()))
            yield from pending.popleft().result()

    def _chips(self, backend: StormBackend, tiles: list[Tile]) -> list[ChipRead]:
        return [
            self._chip(backend, tile, got)
            for tile, got in zip(tiles, read_grid_tiles(backend, tiles), strict=True)
        ]

    def _chip(
        self,
        backend: StormBackend,
        tile: Tile,
        got: np.ma.MaskedArray | None | OffGrid | SceneReadError,
    ) -> ChipRead:
        if isinstance(got, OffGrid):
            return self.read_with_rio_tiler(backend, tile)
        if isinstance(got, SceneReadError):
            return ChipRead(tile, error=read_error(backend, tile, got))
        if got is None:
            return ChipRead(tile)
        if not np.ma.is_masked(got):  # every band of every pixel: the usual case
            return ChipRead(tile, pixel_interleaved(got.data))
        valid = np.logical_or.reduce(~np.ma.getmaskarray(got))  # rio-tiler's ImageData.mask
        return ChipRead(tile, imagery_chip(got.data, valid))

    def read_with_rio_tiler(self, backend: StormBackend, tile: Tile) -> ChipRead:
        """The chip of ``tile`` read with rio-tiler's mosaic (any tile, on the grid or not)."""
        try:
            img = read_tile(backend, tile.x, tile.y, tile.z)
        except Exception as exc:  # rasterio/rio-tiler raise many types for a bad file
            return ChipRead(tile, error=read_error(backend, tile, exc))
        if img is None:
            return ChipRead(tile)
        return ChipRead(tile, imagery_chip(img.data, np.asarray(img.mask).astype(bool)))


def read_error(backend: StormBackend, tile: Tile, exc: Exception) -> ImageryReadError:
    """The error of a tile whose imagery could not be read, naming the tile, storm and scene."""
    reason = str(exc) if isinstance(exc, SceneReadError) else f"{type(exc).__name__}: {exc}"
    err = ImageryReadError(
        f"cannot read imagery for tile {tile.z}/{tile.x}/{tile.y} of storm "
        f"{backend.input.name!r}: {reason}"
    )
    err.__cause__ = exc
    return err
