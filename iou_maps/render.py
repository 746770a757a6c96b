"""Metric values → tile images: a float ImageData per tile, colour-mapped with rio-tiler."""

from __future__ import annotations

import mercantile
import numpy as np
from mercantile import Tile
from rasterio.crs import CRS
from rio_tiler.colormap import cmap
from rio_tiler.models import ImageData

from iou_maps.classes import METRICS, metric_index

#: Red (0) → yellow → green (1): bad to good.
DEFAULT_COLORMAP = "rdylgn"
WEB_MERCATOR = CRS.from_epsg(3857)


def metric_image(
    values: np.ndarray, has_imagery: np.ndarray, tile: Tile, metric: str, tilesize: int = 256
) -> ImageData:
    """A 1-band float32 tile of ``metric`` from an (n, n, 6) cell grid; masked without imagery.

    Cells are drawn as blocks of tilesize / n pixels (each cell is one analysis tile, or the
    aggregate of its children), so a value at a pixel is exactly the cached number.
    """
    n = values.shape[0]
    if tilesize % n:
        raise ValueError(f"tile size {tilesize} is not a multiple of the {n}-cell grid")
    k = tilesize // n
    band = values[:, :, metric_index(metric)]
    data = np.repeat(np.repeat(band, k, axis=0), k, axis=1).astype(np.float32)
    invalid = np.repeat(np.repeat(~has_imagery | np.isnan(band), k, axis=0), k, axis=1)
    array = np.ma.MaskedArray(data[None], mask=invalid[None], fill_value=np.nan)
    array.data[array.mask] = np.nan
    return ImageData(
        array,
        bounds=mercantile.xy_bounds(tile),
        crs=WEB_MERCATOR,
        band_names=[metric],
        dataset_statistics=[(0.0, 1.0)],
    )


def colorize(
    img: ImageData,
    img_format: str = "PNG",
    colormap: str = DEFAULT_COLORMAP,
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> bytes:
    """Encode a metric tile as a colour-mapped image (transparent where masked)."""
    scaled = ImageData(
        img.array.copy(), bounds=img.bounds, crs=img.crs, band_names=img.band_names
    ).rescale(in_range=((vmin, vmax),))
    return scaled.render(img_format=img_format, colormap=cmap.get(colormap))


def legend(colormap: str = DEFAULT_COLORMAP, stops: int = 11) -> list[dict[str, object]]:
    """Colour stops over [0, 1] for a legend: [{"value": v, "color": "#rrggbb"}, ...]."""
    cm = cmap.get(colormap)
    out = []
    for v in np.linspace(0.0, 1.0, stops):
        r, g, b, _ = cm[int(round(v * 255))]
        out.append({"value": round(float(v), 3), "color": f"#{r:02x}{g:02x}{b:02x}"})
    return out


__all__ = ["DEFAULT_COLORMAP", "METRICS", "colorize", "legend", "metric_image"]
