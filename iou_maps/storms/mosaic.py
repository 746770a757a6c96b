"""A rio-tiler mosaic backend that answers from a storm's footprints index.

titiler.mosaic's factory and the metric engine both read imagery through it, so tile
addressing, reprojection and mosaicking are rio-tiler's, and asset lookups are a spatial-index
query on ``footprints.parquet`` (no scan, no MosaicJSON to keep in sync). Scenes are read with
``scenes.SceneReader``; ``grid_reads.py`` is the bulk path for tiles on the scenes' grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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
from rio_tiler.models import ImageData, PointData
from rio_tiler.mosaic.backend import BaseBackend
from rio_tiler.mosaic.methods.defaults import FirstMethod

from iou_maps.errors import NoSceneAt
from iou_maps.models.classes import NODATA_LABEL
from iou_maps.storms.catalog import Storm
from iou_maps.storms.scenes import OpenScenes, SceneReader, scene_name

#: Lowest zoom served for a storm: below this a storm is a few pixels wide.
MIN_ZOOM = 10


def storm_zoom_range(storm: Storm) -> tuple[int, int]:
    """(minzoom, maxzoom): maxzoom is the first zoom whose pixels are finer than the imagery."""
    gsd = float(np.nanmedian(storm.footprints["gsd"]))
    lat = math.radians(np.mean(storm.bounds[1::2]))
    # Web-Mercator ground resolution of a 256 px tile at zoom z.
    maxzoom = math.ceil(math.log2(156543.03392 * math.cos(lat) / gsd))
    return min(MIN_ZOOM, maxzoom), max(maxzoom, MIN_ZOOM)


def metric_zoom_range(storm: Storm, analysis_zoom: int) -> tuple[int, int]:
    """Zooms of a storm's metric layers: its imagery zooms, extended to the analysis zoom."""
    minzoom, maxzoom = storm_zoom_range(storm)
    return minzoom, max(maxzoom, analysis_zoom)


@attr.s
class StormBackend(BaseBackend):
    """Mosaic of one storm's scene COGs (``labels=True``: its label COGs)."""

    input: Storm = attr.ib()
    labels: bool = attr.ib(default=False)
    tms: TileMatrixSet = attr.ib(default=WEB_MERCATOR_TMS)
    reader: type[Reader] = attr.ib(default=SceneReader)
    reader_options: dict = attr.ib(factory=dict)
    #: Open datasets shared by every backend of a process (needs a SceneReader ``reader``).
    scenes: OpenScenes | None = attr.ib(default=None)

    minzoom: int = attr.ib(init=False)
    maxzoom: int = attr.ib(init=False)
    _paths: np.ndarray = attr.ib(init=False, repr=False)
    _tree: shapely.STRtree = attr.ib(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.scenes is not None:
            self.reader_options = {"scenes": self.scenes, **self.reader_options}
        column = "label_path" if self.labels else "path"
        self._paths = self.input.footprints[column].to_numpy()
        # A spatial index of the footprints held directly: reaching the GeoDataFrame's own
        # (``.sindex``) costs pandas column lookups on every tile read.
        self._tree = shapely.STRtree(self.input.footprints.geometry.to_numpy())
        self.bounds = self.input.bounds
        self.crs = WGS84_CRS
        self.minzoom, self.maxzoom = storm_zoom_range(self.input)

    def _assets(self, geometry: shapely.Geometry) -> list[str]:
        # The spatial index and a plain array of paths: a GeoDataFrame row selection per
        # tile read cost ~0.4 ms.
        rows = np.sort(self._tree.query(geometry, predicate="intersects"))
        return [p for p in self._paths[rows] if p]

    def assets_for_tiles(self, tiles: Sequence[mercantile.Tile]) -> list[list[str]]:
        """``assets_for_tile`` of many tiles at once (one spatial-index query): per tile, the
        paths of the scenes under it, in the footprints' order."""
        out: list[list[str]] = [[] for _ in tiles]
        if not tiles:
            return out
        bounds = np.array([mercantile.bounds(t) for t in tiles], np.float64)
        boxes = shapely.box(bounds[:, 0], bounds[:, 1], bounds[:, 2], bounds[:, 3])
        tile_idx, scene_idx = self._tree.query(boxes, predicate="intersects")
        order = np.lexsort((scene_idx, tile_idx))  # per tile, its scenes in footprints order
        for i, j in zip(tile_idx[order].tolist(), scene_idx[order].tolist(), strict=True):
            if self._paths[j]:
                out[i].append(str(self._paths[j]))
        return out

    def assets_for_tile(self, x: int, y: int, z: int, **kwargs: Any) -> list[str]:
        """Paths of the scenes under tile ``z/x/y``, in the footprints' order."""
        w, s, e, n = mercantile.bounds(x, y, z)
        return self._assets(shapely.box(w, s, e, n))

    def assets_for_point(
        self, lng: float, lat: float, coord_crs: CRS | None = None, **kwargs: Any
    ) -> list[str]:
        """Paths of the scenes at a point."""
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
        """Paths of the scenes meeting a bounding box."""
        if coord_crs and coord_crs != WGS84_CRS:
            xmin, ymin, xmax, ymax = transform_bounds(coord_crs, WGS84_CRS, xmin, ymin, xmax, ymax)
        return self._assets(shapely.box(xmin, ymin, xmax, ymax))

    def point(  # type: ignore[override]  # rio-tiler's BaseBackend.point, as it is there
        self,
        lon: float,
        lat: float,
        coord_crs: CRS = WGS84_CRS,
        search_options: dict | None = None,
        **kwargs: Any,
    ) -> list[tuple[str, PointData]]:
        """rio-tiler's values of every scene at a coordinate; NoSceneAt where none covers it
        (the web layer answers 404 for a point, where an empty tile is a 204)."""
        try:
            return super().point(
                lon, lat, coord_crs=coord_crs, search_options=search_options, **kwargs
            )
        except NoAssetFoundError:
            raise NoSceneAt(
                f"({lon}, {lat}) is outside every scene of storm {self.input.name!r}"
            ) from None

    def asset_name(self, asset: Any) -> str:
        """The scene id of a path (responses show ids, not server paths)."""
        # Scene ids, not server paths, are what responses may show.
        return scene_name(asset)


@dataclass
class FirstFill(FirstMethod):
    """rio-tiler's FirstMethod (each pixel from the first scene that has it), filled in place.

    FirstMethod rebuilds the whole masked array for every scene it adds (``numpy.ma.where``
    and a mask assignment): most of the time of a large block read. This copies only the
    pixels that are still empty; the pixels and the mask are the same.
    """

    def feed(self, array: np.ma.MaskedArray | None) -> None:
        """Add a scene's pixels where the mosaic has none yet."""
        if array is None:
            return
        if self.mosaic is None:
            self.mosaic = np.ma.MaskedArray(array.data, mask=np.ma.getmaskarray(array))
            return
        hole = np.ma.getmaskarray(self.mosaic) & ~np.ma.getmaskarray(array)
        np.copyto(self.mosaic.data, array.data, where=hole)
        mask = self.mosaic.mask  # an array (set above): updating it updates the mosaic's mask
        assert isinstance(mask, np.ndarray)
        mask[hole] = False


def read_tile(
    backend: StormBackend, x: int, y: int, z: int, tilesize: int = 256
) -> ImageData | None:
    """One mosaicked tile, or None where no scene has data."""
    try:
        img, _ = backend.tile(
            x, y, z,
            tilesize=tilesize,
            pixel_selection=FirstFill(),
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
