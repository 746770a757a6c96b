"""Cloud-Optimized GeoTIFF: a metric layer's values as float32 pixels, one (or a block) per
analysis tile, whose overviews are the service's aggregated cells."""

from __future__ import annotations

import math
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mercantile
import numpy as np
from mercantile import Tile

from iou_maps.compute.engine import GRID_LEVELS, MetricEngine
from iou_maps.compute.plan import tiles_of
from iou_maps.errors import ExportError, UnsupportedLayer
from iou_maps.exports.filling import fill_cache
from iou_maps.exports.format import ExportFormat
from iou_maps.exports.maps import Map, MetricMap
from iou_maps.exports.metadata import GENERATOR
from iou_maps.exports.options import ExportOptions, Progress
from iou_maps.exports.replace import replacing
from iou_maps.exports.summary import ExportSummary
from iou_maps.exports.tiles import tiles_at
from iou_maps.layers.registry import Source
from iou_maps.layers.render import WEB_MERCATOR
from iou_maps.storms.mosaic import metric_zoom_range

__all__ = ["COG", "COG_BLOCKSIZE", "CogFormat", "CogGrid"]

#: Block edge (px) of the COG, and the size below which it needs no more overviews.
COG_BLOCKSIZE = 256


@dataclass(frozen=True)
class CogGrid:
    """The COG's pixel grid: analysis tiles ``x0..x1-1`` × ``y0..y1-1`` at ``zoom``, each
    ``pixels_per_tile`` px wide, and ``levels`` overviews (level k: zoom - k), the origin
    aligned so that each overview pixel block is exactly one aggregate cell."""

    zoom: int
    x0: int
    y0: int
    x1: int
    y1: int
    pixels_per_tile: int
    levels: int

    @classmethod
    def of(
        cls, tiles: Sequence[Tile], zoom: int, lowest_zoom: int, pixels_per_tile: int
    ) -> CogGrid:
        """The grid of ``tiles`` (analysis tiles at ``zoom``), overviews down to at most
        ``lowest_zoom``."""
        xs = [t.x for t in tiles]
        ys = [t.y for t in tiles]
        span = max(max(xs) - min(xs) + 1, max(ys) - min(ys) + 1) * pixels_per_tile
        # Overviews until the image fits in a block (as GDAL's default), at most down to
        # the storm's lowest zoom (the aggregates precompute writes).
        levels = 0
        while levels < zoom - lowest_zoom and span / 2**levels > COG_BLOCKSIZE:
            levels += 1
        step = 2**levels
        x0, y0 = min(xs) // step * step, min(ys) // step * step
        x1, y1 = (max(xs) // step + 1) * step, (max(ys) // step + 1) * step
        return cls(zoom, x0, y0, x1, y1, pixels_per_tile, levels)

    def shape(self, level: int = 0) -> tuple[int, int]:
        """(height, width) of ``level``."""
        k = 2**level
        return (self.y1 - self.y0) // k * self.pixels_per_tile, (
            self.x1 - self.x0
        ) // k * self.pixels_per_tile

    def transform(self, level: int = 0) -> Any:
        """The affine transform of ``level`` (rasterio's)."""
        from rasterio.transform import from_origin

        left, _, _, top = mercantile.xy_bounds(Tile(self.x0, self.y0, self.zoom))
        size = 2 * math.pi * 6378137 / 2**self.zoom  # a tile's edge in metres
        res = size * 2**level / self.pixels_per_tile
        return from_origin(left, top, res, res)


