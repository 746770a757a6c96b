"""Scene files: open datasets kept for reuse, and reading them on their own pixel grid.

``SceneReader`` is rio-tiler's Reader over a pool of open datasets (``OpenScenes``), naming the
scene when its file is unreadable, with a fast path for reads that fall exactly on the scene's
pixel grid (``grid_window``, ``read_clipped``): scenes are web-optimized COGs, so a tile at
their zoom is a block read instead of a resampling.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attr
import numpy as np
import rasterio
from rasterio import windows
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.windows import Window
from rio_tiler import reader as rio_reader
from rio_tiler.constants import WGS84_CRS
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.expression import parse_expression
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from rio_tiler.types import BBox, Indexes
from rio_tiler.utils import cast_to_sequence

from iou_maps.errors import SceneReadError


class OpenScenes:
    """Open scene datasets kept for reuse between reads.

    Opening a COG (parsing its header and tile index) costs far more than reading one 256 px
    block of it: a tile read that opened its scenes each time spent ~90% of its time opening.
    A dataset is used by one thread at a time (GDAL handles are not thread-safe): ``open``
    checks out an idle one or opens a new one, and puts it back afterwards. A replaced file
    (a re-ingest) has a new inode or mtime, so its stale handles are never reused.
    """

    def __init__(self, max_idle: int = 64) -> None:
        self.max_idle = max_idle
        self._idle: OrderedDict[tuple[str, int, int], list[Any]] = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()

    @contextmanager
    def open(self, path: str) -> Iterator[Any]:
        """An open dataset of ``path`` for this thread's use, put back afterwards."""
        st = os.stat(path)
        key = (str(path), st.st_ino, st.st_mtime_ns)
        with self._lock:
            handles = self._idle.get(key)
            dataset = handles.pop() if handles else None
            if dataset is not None:
                self._count -= 1
                if not handles:
                    del self._idle[key]
        if dataset is None:
            dataset = rasterio.open(path)
        try:
            yield dataset
        except BaseException:
            dataset.close()  # it may be in a bad state: do not hand it out again
            raise
        self._put_back(key, dataset)

    def _put_back(self, key: tuple[str, int, int], dataset: Any) -> None:
        evicted = []
        with self._lock:
            self._idle.setdefault(key, []).append(dataset)
            self._idle.move_to_end(key)
            self._count += 1
            while self._count > self.max_idle:
                old_key, handles = next(iter(self._idle.items()))
                evicted.append(handles.pop(0))
                self._count -= 1
                if not handles:
                    del self._idle[old_key]
        for ds in evicted:
            ds.close()

    def close(self) -> None:
        """Close every idle dataset."""
        with self._lock:
            handles = [ds for hs in self._idle.values() for ds in hs]
            self._idle.clear()
            self._count = 0
        for ds in handles:
            ds.close()


