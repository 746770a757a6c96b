"""A rio-tiler mosaic backend that answers from a storm's footprints index.

titiler.mosaic's factory and the metric engine both read imagery through it, so tile
addressing, reprojection and mosaicking are rio-tiler's, and asset lookups are a spatial-index
query on ``footprints.parquet`` (no scan, no MosaicJSON to keep in sync).
"""

from __future__ import annotations

import math
from typing import Any

import attr
import mercantile
import numpy as np
import shapely
from morecantile import TileMatrixSet
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from rio_tiler.constants import WEB_MERCATOR_TMS, WGS84_CRS
from rio_tiler.errors import NoAssetFoundError, TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from rio_tiler.mosaic.backend import BaseBackend

from iou_maps.catalog import Storm
from iou_maps.classes import NODATA_LABEL

#: Lowest zoom served for a storm: below this a storm is a few pixels wide.
MIN_ZOOM = 10


def storm_zoom_range(storm: Storm) -> tuple[int, int]:
    """(minzoom, maxzoom): maxzoom is the first zoom whose pixels are finer than the imagery."""
    gsd = float(np.nanmedian(storm.footprints["gsd"]))
    lat = math.radians(np.mean(storm.bounds[1::2]))
    # Web-Mercator ground resolution of a 256 px tile at zoom z.
    maxzoom = math.ceil(math.log2(156543.03392 * math.cos(lat) / gsd))
    return min(MIN_ZOOM, maxzoom), max(maxzoom, MIN_ZOOM)


class SceneReadError(RuntimeError):
    """A scene file of a storm could not be read; the message names the scene."""


@attr.s
class SceneReader(Reader):
    """rio-tiler's Reader, naming the scene when its file is unreadable (e.g. corrupt)."""

    def __attrs_post_init__(self) -> None:
        try:
            super().__attrs_post_init__()
        except Exception as exc:
            raise SceneReadError(f"scene {_scene_name(self.input)}: {exc}") from exc

    def tile(self, *args: Any, **kwargs: Any) -> ImageData:
        try:
            return super().tile(*args, **kwargs)
        except TileOutsideBounds:
            raise
        except Exception as exc:
            raise SceneReadError(
                f"scene {_scene_name(self.input)}: {type(exc).__name__}: {exc}"
            ) from exc


def _scene_name(path: Any) -> str:
    return str(path).rsplit("/", 1)[-1].removesuffix(".tif")


@attr.s
class StormBackend(BaseBackend):
    """Mosaic of one storm's scene COGs (``labels=True``: its label COGs)."""

    input: Storm = attr.ib()
    labels: bool = attr.ib(default=False)
    tms: TileMatrixSet = attr.ib(default=WEB_MERCATOR_TMS)
    reader: type[Reader] = attr.ib(default=SceneReader)
    reader_options: dict = attr.ib(factory=dict)

    minzoom: int = attr.ib(init=False)
    maxzoom: int = attr.ib(init=False)

    def __attrs_post_init__(self) -> None:
        self.bounds = self.input.bounds
        self.crs = WGS84_CRS
        self.minzoom, self.maxzoom = storm_zoom_range(self.input)

    def _assets(self, geometry: shapely.Geometry) -> list[str]:
        scenes = self.input.scenes_intersecting(geometry)
        column = "label_path" if self.labels else "path"
        return [p for p in scenes[column] if p]

    def assets_for_tile(self, x: int, y: int, z: int, **kwargs: Any) -> list[str]:
        w, s, e, n = mercantile.bounds(x, y, z)
        return self._assets(shapely.box(w, s, e, n))

    def assets_for_point(
        self, lng: float, lat: float, coord_crs: CRS | None = None, **kwargs: Any
    ) -> list[str]:
        if coord_crs and coord_crs != WGS84_CRS:
            lng, lat, _, _ = transform_bounds(coord_crs, WGS84_CRS, lng, lat, lng, lat)
        return self._assets(shapely.Point(lng, lat))

    def assets_for_bbox(
        self,
        xmin: float,
        ymin: float,
        xmax: float,
        ymax: float,
        coord_crs: CRS | None = None,
        **kwargs: Any,
    ) -> list[str]:
        if coord_crs and coord_crs != WGS84_CRS:
            xmin, ymin, xmax, ymax = transform_bounds(coord_crs, WGS84_CRS, xmin, ymin, xmax, ymax)
        return self._assets(shapely.box(xmin, ymin, xmax, ymax))

    def asset_name(self, asset: Any) -> str:
        # Scene ids, not server paths, are what responses may show.
        return _scene_name(asset)


def read_tile(
    backend: StormBackend, x: int, y: int, z: int, tilesize: int = 256
) -> ImageData | None:
    """One mosaicked tile, or None where no scene has data."""
    try:
        img, _ = backend.tile(
            x, y, z,
            tilesize=tilesize,
            resampling_method="nearest" if backend.labels else "bilinear",
            allowed_exceptions=(TileOutsideBounds,),
            # Callers already read many tiles in parallel; reading a tile's scenes in order
            # skips the per-tile thread pool and stops once the first scenes fill the tile.
            threads=0,
        )  # fmt: skip
    except NoAssetFoundError:
        return None
    if not img.mask.any():
        return None
    return img


def read_label_tile(
    backend: StormBackend, x: int, y: int, z: int, tilesize: int = 256
) -> np.ndarray | None:
    """Class ids of a label tile (NODATA_LABEL where unlabelled), or None without labels."""
    img = read_tile(backend, x, y, z, tilesize)
    if img is None:
        return None
    label = np.asarray(img.data[0]).astype(np.uint8)
    label[~img.mask.astype(bool)] = NODATA_LABEL
    return label
