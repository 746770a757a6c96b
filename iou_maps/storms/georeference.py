"""Reading a source scene onto a regular north-up grid, however it is georeferenced.

GeoTIFFs and JPEGs with a world file (+ ``.prj``) are read as they are; a plain JPEG is warped
onto a UTM grid from its four corner coordinates (as ground control points).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import rasterio
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS as RioCRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from rasterio.warp import calculate_default_transform, reproject

from iou_maps.errors import SourceSceneError
from iou_maps.models.classes import NODATA_LABEL
from iou_maps.storms.discovery import SourceScene

#: JPEG collars are not exactly 0 after compression: darker than this in every band is nodata.
JPEG_COLLAR_MAX = 12


@dataclass
class Raster:
    """A georeferenced RGB scene (and optional label) on a regular north-up grid."""

    rgb: np.ndarray  # (3, H, W) uint8
    valid: np.ndarray  # (H, W) bool
    crs: RioCRS
    transform: Affine
    label: np.ndarray | None  # (H, W) uint8, NODATA_LABEL outside
    datetime: str | None


def _utm_for(lon: float, lat: float) -> RioCRS:
    info = query_utm_crs_info(
        datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat)
    )
    return RioCRS.from_epsg(int(info[0].code))


def _tiff_datetime(tags: dict[str, str]) -> str | None:
    value = tags.get("TIFFTAG_DATETIME")
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y:%m:%d %H:%M:%S").isoformat()
    except ValueError:
        return value


def _read_label(path: Path, shape: tuple[int, int]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            label = ds.read(1)
    if label.shape != shape:
        raise SourceSceneError(f"label {path.name} is {label.shape}, scene is {shape}")
    label = label.astype(np.uint8)
    label[label > NODATA_LABEL] = NODATA_LABEL
    return label


def _read_georeferenced(src: SourceScene) -> Raster:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(src.image) as ds:
            if ds.count < 3:
                raise SourceSceneError(f"expected an RGB image, found {ds.count} band(s)")
            crs = ds.crs
            if crs is None:
                prj = src.image.with_suffix(".prj")
                if prj.is_file():
                    crs = RioCRS.from_wkt(prj.read_text())
            if crs is None or ds.transform == Affine.identity():
                raise SourceSceneError(
                    "not georeferenced (no CRS/transform, world file or corners)"
                )
            rgb = ds.read([1, 2, 3])
            has_mask = ds.nodata is not None or any(
                flag.name in ("per_dataset", "alpha", "nodata")
                for flags in ds.mask_flag_enums
                for flag in flags
            )
            valid = ds.dataset_mask() > 0 if has_mask else np.ones(rgb.shape[1:], bool)
            transform = ds.transform
            when = _tiff_datetime(ds.tags())
    if src.image.suffix.lower() in (".jpg", ".jpeg"):
        valid &= ~(rgb <= JPEG_COLLAR_MAX).all(axis=0)
    if rgb.dtype != np.uint8:
        raise SourceSceneError(f"expected 8-bit imagery, found {rgb.dtype}")
    label = _read_label(src.label, rgb.shape[1:]) if src.label else None
    return Raster(rgb, valid, RioCRS.from_user_input(crs), transform, label, src.datetime or when)


def _read_with_corners(src: SourceScene) -> Raster:
    """Warp a plain JPEG onto a north-up UTM grid from its four corner coordinates (GCPs)."""
    c = src.corners
    assert c is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(src.image) as ds:
            if ds.count < 3:
                raise SourceSceneError(f"expected an RGB image, found {ds.count} band(s)")
            rgb = ds.read([1, 2, 3])
    h, w = rgb.shape[1:]
    gcps = [
        GroundControlPoint(row=0, col=0, x=c["ul_lon"], y=c["ul_lat"], z=0.0),
        GroundControlPoint(row=0, col=w, x=c["ur_lon"], y=c["ur_lat"], z=0.0),
        GroundControlPoint(row=h, col=w, x=c["lr_lon"], y=c["lr_lat"], z=0.0),
        GroundControlPoint(row=h, col=0, x=c["ll_lon"], y=c["ll_lat"], z=0.0),
    ]
    lons = [g.x for g in gcps]
    lats = [g.y for g in gcps]
    if not (all(-180 <= v <= 180 for v in lons) and all(-90 <= v <= 90 for v in lats)):
        raise SourceSceneError("corner coordinates outside lon/lat range")
    src_crs = RioCRS.from_epsg(4326)
    dst_crs = _utm_for(float(np.mean(lons)), float(np.mean(lats)))
    transform, dw, dh = calculate_default_transform(src_crs, dst_crs, w, h, gcps=gcps)
    out = np.zeros((3, dh, dw), np.uint8)
    kw = dict(gcps=gcps, src_crs=src_crs, dst_transform=transform, dst_crs=dst_crs)
    reproject(rgb, out, resampling=Resampling.bilinear, src_nodata=None, dst_nodata=0, **kw)
    valid_src = np.ones((h, w), np.uint8)
    valid = np.zeros((dh, dw), np.uint8)
    reproject(valid_src, valid, resampling=Resampling.nearest, dst_nodata=0, **kw)
    label = None
    if src.label:
        lab_src = _read_label(src.label, (h, w))
        label = np.full((dh, dw), NODATA_LABEL, np.uint8)
        reproject(
            lab_src, label, resampling=Resampling.nearest,
            src_nodata=NODATA_LABEL, dst_nodata=NODATA_LABEL, **kw,
        )  # fmt: skip
    return Raster(out, valid > 0, dst_crs, transform, label, src.datetime)


def read_source(src: SourceScene) -> Raster:
    """The pixels, georeferencing and label of a source scene, however it is georeferenced."""
    return _read_with_corners(src) if src.corners else _read_georeferenced(src)