class CogFormat(ExportFormat):
    """Cloud-Optimized GeoTIFFs of a metric layer's values."""

    name = "cog"
    suffixes = (".tif", ".tiff")
    media_type = "image/tiff; application=geotiff; profile=cloud-optimized"
    title = "Cloud-Optimized GeoTIFF"
    holds = "values"

    def check(self, layer: Map, options: ExportOptions) -> None:
        """UnsupportedLayer for imagery; ExportError for ``pixels_per_tile`` out of range."""
        if not isinstance(layer, MetricMap):
            raise UnsupportedLayer("the COG holds metric values only")
        if not 1 <= options.pixels_per_tile <= 256:
            raise ExportError(f"pixels_per_tile {options.pixels_per_tile} is outside 1..256")

    def write(
        self,
        engine: MetricEngine,
        layer: Map,
        out: Path,
        options: ExportOptions,
        *,
        fill_progress: Progress | None = None,
        progress: Progress | None = None,
    ) -> ExportSummary:
        """A COG of the layer's values (``_write_cog``)."""
        self.check(layer, options)
        assert isinstance(layer, MetricMap)  # check refuses the others
        return _write_cog(
            engine, layer, out, pixels_per_tile=options.pixels_per_tile,
            fill_progress=fill_progress, progress=progress,
        )  # fmt: skip

    def read_metadata(self, path: Path) -> dict[str, Any]:
        """The raster's tags, under the archives' metadata keys."""
        import rasterio

        with rasterio.open(path) as ds:
            tags = ds.tags()
        return {
            "generator": tags.get("GENERATOR", ""),
            "storm": tags.get("STORM"),
            "layer": "metric",
            "metric": tags.get("METRIC"),
            "classes": tags["CLASSES"].split(",") if tags.get("CLASSES") else None,
            "source": tags.get("SOURCE"),
            "model_id": tags.get("MODEL_ID"),
            "analysis_zoom": int(tags.get("ANALYSIS_ZOOM", 0)),
            "pixels_per_tile": int(tags.get("PIXELS_PER_TILE", 1)),
        }


def _write_cog(
    engine: MetricEngine,
    layer: MetricMap,
    out: Path,
    *,
    pixels_per_tile: int = 1,
    fill_progress: Progress | None = None,
    progress: Progress | None = None,
) -> ExportSummary:
    """A Cloud-Optimized GeoTIFF of ``layer``'s values: float32, EPSG:3857, one pixel (or
    ``pixels_per_tile`` × ``pixels_per_tile``) per analysis tile, NaN where there is no
    value, overviews that are the service's aggregated cells (read through the same
    ``tile_grid`` as its tiles), band description, storm, source and model id in the tags.

    rio-cogeo's ``cog_translate`` computes overviews itself by GDAL resampling (an unweighted
    average of the level above, which is not the service's count-weighted, NaN-aware mean):
    so each level is written here, and GDAL's COG driver lays them out from a VRT that lists
    them as the band's overviews, with rio-cogeo's deflate profile.
    """
    import rasterio
    from rasterio.shutil import copy as rio_copy
    from rio_cogeo.profiles import cog_profiles

    store_storm = engine.storm(layer.storm).storm
    report = fill_cache(
        engine, layer.storm, source=layer.source, progress=fill_progress, metric=layer.metric
    )
    za = engine.analysis_zoom
    lowest = metric_zoom_range(store_storm, za)[0]
    tiles = tiles_of(store_storm, za)
    if not tiles:
        raise ExportError(f"nothing to export: storm {layer.storm!r} has no analysis tile")
    grid = CogGrid.of(tiles, za, lowest, pixels_per_tile)
    per_level = [tiles_at(store_storm, za - k - GRID_LEVELS) for k in range(grid.levels + 1)]
    total = sum(len(ts) for ts in per_level)
    done = 0
    start = time.perf_counter()
    profile = cog_profiles.get("deflate")
    out.parent.mkdir(parents=True, exist_ok=True)  # its levels are written beside it first
    with tempfile.TemporaryDirectory(prefix="iou-maps-cog-", dir=out.parent) as tmpdir:
        paths = []
        for level, level_tiles in enumerate(per_level):
            path = Path(tmpdir) / f"level{level}.tif"
            height, width = grid.shape(level)
            with rasterio.open(
                path, "w", driver="GTiff", width=width, height=height, count=1,
                dtype="float32", crs=WEB_MERCATOR, transform=grid.transform(level),
                nodata=float("nan"), tiled=True, blockxsize=COG_BLOCKSIZE,
                blockysize=COG_BLOCKSIZE, compress="DEFLATE", predictor=3,
            ) as dst:  # fmt: skip
                dst.write(np.full((height, width), np.nan, np.float32), 1)
                for tile in level_tiles:
                    _write_cells(engine, layer, grid, level, tile, dst)
                    done += 1
                    if progress:
                        progress(done, total)
            paths.append(path)
        vrt = Path(tmpdir) / "levels.vrt"
        vrt.write_text(_levels_vrt(grid, paths, layer, engine))
        with replacing(out) as tmp:
            rio_copy(
                str(vrt), str(tmp), driver="COG", compress=profile["compress"],
                predictor="FLOATING_POINT", blocksize=COG_BLOCKSIZE,
                overviews="FORCE_USE_EXISTING", bigtiff="IF_SAFER",
            )  # fmt: skip
    return ExportSummary(
        out, "cog", total, out.stat().st_size, (za - grid.levels, za),
        time.perf_counter() - start, report,
    )  # fmt: skip