@attr.s
class SceneReader(Reader):
    """rio-tiler's Reader, naming the scene when its file is unreadable (e.g. corrupt).

    ``scenes``: a pool of open datasets to read from instead of opening the file anew.
    """

    scenes: OpenScenes | None = attr.ib(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        try:
            if self.dataset is None and self.scenes is not None:
                self.dataset = self._ctx_stack.enter_context(self.scenes.open(str(self.input)))
            super().__attrs_post_init__()
        except Exception as exc:
            raise SceneReadError(f"scene {scene_name(self.input)}: {exc}") from exc

    def tile(self, *args: Any, **kwargs: Any) -> ImageData:
        """rio-tiler's tile read, naming the scene when its file is unreadable."""
        try:
            return super().tile(*args, **kwargs)
        except TileOutsideBounds:
            raise
        except Exception as exc:
            raise SceneReadError(
                f"scene {scene_name(self.input)}: {type(exc).__name__}: {exc}"
            ) from exc

    def part(
        self,
        bbox: BBox,
        dst_crs: CRS | None = None,
        bounds_crs: CRS = WGS84_CRS,
        indexes: Indexes | None = None,
        expression: str | None = None,
        max_size: int | None = None,
        height: int | None = None,
        width: int | None = None,
        buffer: float | None = None,
        **kwargs: Any,
    ) -> ImageData:
        """rio-tiler's ``part``, with a fast path for reads on the scene's own pixel grid.

        Scenes are web-optimized COGs, so a tile at the scene's zoom is exactly a whole
        number of its pixels. The window rio-tiler computes from the tile bounds is off by
        float noise (e.g. 1536.0000000019), which makes GDAL resample across neighbouring
        blocks: ~5 ms instead of ~0.5 ms, and pixels that are not quite the stored ones. Such
        windows are snapped to the grid and read as they are stored.
        """
        window = self._grid_window(bbox, dst_crs, bounds_crs, height, width, buffer, kwargs)
        if window is None:
            return super().part(
                bbox, dst_crs=dst_crs, bounds_crs=bounds_crs, height=height, width=width,
                max_size=max_size, indexes=indexes, expression=expression, buffer=buffer,
                **kwargs,
            )  # fmt: skip
        options = {k: v for k, v in {**self.options, **kwargs}.items() if k in _READ_OPTIONS}
        if expression:
            indexes = parse_expression(expression)
        img = self._read_stored(window, indexes, options)
        if img is None:
            img = rio_reader.read(
                self.dataset, indexes=indexes, window=window, width=width, height=height,
                **options,
            )  # fmt: skip
        img.assets = [self.input]
        return img.apply_expression(expression) if expression else img

    def _read_stored(
        self, window: Window, indexes: Indexes | None, options: dict[str, Any]
    ) -> ImageData | None:
        """The stored pixels of an integer window, masked where they equal the nodata value.

        rio_tiler.reader.read gives the same, but a window reaching past the scene's edge goes
        through a boundless VRT there, and its mask assignment (``numpy.ma`` ``__setmask__``)
        alone took ~25 ms for a 2048 px block. Here the in-scene part is read as it is stored
        and the rest is left masked. None where that shortcut does not apply.
        """
        ds = self.dataset
        assert ds is not None  # opened in __attrs_post_init__
        nodata = options.get("nodata", ds.nodata)
        if set(options) - {"nodata", "resampling_method", "reproject_method"}:
            return None  # unscale, post_process, out_dtype: rio-tiler's read
        if not plain_nodata(ds, nodata):
            return None
        bands = [int(i) for i in cast_to_sequence(indexes)] if indexes else list(ds.indexes)
        return ImageData(
            read_clipped(ds, window, bands, nodata),
            bounds=windows.bounds(window, ds.transform),
            crs=ds.crs,
            band_names=[f"b{i}" for i in bands],
            band_descriptions=[ds.descriptions[i - 1] or f"b{i}" for i in bands],
            metadata=ds.tags(),
            nodata=nodata,
        )

    def _grid_window(
        self,
        bbox: BBox,
        dst_crs: CRS | None,
        bounds_crs: CRS,
        height: int | None,
        width: int | None,
        buffer: float | None,
        kwargs: dict[str, Any],
    ) -> Window | None:
        """The integer window of ``bbox`` when it lies on the scene's pixel grid, else None."""
        assert self.dataset is not None  # opened in __attrs_post_init__
        crs = self.dataset.crs
        if buffer or not height or not width or bounds_crs != crs or (dst_crs or crs) != crs:
            return None
        if set(kwargs) - _READ_OPTIONS - {"padding"} or self.options.get("vrt_options"):
            return None
        return grid_window(self.dataset.transform, bbox, width, height)


def grid_window(transform: Any, bbox: BBox, width: int, height: int) -> Window | None:
    """The integer window of ``bbox`` (in the raster's CRS) when it is exactly ``width`` ×
    ``height`` of the raster's pixels, up to float noise; None otherwise."""
    if transform.b or transform.d:
        return None  # a rotated raster is never on a tile grid
    left, bottom, right, top = bbox
    # The window arithmetic of rasterio.windows.from_bounds, without its per-call overhead.
    col, row = (left - transform.c) / transform.a, (top - transform.f) / transform.e
    w, h = (right - left) / transform.a, (bottom - top) / transform.e
    edges = (col, row, w, h)
    snapped = [round(v) for v in edges]
    if max(abs(v - s) for v, s in zip(edges, snapped, strict=True)) > 1e-6:
        return None
    if (snapped[2], snapped[3]) != (width, height):
        return None
    return Window(*snapped)


def plain_nodata(ds: Any, nodata: float | None) -> bool:
    """A raster masked by a nodata value alone (no alpha band, not NaN)."""
    return nodata is not None and not np.isnan(nodata) and ColorInterp.alpha not in ds.colorinterp


def read_clipped(
    ds: Any, window: Window, bands: list[int], nodata: float, *, nomask_if_full: bool = False
) -> np.ma.MaskedArray:
    """The stored pixels of an integer window, masked (per band) where they equal ``nodata``.

    The part of the window past the raster's edge is nodata, as rio-tiler's boundless read
    makes it, without the boundless VRT. ``nomask_if_full``: a window without any nodata
    pixel comes with ``numpy.ma.nomask`` instead of an all-False mask array (bulk reads).
    """
    w, h = int(window.width), int(window.height)
    col, row = int(window.col_off), int(window.row_off)
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + w, ds.width), min(row + h, ds.height)
    if (c0, r0, c1, r1) == (col, row, col + w, row + h):  # inside the raster: the usual case
        data = ds.read(bands, window=window)
        # ``all()`` tests for zeros in one pass without building the boolean mask.
        if nomask_if_full and (data.all() if nodata == 0 else not (data == nodata).any()):
            return np.ma.MaskedArray(data)
        return np.ma.MaskedArray(data, mask=data == nodata)
    data = np.full((len(bands), h, w), nodata, dtype=ds.dtypes[bands[0] - 1])
    if c1 > c0 and r1 > r0:
        inside = ds.read(bands, window=Window(c0, r0, c1 - c0, r1 - r0))
        data[:, r0 - row : r1 - row, c0 - col : c1 - col] = inside
    return np.ma.MaskedArray(data, mask=data == nodata)


#: Options of rio_tiler.reader.read that the grid fast path passes on.
_READ_OPTIONS = frozenset(
    {"nodata", "resampling_method", "reproject_method", "unscale", "post_process", "out_dtype"}
)


def scene_name(path: Any) -> str:
    """The scene id of a scene file's path (responses show ids, not server paths)."""
    return str(path).rsplit("/", 1)[-1].removesuffix(".tif")
