"""Storms on disk: names, ingest of NOAA-style imagery into COGs, and the footprints index.

Layout under the data directory (see docs/configuration.md)::

    storms/<storm>/scenes/<scene_id>.tif     Cloud-Optimized GeoTIFF, RGB uint8, nodata 0
    storms/<storm>/labels/<scene_id>.tif     COG, class ids, nodata 255 (optional)
    storms/<storm>/footprints.parquet        GeoParquet index of the scenes (EPSG:4326)

Ingest accepts GeoTIFFs, JPEGs with a world file (+ ``.prj``), and plain JPEGs whose four corner
coordinates come from a NOAA-style catalogue CSV, as folders, files or ``.tar`` archives.
Every file is written to a temporary name and renamed, so a crash never leaves a half-written
scene or catalog.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import tarfile
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from pyproj import CRS, Transformer
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS as RioCRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.features import shapes
from rasterio.io import MemoryFile
from rasterio.transform import Affine
from rasterio.warp import calculate_default_transform, reproject
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles
from rio_tiler.constants import WEB_MERCATOR_TMS
from shapely.geometry import shape

from iou_maps.errors import InvalidStormName, StormNotFound
from iou_maps.models.classes import NODATA_LABEL

STORM_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SCENE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
FOOTPRINTS = "footprints.parquet"
CORNER_COLUMNS = (
    "ul_lat", "ul_lon", "ur_lat", "ur_lon", "lr_lat", "lr_lon", "ll_lat", "ll_lon",
)  # fmt: skip
IMAGE_SUFFIXES = {".tif", ".tiff", ".jpg", ".jpeg"}
LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".jpg")
WORLD_FILE_SUFFIXES = (".jgw", ".jpgw", ".wld")
#: JPEG collars are not exactly 0 after compression: darker than this in every band is nodata.
JPEG_COLLAR_MAX = 12
#: Footprints are traced on a mask decimated to at most this many pixels a side.
FOOTPRINT_MASK_SIZE = 1024


def validate_storm_name(name: str) -> str:
    """``name`` if it is a valid storm name, else InvalidStormName (checked before any disk I/O)."""
    if not isinstance(name, str) or not STORM_NAME_RE.fullmatch(name):
        raise InvalidStormName(
            f"invalid storm name {name!r}: use 1-64 characters of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return name


# --------------------------------------------------------------------------- catalog lookups


@dataclass
class Storm:
    """One ingested storm: its folder and footprints index."""

    name: str
    directory: Path

    @property
    def footprints_path(self) -> Path:
        """Path of the storm's GeoParquet index of scene footprints."""
        return self.directory / FOOTPRINTS

    @cached_property
    def _footprints_bytes(self) -> bytes:
        # Read once: the footprints and the version come from the same file contents even
        # when a re-ingest replaces the file in between.
        return self.footprints_path.read_bytes()

    @cached_property
    def version(self) -> str:
        """The catalogue version: a hash of the footprints file's contents, the same in every
        process and on every host. Ingest rewrites that file whenever a scene changes (each
        row has the scene's source signature), so what a storm's tiles show changes only
        with it; an ingest that changes nothing keeps it."""
        return hashlib.blake2b(self._footprints_bytes, digest_size=12).hexdigest()

    @cached_property
    def footprints(self) -> gpd.GeoDataFrame:
        """Scene footprints (EPSG:4326) with ``path`` made absolute."""
        gdf = gpd.read_parquet(io.BytesIO(self._footprints_bytes))
        gdf["path"] = [str(self.directory / p) for p in gdf["path"]]
        gdf["label_path"] = [
            str(self.directory / p) if isinstance(p, str) and p else None for p in gdf["label_path"]
        ]
        return gdf

    @cached_property
    def coverage(self) -> shapely.Geometry:
        """Union of all footprints (EPSG:4326)."""
        return shapely.union_all(self.footprints.geometry.values)

    @cached_property
    def label_coverage(self) -> shapely.Geometry:
        """Union of the footprints of the scenes that have a label raster (empty: none)."""
        fp = self.footprints
        return shapely.union_all(fp.geometry.values[fp["label_path"].notna().to_numpy()])

    @property
    def has_labels(self) -> bool:
        """Whether any scene of the storm has a label raster."""
        return bool(self.footprints["label_path"].notna().any())

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """West, south, east, north of all scenes (EPSG:4326)."""
        w, s, e, n = self.footprints.total_bounds
        return float(w), float(s), float(e), float(n)

    def scenes_intersecting(self, geometry: shapely.Geometry) -> gpd.GeoDataFrame:
        """Scenes whose footprint meets ``geometry`` (EPSG:4326), via the spatial index."""
        fp = self.footprints
        idx = fp.sindex.query(geometry, predicate="intersects")
        return fp.iloc[np.sort(idx)]

    def scenes_at(self, lon: float, lat: float) -> gpd.GeoDataFrame:
        """The scenes whose footprint contains ``lon, lat``."""
        return self.scenes_intersecting(shapely.Point(lon, lat))


