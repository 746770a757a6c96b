"""Writing a synthetic storm: its scenes in one of FORMATS, labels, catalogue CSV and tars."""

from __future__ import annotations

import csv
import math
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform as warp_transform

from iou_maps.errors import SyntheticStormError
from iou_maps.models.classes import NODATA_LABEL
from iou_maps.storms.catalog import validate_storm_name
from iou_maps.storms.synthetic.classes import synthetic_classes
from iou_maps.storms.synthetic.flights import (
    frame_corners,
    plan_frames,
    render_camera,
    render_northup,
)
from iou_maps.storms.synthetic.noise import Array

FORMATS: tuple[str, ...] = ("geotiff", "jpeg", "noaa-jpg")
EPSG = 32618
JPEG_QUALITY = 90


@dataclass
class SyntheticScene:
    """One generated scene: its id, flight, image and label files, and time."""

    scene_id: str
    flight: str
    image_path: Path
    label_path: Path | None
    datetime: str


@dataclass
class SyntheticStorm:
    """A generated storm: its scenes and where they were written."""

    name: str
    out_dir: Path
    scenes: list[SyntheticScene]
    catalog_csv: Path | None
    tars: list[Path]


# --------------------------------------------------------------------------- writers


def _world_file(path: Path, transform: Affine) -> None:
    """ESRI world file: pixel sizes, rotations, then the centre of the upper-left pixel."""
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    lines = [a, d, b, e, c + a / 2 + b / 2, f + d / 2 + e / 2]
    path.write_text("".join(f"{v:.10f}\n" for v in lines))


def _sidecars(path: Path, world_suffix: str, transform: Affine, wkt: str) -> None:
    """World file + .prj (what NOAA ships) + a GDAL .aux.xml so GDAL/rasterio also see the CRS."""
    _world_file(path.with_suffix(world_suffix), transform)
    path.with_suffix(".prj").write_text(wkt)
    Path(f"{path}.aux.xml").write_text(f"<PAMDataset>\n  <SRS>{escape(wkt)}</SRS>\n</PAMDataset>\n")


def _write_geotiff(path: Path, array: Array, transform: Affine, nodata: int, tags: dict) -> None:
    bands = array.reshape(array.shape[0], array.shape[1], -1)
    profile = dict(
        driver="GTiff", width=bands.shape[1], height=bands.shape[0], count=bands.shape[2],
        dtype="uint8", crs=CRS.from_epsg(EPSG), transform=transform, nodata=nodata,
        tiled=True, blockxsize=256, blockysize=256, compress="deflate", zlevel=3,
    )  # fmt: skip
    if bands.shape[2] == 3:
        profile["photometric"] = "RGB"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(bands, 2, 0))
        dst.update_tags(**tags)


