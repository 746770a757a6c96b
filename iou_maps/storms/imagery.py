"""Imagery tiles outside the web layer: the default rendering of a storm's imagery tile, and
``precompute --imagery``, which fills the tile cache (iou_maps.compute.tile_cache) for the low
zooms.

``render_tile`` does what titiler.mosaic's tile endpoint does for a request without query
parameters (the service's StormMosaicFactory: FirstFill pixel selection, the scenes' own
nodata and resampling, no rescale or colour formula, titiler's ``render_image``), so a tile
filled here is the tile the service renders: tests/test_http_cache.py checks it byte for byte.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import mercantile
from rio_tiler.errors import EmptyMosaicError, NoAssetFoundError
from rio_tiler.utils import CRS_to_uri
from titiler.core.resources.enums import ImageType
from titiler.core.utils import render_image
from titiler.mosaic.factory import MOSAIC_THREADS

from iou_maps.compute.tile_cache import CachedTile, TileCache, tile_key
from iou_maps.storms.mosaic import FirstFill
from iou_maps.storms.open_storms import LoadedStorm

#: The tile matrix set of the imagery endpoints (and of the analysis grid).
TMS = "WebMercatorQuad"
#: Formats ``precompute --imagery`` fills by default: the viewer's (WebP) and the README's
#: examples' (PNG).
DEFAULT_FORMATS = (ImageType.webp, ImageType.png)


def render_tile(loaded: LoadedStorm, tile: mercantile.Tile, fmt: ImageType) -> CachedTile | None:
    """The imagery tile of ``tile`` as the service renders it without query parameters
    (None: no scene data there, the service's 204)."""
    try:
        image, _assets = loaded.backend.tile(
            tile.x, tile.y, tile.z,
            tilesize=None, search_options={}, pixel_selection=FirstFill(),
            threads=MOSAIC_THREADS,
        )  # fmt: skip
    except (NoAssetFoundError, EmptyMosaicError):
        return None
    content, media_type = render_image(image, output_format=fmt, colormap=None)
    headers: dict[str, str] = {}
    if image.bounds is not None:
        headers["Content-Bbox"] = ",".join(map(str, image.bounds))
    if uri := CRS_to_uri(image.crs):
        headers["Content-Crs"] = f"<{uri}>"
    return CachedTile(content, media_type, headers)


def cached_zooms(loaded: LoadedStorm, below: int) -> range:
    """The zooms whose imagery tiles the service keeps in the tile cache: the storm's lowest
    up to ``below`` zooms under its native one (deeper tiles read a few blocks each)."""
    backend = loaded.backend
    return range(backend.minzoom, backend.maxzoom - below + 1)


def imagery_key(loaded: LoadedStorm, tile: mercantile.Tile, fmt: str, query: str = "") -> str:
    """The tile cache key of an imagery tile of this storm's current catalogue version."""
    storm = loaded.storm
    return tile_key(storm.name, storm.version, TMS, tile.z, tile.x, tile.y, fmt, query)


@dataclass
class ImagerySummary:
    """What ``precompute_imagery`` did."""

    storm: str
    zooms: tuple[int, int]
    formats: tuple[str, ...]
    tiles: int = 0  # tile addresses under the storm's footprints
    rendered: int = 0  # tiles rendered and kept (one per format)
    kept_bytes: int = 0  # their size
    already_cached: int = 0
    empty: int = 0  # addresses without scene data (the service answers 204)
    seconds: float = 0.0


def precompute_imagery(
    loaded: LoadedStorm,
    cache: TileCache,
    zooms: Sequence[int],
    formats: Sequence[ImageType] = DEFAULT_FORMATS,
    *,
    refresh: bool = False,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> ImagerySummary:
    """Render and keep the imagery tiles of ``zooms`` under the storm's footprints, in each
    of ``formats``; what is kept already is skipped unless ``refresh``. ``progress(done,
    total)`` after each tile address."""
    start = time.perf_counter()
    storm = loaded.storm
    tiles = [
        t
        for z in zooms
        for t in mercantile.tiles(*storm.bounds, zooms=[z])
        if loaded.backend.assets_for_tile(t.x, t.y, t.z)
    ]
    summary = ImagerySummary(
        storm.name,
        (min(zooms), max(zooms)) if zooms else (0, -1),
        tuple(f.value for f in formats),
        tiles=len(tiles),
    )
    done = 0

    def fill(tile: mercantile.Tile) -> tuple[int, int, int, int]:
        """(tiles kept, their bytes, already kept, empty) of one address."""
        keys = [imagery_key(loaded, tile, f.value) for f in formats]
        present = [False] * len(keys) if refresh else cache.contains(keys)
        todo = [(f, k) for f, k, p in zip(formats, keys, present, strict=True) if not p]
        rendered = size = 0
        for fmt, key in todo:
            got = render_tile(loaded, tile, fmt)
            if got is None:
                return 0, 0, len(keys) - len(todo), 1
            if cache.put(key, got):
                rendered += 1
                size += len(got.content)
        return rendered, size, len(keys) - len(todo), 0

    # Lowest zooms first: they cost the most to render and serve the widest views.
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="imagery") as pool:
        for rendered, size, cached, empty in pool.map(fill, tiles):
            summary.rendered += rendered
            summary.kept_bytes += size
            summary.already_cached += cached
            summary.empty += empty
            done += 1
            if progress:
                progress(done, len(tiles))
    summary.seconds = time.perf_counter() - start
    return summary
