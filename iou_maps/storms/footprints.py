"""A storm's footprints index (``footprints.parquet``): one GeoParquet row per scene.

Each row has the scene's footprint (its valid-data area in EPSG:4326, not just its bounding
box), its files relative to the storm folder, time, ground sampling, grid and source
signature. ``catalog.Storm`` reads the index; ingest writes it here, atomically.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS, Transformer
from rasterio.crs import CRS as RioCRS
from rasterio.features import shapes
from rasterio.transform import Affine
from shapely.geometry import shape

from iou_maps.errors import SourceSceneError
from iou_maps.storms.georeference import Raster

#: Footprints are traced on a mask decimated to at most this many pixels a side.
FOOTPRINT_MASK_SIZE = 1024
FOOTPRINT_COLUMNS = [
    "scene_id", "path", "label_path", "datetime", "gsd", "crs", "width", "height", "source",
    "signature", "geometry",
]  # fmt: skip


def footprint(valid: np.ndarray, transform: Affine, crs: RioCRS) -> shapely.Geometry:
    """The valid-data area as a (multi)polygon in EPSG:4326 — not just the bounding box."""
    step = max(1, int(np.ceil(max(valid.shape) / FOOTPRINT_MASK_SIZE)))
    small = np.ascontiguousarray(valid[::step, ::step]).astype(np.uint8)
    t = transform @ Affine.scale(step)
    polys = [shape(g) for g, v in shapes(small, mask=small > 0, transform=t) if v == 1]
    if not polys:
        raise SourceSceneError("scene has no valid pixels")
    geom = shapely.union_all(polys).buffer(0)
    geom = geom.simplify(abs(t.a) * 1.5)
    to_wgs84 = Transformer.from_crs(CRS.from_user_input(crs), CRS.from_epsg(4326), always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(to_wgs84.transform(*xy.T)))


def gsd_m(crs: RioCRS, transform: Affine) -> float:
    """Ground sampling distance in metres of a grid's pixels (degrees: at the equator)."""
    if crs.is_projected:
        return float(abs(transform.a) * crs.linear_units_factor[1])
    return float(abs(transform.a) * 111_320.0)


def scene_row(
    scene_id: str,
    label_path: str | None,
    raster: Raster,
    source: str,
    signature: str,
    geometry: shapely.Geometry,
) -> dict[str, Any]:
    """The index row of scene ``scene_id`` (its COG at ``scenes/<scene_id>.tif``)."""
    return {
        "scene_id": scene_id,
        "path": f"scenes/{scene_id}.tif",
        "label_path": label_path,
        "datetime": raster.datetime,
        "gsd": gsd_m(raster.crs, raster.transform),
        "crs": raster.crs.to_string(),
        "width": int(raster.rgb.shape[2]),
        "height": int(raster.rgb.shape[1]),
        "source": source,
        "signature": signature,
        "geometry": geometry,
    }


def read_footprints(path: Path) -> gpd.GeoDataFrame | None:
    """The index at ``path`` as stored (paths relative to the storm folder); None without one."""
    return gpd.read_parquet(path) if path.is_file() else None


def write_footprints(
    path: Path, rows: list[dict[str, Any]], existing: gpd.GeoDataFrame | None
) -> None:
    """Write ``existing`` with ``rows`` replacing its rows of the same scenes, sorted by scene id.

    Nothing is written without new rows (an unchanged index keeps its bytes, hence the storm's
    version), nor when the result is empty. Written to a temporary name and renamed, so a
    crash never leaves a half-written index.
    """
    if not rows and existing is not None:
        return
    new = gpd.GeoDataFrame(rows, columns=FOOTPRINT_COLUMNS, geometry="geometry", crs=4326)
    if existing is not None:
        keep = existing[~existing["scene_id"].isin(new["scene_id"])]
        new = pd.concat([keep, new], ignore_index=True) if len(keep) else new
    new = gpd.GeoDataFrame(new, geometry="geometry", crs=4326)
    new = new.sort_values("scene_id").reset_index(drop=True)
    if not len(new):
        return
    fd, tmp = tempfile.mkstemp(prefix=".footprints.", suffix=".parquet.part", dir=path.parent)
    os.close(fd)
    try:
        new.to_parquet(tmp, index=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
