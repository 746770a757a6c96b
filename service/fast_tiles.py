"""Complete metric tiles served from their encoded bytes, ahead of FastAPI.

A complete metric tile (the long Cache-Control, an ETag) is rendered once; its status, body
and headers are then kept under a key of everything its ETag hashes (``HttpCaching.inputs``:
renderer, storm version, model ids, path, canonical query) plus the metric cache's **epoch**,
in this process (an LRU bounded in bytes) and across replicas (the imagery tile cache's
Redis server, ``iou_maps.compute.tile_cache``: it holds re-renderable bytes under its own
``maxmemory``; in the metric server they would make its LRU evict values that cost a model
call each). A request for a kept tile is answered by ``FastTiles``, a pure ASGI middleware,
before routing, dependency resolution or any render; a 304 costs no render either.

The epoch is a token in the metric cache (read again only when Redis says it changed):
flushing that cache (or losing it) makes a new one, so tiles are drawn again from what is
cached then. A re-ingest
changes the storm version and a new model the model ids: either is a new key, never stale
bytes. Incomplete tiles (``no-store``), tiles whose values were just computed (their
``X-IoU-Computed`` is not what a repeat request says) and responses drawn while the metric
cache was unavailable are never kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis
from anyio import to_thread
from cachetools import LRUCache
from redis.connection import ConnectionInterface
from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iou_maps.compute.tile_cache import CachedTile, TileCache, metric_tile_key
from service.http_cache import TILE_CACHE_HEADER, HttpCaching, etag_matches

#: The metric tile route's paths (``service.factories.metric_tiles.METRIC_TILE_PATH``).
METRIC_TILE = re.compile(r"^/storms/([^/]+)/metrics/[^/]+/tiles/[^/]+/\d+/\d+/\d+\.\w+$")
#: The metric cache's epoch: a new token whenever that cache was flushed or lost.
EPOCH_KEY = "iou-maps:tile-bytes-epoch"
#: Where Redis pushes invalidations for a tracking connection that redirects them (RESP2).
INVALIDATIONS = "__redis__:invalidate"
#: Bytes of encoded tiles each API process keeps (about 2,000 PNG tiles of 30 KB).
LOCAL_BYTES = 64 * 2**20
#: After a metric cache error, the fast path stands aside this long (no blocking retries).
BACKOFF_S = 1.0

_HIT = (TILE_CACHE_HEADER.lower().encode(), b"hit")
_DROPPED = {b"date", b"server", TILE_CACHE_HEADER.lower().encode()}


@dataclass(frozen=True)
class TileBytes:
    """A rendered response: status, body and the headers the full path sent."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    etag: str
    cache_control: str

    @property
    def size(self) -> int:
        """Bytes it takes, roughly (body and headers)."""
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + 64

    def shared(self) -> CachedTile:
        """As the tile cache keeps it (the HTTP status in the media type's field)."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers}
        return CachedTile(self.body, str(self.status), headers)

    @classmethod
    def from_shared(cls, tile: CachedTile) -> TileBytes | None:
        """From the tile cache (None for what was not kept by ``shared``)."""
        if not tile.media_type.isdigit():
            return None
        headers = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in tile.headers.items())
        return kept(int(tile.media_type), headers, tile.content)


def kept(status: int, headers: tuple[tuple[bytes, bytes], ...], body: bytes) -> TileBytes | None:
    """The response to keep, or None: only a complete tile drawn from cached values, as a
    repeat request would get it (its ETag and long Cache-Control, nothing just computed)."""
    if status not in (200, 204):
        return None
    named = {k.lower(): v for k, v in headers}
    etag, control = named.get(b"etag"), named.get(b"cache-control", b"no-store")
    if etag is None or b"no-store" in control or b"retry-after" in named:
        return None
    if named.get(b"x-iou-computed", b"0") != b"0" or named.get(b"x-iou-cache", b"ok") != b"ok":
        return None
    headers = tuple((k.lower(), v) for k, v in headers if k.lower() not in _DROPPED)
    return TileBytes(status, body, headers, etag.decode("latin-1"), control.decode("latin-1"))


class TileByteCache:
    """Encoded tiles: an LRU of ``local_bytes`` in this process, over the shared tile cache."""

    def __init__(self, shared: TileCache | None, local_bytes: int = LOCAL_BYTES) -> None:
        self.shared = shared
        self.local: LRUCache[str, TileBytes] = LRUCache(local_bytes, getsizeof=lambda t: t.size)

    def get_local(self, key: str) -> TileBytes | None:
        """The tile kept in this process under ``key``."""
        return self.local.get(key)

    def put_local(self, key: str, tile: TileBytes) -> None:
        """Keep ``tile`` in this process (a tile over the whole bound is not kept)."""
        if tile.size <= self.local.maxsize:
            self.local[key] = tile

    def get_shared(self, key: str) -> TileBytes | None:
        """The tile kept by any replica (blocking: run it in a thread)."""
        if self.shared is None:
            return None
        got = self.shared.get(key)
        return TileBytes.from_shared(got) if got is not None else None

    def put_shared(self, key: str, tile: TileBytes) -> None:
        """Keep ``tile`` for every replica (blocking: run it in a thread)."""
        if self.shared is not None:
            self.shared.put(key, tile.shared())


class Epoch:
    """The metric cache's epoch token (None while that cache is unavailable).

    Read once, then kept until Redis says the key changed: two connections of this process
    ask it (``CLIENT TRACKING ... BCAST``, redirected to a subscriber), and each request only
    polls them (no round trip). A flush or a write of the key is pushed to the subscriber as
    Redis answers the command, before the one who flushed hears back, so a request sent after
    a flush finds the message waiting. A lost connection counts as a change. Where the server
    refuses tracking, the token is read once per event loop pass instead (every request of a
    pass reached this process before the read)."""

    def __init__(self, client: redis.Redis | None) -> None:
        self.client = client
        self._down_until = 0.0
        self._token: str | None = None
        self._tracking = True
        self._watch: list[ConnectionInterface] = []  # the subscriber, the tracking connection

    def _forget(self) -> None:
        self._token = None

    def _watch_key(self, client: redis.Redis) -> None:
        """Have Redis push any change of the key (or a flush) to a subscriber of ours."""
        pool = client.connection_pool
        sub, tracker = pool.make_connection(), pool.make_connection()
        self._watch = [sub, tracker]
        sub.send_command("CLIENT", "ID")
        sub_id = sub.read_response()
        sub.send_command("SUBSCRIBE", INVALIDATIONS)
        sub.read_response(push_request=True)  # redis-py reads this answer as a push
        tracker.send_command(
            "CLIENT", "TRACKING", "ON", "REDIRECT", sub_id, "BCAST", "PREFIX", EPOCH_KEY
        )
        tracker.read_response()

    def _unwatch(self) -> None:
        for conn in self._watch:
            conn.disconnect()
        self._watch = []

    def close(self) -> None:
        """Drop the two watching connections: an embedded Redis stops only when no client of
        this process is left connected (``metric_store.release``)."""
        self._unwatch()
        self._token = None

    def _changed(self) -> bool:
        """Whether Redis pushed something (or closed a connection) since the last read."""
        try:
            return any(conn.can_read(timeout=0) for conn in self._watch)
        except (redis.RedisError, OSError):
            return True

    def current(self) -> str | None:
        """The token, made anew if the cache lost it; called on the event loop."""
        if self.client is None:
            return "no-cache"  # nothing cached, nothing to flush: values come from the model
        if self._token is not None and not (self._watch and self._changed()):
            return self._token
        self._token = None
        self._unwatch()
        if time.monotonic() < self._down_until:
            return None
        try:
            if self._tracking:
                try:
                    self._watch_key(self.client)  # before the read: no change goes unseen
                except redis.ResponseError:
                    self._unwatch()
                    self._tracking = False  # refused (an older or restricted server)
            got = self.client.get(EPOCH_KEY)
            if got is None:
                self.client.set(EPOCH_KEY, secrets.token_hex(8), nx=True)
                got = self.client.get(EPOCH_KEY)
        except (redis.RedisError, OSError):
            self._unwatch()
            self._down_until = time.monotonic() + BACKOFF_S
            return None
        self._token = got.decode() if isinstance(got, bytes) else str(got)
        if not self._watch:
            asyncio.get_running_loop().call_soon(self._forget)
        return self._token


class FastTiles:
    """Pure ASGI middleware: a kept metric tile answered from its bytes (or a 304), anything
    else passed on; a complete tile the full path renders is kept on its way out."""

    def __init__(
        self, app: ASGIApp, caching: HttpCaching, cache: TileByteCache, epoch: Epoch
    ) -> None:
        self.app = app
        self.caching = caching
        self.cache = cache
        self.epoch = epoch

    def key(self, scope: Scope) -> str | None:
        """The key of a metric tile request, or None where the full path decides."""
        if scope["type"] != "http" or scope["method"] != "GET":
            return None
        path: str = scope["path"]
        match = METRIC_TILE.match(path)
        if match is None:
            return None
        storm = self.caching.storm_of(match.group(1))
        if storm is None:
            return None
        epoch = self.epoch.current()
        if epoch is None:
            return None
        query = QueryParams(scope["query_string"]).multi_items()
        inputs = self.caching.inputs(storm, path, query, model=True)
        digest = hashlib.blake2b(f"{inputs}\x1f{epoch}".encode(), digest_size=16).hexdigest()
        return metric_tile_key(storm.name, storm.version, digest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer from the kept bytes, or pass on and keep what comes back."""
        key = self.key(scope)
        if key is None:
            await self.app(scope, receive, send)
            return
        tile = self.cache.get_local(key)
        if tile is None and self.cache.shared is not None:
            tile = await to_thread.run_sync(self.cache.get_shared, key)
            if tile is not None:
                self.cache.put_local(key, tile)
        if tile is not None:
            await self.answer(scope, send, tile)
            return
        await self.render(scope, receive, send, key)

    @staticmethod
    async def answer(scope: Scope, send: Send, tile: TileBytes) -> None:
        """The kept response, or a 304 if the client holds its ETag (as the full path does)."""
        if_none_match = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"if-none-match"), None
        )
        if etag_matches(if_none_match, tile.etag):
            headers = [
                (b"etag", tile.etag.encode()),
                (b"cache-control", tile.cache_control.encode()),
            ]
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        start: dict[str, Any] = {
            "type": "http.response.start",
            "status": tile.status,
            "headers": [*tile.headers, _HIT],
        }
        await send(start)
        await send({"type": "http.response.body", "body": tile.body})

    async def render(self, scope: Scope, receive: Receive, send: Send, key: str) -> None:
        """The full path; its response kept if it is a complete tile."""
        status = 0
        headers: tuple[tuple[bytes, bytes], ...] = ()
        body: list[bytes] = []

        async def keep(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                # A copy now: outer middleware (CORS) edit the message's list in place.
                status, headers = message["status"], tuple(message.get("headers", ()))
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, keep)
        tile = kept(status, headers, b"".join(body))
        if tile is None:
            return
        self.cache.put_local(key, tile)
        if self.cache.shared is not None:
            await to_thread.run_sync(self.cache.put_shared, key, tile)
