"""Storms on disk: their names, folders and footprints index.

Layout under the data directory (see docs/configuration.md)::

    storms/<storm>/scenes/<scene_id>.tif     Cloud-Optimized GeoTIFF, RGB uint8, nodata 0
    storms/<storm>/labels/<scene_id>.tif     COG, class ids, nodata 255 (optional)
    storms/<storm>/footprints.parquet        GeoParquet index of the scenes (EPSG:4326)

``ingest.py`` writes that layout; this module only reads it.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from iou_maps.errors import InvalidStormName, StormNotFound

STORM_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
FOOTPRINTS = "footprints.parquet"


def validate_storm_name(name: str) -> str:
    """``name`` if it is a valid storm name, else InvalidStormName (checked before any disk I/O)."""
    if not isinstance(name, str) or not STORM_NAME_RE.fullmatch(name):
        raise InvalidStormName(
            f"invalid storm name {name!r}: use 1-64 characters of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return name


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