def _check_args(name: str, scenes: int, fmt: str, size: int, gsd: float) -> None:
    validate_storm_name(name)
    if fmt not in FORMATS:
        raise SyntheticStormError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if not isinstance(scenes, int) or scenes < 1:
        raise SyntheticStormError(f"scenes must be an integer >= 1, got {scenes!r}")
    if not isinstance(size, int) or size < 256:
        raise SyntheticStormError(f"size must be an integer >= 256 pixels, got {size!r}")
    if not (isinstance(gsd, int | float) and math.isfinite(gsd) and gsd > 0):
        raise SyntheticStormError(f"gsd must be a positive number of metres, got {gsd!r}")


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def generate_storm(
    name: str,
    out_dir: Path,
    scenes: int = 6,
    seed: int = 0,
    fmt: str = "geotiff",
    size: int = 1536,
    gsd: float = 0.4,
    tar: bool = False,
    labels: bool = True,
    progress: Callable[[int], None] | None = None,
    classes: str = "demo",
) -> SyntheticStorm:
    """Write a synthetic storm under ``out_dir`` in one of FORMATS; see the package docstring.

    ``size`` is the camera frame's width and height in pixels, ``gsd`` its pixel size in metres.
    With ``tar`` each flight folder becomes ``out_dir/<flight>.tar`` (member names relative to
    ``out_dir``, so a scene's member is ``image_path.relative_to(out_dir)``) and the folder is
    removed. ``progress(1)`` is called after each scene. ``classes``: the class set of the
    labels (``synthetic.classes``: ``demo``, ``water``, ``buildings``).
    """
    _check_args(name, scenes, fmt, size, gsd)
    relabel = synthetic_classes(classes).relabel
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = plan_frames(seed, scenes, size, gsd)
    wkt = CRS.from_epsg(EPSG).to_wkt()
    result: list[SyntheticScene] = []
    folders: dict[str, Path] = {}
    rows: list[list[str]] = []
    for frame in frames:
        when = _iso(frame.when)
        tags = {
            "TIFFTAG_DATETIME": frame.when.strftime("%Y:%m:%d %H:%M:%S"),
            "STORM": name, "FLIGHT": frame.flight, "DATETIME": when, "SEED": str(seed),
        }  # fmt: skip
        if fmt == "noaa-jpg":
            folder = out_dir / f"{frame.flight}_jpgs"
            jpgs = folder / "jpgs"
            jpgs.mkdir(parents=True, exist_ok=True)
            scene_id = f"P{frame.pnum:08d}"
            image = jpgs / f"{scene_id}.jpg"
            rgb, lab = render_camera(frame, size, gsd, seed)
            lab = relabel(lab)
            Image.fromarray(rgb).save(image, quality=JPEG_QUALITY)
            label_path = jpgs / f"{scene_id}_label.png" if labels else None
            if label_path:
                Image.fromarray(lab).save(label_path, optimize=False)
            corners = frame_corners(frame, size, gsd)
            lons, lats = warp_transform(
                CRS.from_epsg(EPSG), CRS.from_epsg(4326),
                [p[0] for p in corners], [p[1] for p in corners],
            )  # fmt: skip
            row = [image.relative_to(out_dir).as_posix(), frame.flight, when]
            for lat, lon in zip(lats, lons, strict=True):
                row += [f"{lat:.9f}", f"{lon:.9f}"]
            rows.append(row)
        else:
            folder = out_dir / frame.flight
            folder.mkdir(parents=True, exist_ok=True)
            scene_id = f"{frame.flight}_{frame.index:03d}"
            rgb, lab, transform = render_northup(frame, size, gsd, seed)
            lab = relabel(lab)
            if fmt == "geotiff":
                image = folder / f"{scene_id}.tif"
                _write_geotiff(image, rgb, transform, 0, tags)
                label_path = folder / f"{scene_id}_label.tif" if labels else None
                if label_path:
                    _write_geotiff(label_path, lab, transform, NODATA_LABEL, tags)
            else:
                image = folder / f"{scene_id}.jpg"
                Image.fromarray(rgb).save(image, quality=JPEG_QUALITY)
                _sidecars(image, ".jgw", transform, wkt)
                label_path = folder / f"{scene_id}_label.png" if labels else None
                if label_path:
                    Image.fromarray(lab).save(label_path)
                    _sidecars(label_path, ".pgw", transform, wkt)
        folders[frame.flight] = folder
        result.append(SyntheticScene(scene_id, frame.flight, image, label_path, when))
        if progress:
            progress(1)

    catalog = None
    if fmt == "noaa-jpg":
        catalog = out_dir / "catalog.csv"
        with catalog.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(
                ["file", "flight", "datetime", "ul_lat", "ul_lon", "ur_lat", "ur_lon",
                 "lr_lat", "lr_lon", "ll_lat", "ll_lon"]
            )  # fmt: skip
            writer.writerows(rows)
    tars: list[Path] = []
    if tar:
        for flight, folder in folders.items():
            archive = out_dir / f"{flight}.tar"
            with tarfile.open(archive, "w") as tf:
                tf.add(folder, arcname=folder.relative_to(out_dir).as_posix())
            shutil.rmtree(folder)
            tars.append(archive)
    return SyntheticStorm(name, out_dir, result, catalog, tars)