class Catalog:
    """The storms under a data directory."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self.storms_dir = self.data_dir / "storms"

    def storm_dir(self, name: str) -> Path:
        """The folder of storm ``name`` (validated: no path tricks)."""
        return self.storms_dir / validate_storm_name(name)

    def names(self) -> list[str]:
        """Names of the storms that have a footprints index."""
        if not self.storms_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.storms_dir.iterdir()
            if STORM_NAME_RE.fullmatch(p.name) and (p / FOOTPRINTS).is_file()
        )

    def storm(self, name: str) -> Storm:
        """The ingested storm ``name``: InvalidStormName, StormNotFound."""
        directory = self.storm_dir(name)
        if not (directory / FOOTPRINTS).is_file():
            raise StormNotFound(f"unknown storm {name!r}; known: {', '.join(self.names()) or '-'}")
        return Storm(name, directory)

    def summary(self) -> pd.DataFrame:
        """One row per storm: scenes, labelled scenes, bounds, area, time span."""
        rows = []
        for name in self.names():
            fp = self.storm(name).footprints
            area = fp.to_crs(fp.estimate_utm_crs()).union_all().area / 1e6 if len(fp) else 0.0
            w, s, e, n = fp.total_bounds
            dt = pd.to_datetime(fp["datetime"], errors="coerce")
            rows.append(
                {
                    "storm": name,
                    "scenes": len(fp),
                    "labelled": int(fp["label_path"].notna().sum()),
                    "area_km2": round(float(area), 3),
                    "bounds": f"{w:.5f},{s:.5f},{e:.5f},{n:.5f}",
                    "gsd_m": round(float(fp["gsd"].median()), 3) if len(fp) else float("nan"),
                    "first": str(dt.min()) if dt.notna().any() else "",
                    "last": str(dt.max()) if dt.notna().any() else "",
                }
            )
        return pd.DataFrame(rows)


# --------------------------------------------------------------------------- ingest: discovery


@dataclass
class SourceScene:
    """One scene found among the ingest inputs, before conversion."""

    scene_id: str
    image: Path
    label: Path | None = None
    corners: dict[str, float] | None = None
    datetime: str | None = None


@dataclass
class Skipped:
    """A source file that ingest left out, and why."""

    path: str
    reason: str


@dataclass
class IngestReport:
    """What an ingest did: scenes ingested, unchanged and skipped."""

    storm: str
    ingested: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _label_for(image: Path) -> Path | None:
    for suffix in LABEL_SUFFIXES:
        candidate = image.with_name(f"{image.stem}_label{suffix}")
        if candidate.is_file():
            return candidate
    return None


def _is_label(path: Path) -> bool:
    return path.stem.endswith("_label")


def _read_corner_csvs(csvs: Iterable[Path]) -> dict[str, dict[str, str]]:
    """Rows of NOAA-style image catalogues, by image file name."""
    rows: dict[str, dict[str, str]] = {}
    for path in csvs:
        try:
            with path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames or not set(CORNER_COLUMNS) <= set(reader.fieldnames):
                    continue
                file_col = next(
                    (c for c in ("file", "image", "filename", "name") if c in reader.fieldnames),
                    None,
                )
                if file_col is None:
                    continue
                for row in reader:
                    rows[Path(row[file_col]).name] = row
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
    return rows


def _extract_tar(archive: Path, into: Path) -> Path:
    dest = into / re.sub(r"[^A-Za-z0-9_.-]", "_", archive.stem)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        # The "data" filter refuses absolute names, '..' and links out of the folder.
        tar.extractall(dest, filter="data")
    return dest


def discover(paths: Sequence[Path | str], workdir: Path) -> tuple[list[SourceScene], list[Skipped]]:
    """Scenes among ``paths`` (folders, files, tars), matched with labels and corner CSVs."""
    files: list[Path] = []
    skipped: list[Skipped] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            skipped.append(Skipped(str(path), "no such file or folder"))
            continue
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in candidates:
            if f.suffix.lower() == ".tar" or f.name.lower().endswith((".tar.gz", ".tgz")):
                try:
                    extracted = _extract_tar(f, workdir)
                except (tarfile.TarError, OSError) as exc:
                    skipped.append(Skipped(str(f), f"unreadable tar archive: {exc}"))
                    continue
                files.extend(sorted(p for p in extracted.rglob("*") if p.is_file()))
            else:
                files.append(f)
    corner_rows = _read_corner_csvs(f for f in files if f.suffix.lower() == ".csv")
    scenes: dict[str, SourceScene] = {}
    for f in files:
        if f.suffix.lower() not in IMAGE_SUFFIXES or _is_label(f):
            continue
        scene_id = f.stem
        if not SCENE_ID_RE.fullmatch(scene_id):
            skipped.append(Skipped(str(f), "file name is not a usable scene id"))
            continue
        if scene_id in scenes:
            skipped.append(Skipped(str(f), f"duplicate scene id {scene_id!r}"))
            continue
        row = corner_rows.get(f.name)
        corners = None
        when = None
        if row is not None:
            try:
                corners = {c: float(row[c]) for c in CORNER_COLUMNS}
            except (TypeError, ValueError):
                skipped.append(Skipped(str(f), "catalogue CSV row has non-numeric corners"))
                continue
            when = row.get("datetime") or None
        scenes[scene_id] = SourceScene(scene_id, f, _label_for(f), corners, when)
    return list(scenes.values()), skipped


# --------------------------------------------------------------------------- ingest: conversion


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
        raise ValueError(f"label {path.name} is {label.shape}, scene is {shape}")
    label = label.astype(np.uint8)
    label[label > NODATA_LABEL] = NODATA_LABEL
    return label


def _read_georeferenced(src: SourceScene) -> Raster:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(src.image) as ds:
            if ds.count < 3:
                raise ValueError(f"expected an RGB image, found {ds.count} band(s)")
            crs = ds.crs
            if crs is None:
                prj = src.image.with_suffix(".prj")
                if prj.is_file():
                    crs = RioCRS.from_wkt(prj.read_text())
            if crs is None or ds.transform == Affine.identity():
                raise ValueError("not georeferenced (no CRS/transform, world file or corners)")
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
        raise ValueError(f"expected 8-bit imagery, found {rgb.dtype}")
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
                raise ValueError(f"expected an RGB image, found {ds.count} band(s)")
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
        raise ValueError("corner coordinates outside lon/lat range")
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


#: Resampling methods that rio-cogeo takes both for the data and the overviews.
CogResampling = Literal[
    "nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode", "rms"
]


def _write_cog(
    array: np.ndarray,
    dst: Path,
    crs: RioCRS,
    transform: Affine,
    nodata: int,
    resampling: CogResampling,
    overview_resampling: CogResampling,
    tags: dict[str, str] | None = None,
) -> None:
    """Write ``array`` (bands, H, W) as a web-optimized COG at ``dst``, atomically.

    The COG is reprojected to Web Mercator and aligned with the XYZ tile grid (rio-cogeo's
    ``tms`` option), so a tile read is a block read instead of a warp: ~3x faster tiles for
    the service and precompute, at the cost of one resampling at ingest. ZSTD (with the
    horizontal predictor) decodes a 256 px block in about half the time of DEFLATE, for
    files of the same size: decoding is most of the cost of a precompute read.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(
        driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
        dtype=array.dtype, crs=crs, transform=transform, nodata=nodata,
    )  # fmt: skip
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=".tif.part", dir=dst.parent)
    os.close(fd)
    try:
        with MemoryFile() as mem:
            with mem.open(**profile) as ds:
                ds.write(array)
                if tags:
                    ds.update_tags(**tags)
            with mem.open() as ds:
                with warnings.catch_warnings():
                    # rio-cogeo warns that old libtiff builds lack ZSTD; the COGs are read by
                    # this service's own GDAL, clients get tiles over HTTP.
                    warnings.simplefilter("ignore", UserWarning)
                    cog_profile = cog_profiles.get("zstd").copy()
                cog_profile.update(predictor=2, blockxsize=256, blockysize=256)
                cog_translate(
                    ds, tmp, cog_profile, nodata=nodata, overview_resampling=overview_resampling,
                    resampling=resampling, tms=WEB_MERCATOR_TMS, zoom_level_strategy="auto",
                    in_memory=True, quiet=True, forward_ns_tags=True,
                )  # fmt: skip
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the service may run as another user
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def footprint(valid: np.ndarray, transform: Affine, crs: RioCRS) -> shapely.Geometry:
    """The valid-data area as a (multi)polygon in EPSG:4326 — not just the bounding box."""
    step = max(1, int(np.ceil(max(valid.shape) / FOOTPRINT_MASK_SIZE)))
    small = np.ascontiguousarray(valid[::step, ::step]).astype(np.uint8)
    t = transform @ Affine.scale(step)
    polys = [shape(g) for g, v in shapes(small, mask=small > 0, transform=t) if v == 1]
    if not polys:
        raise ValueError("scene has no valid pixels")
    geom = shapely.union_all(polys).buffer(0)
    geom = geom.simplify(abs(t.a) * 1.5)
    to_wgs84 = Transformer.from_crs(CRS.from_user_input(crs), CRS.from_epsg(4326), always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(to_wgs84.transform(*xy.T)))


