"""Predicted metrics for every analysis tile of a storm, exported for kepler.gl and QGIS."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np

from iou_maps.models.classes import ClassSet
from iou_maps.models.evaluation import ChipSet, tile_geometries, tiles_frame


def predict_table(
    chips: ChipSet, predict, model_id: str, classes: ClassSet, batch_size: int = 32
) -> gpd.GeoDataFrame:
    """One row per analysis tile: tile, geometry, scenes, the predicted metrics of the model's
    ``classes``, model id."""
    parts = [predict(chips.images[i : i + batch_size]) for i in range(0, len(chips), batch_size)]
    values = np.concatenate(parts) if parts else np.zeros((0, classes.nmetrics), np.float32)
    cols = tiles_frame(chips.storm, chips.tiles, chips.scenes, chips.primary_scene)
    for i, m in enumerate(classes.metrics):
        cols[m] = values[:, i].astype(float).tolist()
    cols["model_id"] = [model_id] * len(chips)
    return gpd.GeoDataFrame(cols, geometry=tile_geometries(chips.tiles), crs=4326)


def write_exports(table: gpd.GeoDataFrame, out: Path) -> list[Path]:
    """GeoParquet at ``out`` (.parquet), plus GeoJSON and CSV (WKT geometry) beside it.

    kepler.gl loads the GeoJSON and the CSV (it reads a WKT ``geometry`` column); QGIS opens all
    three. Files are written to a temporary name and renamed.
    """
    out = Path(out)
    base = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for path, write in (
        (base.with_suffix(".parquet"), lambda p: table.to_parquet(p, index=False)),
        (base.with_suffix(".geojson"), lambda p: table.to_file(p, driver="GeoJSON")),
        (
            base.with_suffix(".csv"),
            lambda p: table.assign(geometry=table.geometry.to_wkt()).to_csv(p, index=False),
        ),
    ):
        tmp = path.with_name(f".{path.name}.part")
        write(tmp)
        tmp.replace(path)
        written.append(path)
    return written