def _write_cells(
    engine: MetricEngine, layer: MetricMap, grid: CogGrid, level: int, tile: Tile, dst: Any
) -> None:
    """The cells of metric tile ``tile`` (at zoom level's zoom - 4) into overview ``level``."""
    from rasterio.windows import Window

    cells = engine.tile_grid(layer.storm, tile, 0, Source(layer.source))
    if cells.missing:
        raise ExportError(
            f"tile {tile.z}/{tile.x}/{tile.y}: {cells.missing} value(s) missing from the cache"
        )
    if not cells.has_imagery.any():
        return
    band = np.where(
        cells.has_imagery, cells.values[:, :, engine.classes.metric_index(layer.metric)], np.nan
    )
    n = band.shape[0]
    ppt = grid.pixels_per_tile
    # Cell (0, 0) of the tile, in this level's cells from the grid's origin.
    col = tile.x * n - (grid.x0 >> level)
    row = tile.y * n - (grid.y0 >> level)
    height, width = grid.shape(level)
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + n, width // ppt), min(row + n, height // ppt)
    if c1 <= c0 or r1 <= r0:
        return
    part = band[r0 - row : r1 - row, c0 - col : c1 - col].astype(np.float32)
    pixels = np.repeat(np.repeat(part, ppt, axis=0), ppt, axis=1)
    dst.write(pixels, 1, window=Window(c0 * ppt, r0 * ppt, pixels.shape[1], pixels.shape[0]))


def _levels_vrt(grid: CogGrid, paths: list[Path], layer: MetricMap, engine: MetricEngine) -> str:
    """A VRT of the base level whose band lists the other levels as its overviews."""
    height, width = grid.shape(0)
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    ET.SubElement(root, "SRS").text = WEB_MERCATOR.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(
        repr(v) for v in grid.transform(0).to_gdal()
    )
    tags = ET.SubElement(root, "Metadata")
    for key, value in {
        "STORM": layer.storm,
        "METRIC": layer.metric,
        "CLASSES": ",".join(engine.classes.names),
        "SOURCE": layer.source,
        "MODEL_ID": engine.sources.source_id(Source(layer.source)),
        "ANALYSIS_ZOOM": str(engine.analysis_zoom),
        "PIXELS_PER_TILE": str(grid.pixels_per_tile),
        "OVERVIEWS": "aggregates of the analysis tiles as the service shows them (mean of "
        "the tiles with a value, weighted by their counts), one level per zoom",
        "GENERATOR": GENERATOR,
        "AREA_OR_POINT": "Area",
    }.items():
        ET.SubElement(tags, "MDI", key=key).text = value
    band = ET.SubElement(root, "VRTRasterBand", dataType="Float32", band="1")
    ET.SubElement(band, "Description").text = layer.metric
    ET.SubElement(band, "NoDataValue").text = "nan"
    band_tags = ET.SubElement(band, "Metadata")
    ET.SubElement(band_tags, "MDI", key="SOURCE").text = layer.source
    source = ET.SubElement(band, "SimpleSource")
    ET.SubElement(source, "SourceFilename", relativeToVRT="1").text = paths[0].name
    ET.SubElement(source, "SourceBand").text = "1"
    for path in paths[1:]:
        overview = ET.SubElement(band, "Overview")
        ET.SubElement(overview, "SourceFilename", relativeToVRT="1").text = path.name
        ET.SubElement(overview, "SourceBand").text = "1"
    return ET.tostring(root, encoding="unicode")


COG = CogFormat()