def _gsd_m(crs: RioCRS, transform: Affine) -> float:
    if crs.is_projected:
        return float(abs(transform.a) * crs.linear_units_factor[1])
    return float(abs(transform.a) * 111_320.0)


def _source_signature(src: SourceScene) -> str:
    parts = [src.image, src.label] if src.label else [src.image]
    sig = [f"{p.name}:{p.stat().st_size}" for p in parts]
    if src.corners:
        sig.append(",".join(f"{src.corners[c]:.8f}" for c in CORNER_COLUMNS))
    return "|".join(sig)


def _write_catalog(path: Path, gdf: gpd.GeoDataFrame) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".footprints.", suffix=".parquet.part", dir=path.parent)
    os.close(fd)
    try:
        gdf.to_parquet(tmp, index=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


CATALOG_COLUMNS = [
    "scene_id", "path", "label_path", "datetime", "gsd", "crs", "width", "height", "source",
    "signature", "geometry",
]  # fmt: skip


def ingest(
    data_dir: Path | str,
    storm: str,
    paths: Sequence[Path | str],
    *,
    on_scene: Callable[[str, str], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> IngestReport:
    """Ingest ``paths`` into storm ``storm``; returns what was ingested, unchanged or skipped.

    ``on_scene(scene_id, status)`` is called after each scene (for progress bars), ``on_total``
    once with the number of scenes found. The catalog is rewritten once, at the end, atomically;
    scenes already ingested from the same source are left as they are.
    """
    validate_storm_name(storm)
    storm_dir = Catalog(data_dir).storm_dir(storm)
    (storm_dir / "scenes").mkdir(parents=True, exist_ok=True)
    report = IngestReport(storm)
    fp_path = storm_dir / FOOTPRINTS
    existing = gpd.read_parquet(fp_path) if fp_path.is_file() else None
    known = (
        dict(zip(existing["scene_id"], existing["signature"], strict=True))
        if existing is not None
        else {}
    )
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix=".ingest-", dir=storm_dir) as work:
        sources, skipped = discover(paths, Path(work))
        report.skipped.extend(skipped)
        if on_total:
            on_total(len(sources))
        for src in sources:
            status = "ingested"
            try:
                signature = _source_signature(src)
                scene_cog = storm_dir / "scenes" / f"{src.scene_id}.tif"
                if known.get(src.scene_id) == signature and scene_cog.is_file():
                    report.unchanged.append(src.scene_id)
                    status = "unchanged"
                    continue
                raster = read_source(src)
                if not raster.valid.any():
                    raise ValueError("scene has no valid pixels")
                geom = footprint(raster.valid, raster.transform, raster.crs)
                rgb = raster.rgb.copy()
                # 0 is the nodata value: lift genuinely black valid pixels to 1.
                black = (rgb == 0).all(axis=0) & raster.valid
                rgb[:, black] = 1
                rgb[:, ~raster.valid] = 0
                tags = {"TIFFTAG_DATETIME": raster.datetime} if raster.datetime else None
                _write_cog(
                    rgb, scene_cog, raster.crs, raster.transform, 0, "bilinear", "average", tags
                )
                label_rel = None
                if raster.label is not None:
                    label = raster.label.copy()
                    label[~raster.valid] = NODATA_LABEL
                    label_rel = f"labels/{src.scene_id}.tif"
                    _write_cog(
                        label[None], storm_dir / label_rel, raster.crs, raster.transform,
                        NODATA_LABEL, "nearest", "mode",
                    )  # fmt: skip
                rows.append(
                    {
                        "scene_id": src.scene_id,
                        "path": f"scenes/{src.scene_id}.tif",
                        "label_path": label_rel,
                        "datetime": raster.datetime,
                        "gsd": _gsd_m(raster.crs, raster.transform),
                        "crs": raster.crs.to_string(),
                        "width": int(raster.rgb.shape[2]),
                        "height": int(raster.rgb.shape[1]),
                        "source": src.image.name,
                        "signature": signature,
                        "geometry": geom,
                    }
                )
                report.ingested.append(src.scene_id)
            except Exception as exc:  # noqa: BLE001 — one bad file must not stop the others
                status = "skipped"
                report.skipped.append(Skipped(str(src.image), f"{type(exc).__name__}: {exc}"))
            finally:
                if on_scene:
                    on_scene(src.scene_id, status)
    if rows or existing is None:
        new = gpd.GeoDataFrame(rows, columns=CATALOG_COLUMNS, geometry="geometry", crs=4326)
        if existing is not None:
            keep = existing[~existing["scene_id"].isin(new["scene_id"])]
            new = pd.concat([keep, new], ignore_index=True) if len(keep) else new
        new = gpd.GeoDataFrame(new, geometry="geometry", crs=4326)
        new = new.sort_values("scene_id").reset_index(drop=True)
        if len(new):
            _write_catalog(fp_path, new)
    return report
