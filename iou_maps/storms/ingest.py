"""Ingest of NOAA-style imagery into a storm: source scenes → web-optimized COGs + index.

Ingest accepts GeoTIFFs, JPEGs with a world file (+ ``.prj``), and plain JPEGs whose four corner
coordinates come from a NOAA-style catalogue CSV, as folders, files or ``.tar`` archives
(``discovery.py`` finds them, ``georeference.py`` reads them). Every file is written to a
temporary name and renamed, so a crash never leaves a half-written scene or catalog.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from rasterio.crs import CRS as RioCRS
from rasterio.io import MemoryFile
from rasterio.transform import Affine
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles
from rio_tiler.constants import WEB_MERCATOR_TMS

from iou_maps.errors import SourceSceneError
from iou_maps.models.classes import NODATA_LABEL
from iou_maps.storms.catalog import FOOTPRINTS, Catalog, validate_storm_name
from iou_maps.storms.discovery import CORNER_COLUMNS, Skipped, SourceScene, discover
from iou_maps.storms.footprints import footprint, read_footprints, scene_row, write_footprints
from iou_maps.storms.georeference import read_source


@dataclass
class IngestReport:
    """What an ingest did: scenes ingested, unchanged and skipped."""

    storm: str
    ingested: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


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


def _source_signature(src: SourceScene) -> str:
    parts = [src.image, src.label] if src.label else [src.image]
    sig = [f"{p.name}:{p.stat().st_size}" for p in parts]
    if src.corners:
        sig.append(",".join(f"{src.corners[c]:.8f}" for c in CORNER_COLUMNS))
    return "|".join(sig)


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
    existing = read_footprints(fp_path)
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
                    raise SourceSceneError("scene has no valid pixels")
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
                    scene_row(src.scene_id, label_rel, raster, src.image.name, signature, geom)
                )
                report.ingested.append(src.scene_id)
            except Exception as exc:  # noqa: BLE001 — one bad file must not stop the others
                status = "skipped"
                report.skipped.append(Skipped(str(src.image), f"{type(exc).__name__}: {exc}"))
            finally:
                if on_scene:
                    on_scene(src.scene_id, status)
    write_footprints(fp_path, rows, existing)
    return report
