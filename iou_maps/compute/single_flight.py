"""Each analysis tile computed once, however many requests and processes ask for it.

- **In this process**: the first request for a tile takes its slot (a future); concurrent
  requests for it wait on that future.
- **Across processes** (API workers, replicas, precompute): before computing, a request takes
  the Redis lock of each block of tiles it computes (``MetricStore.lock``: SET NX with an
  expiry and a token) and keeps it until the values are stored. A request that finds a block
  locked waits for its values, polling the cache (at most ``lock_wait`` seconds, or until the
  holder lets go: done, or dead and expired), then computes what is still missing itself.
- **Behind the answer**: computed values are stored in a writer thread after the caller has
  them; the slots and locks stay taken until then, so nobody computes them again meanwhile.

Without Redis every tile is computed in the process that asks, as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import redis
from mercantile import Tile
from redis.lock import Lock

from iou_maps.compute.computed import Computed, Computer
from iou_maps.compute.metric_store import Entry, GuardedStore, MetricStore

#: Longest wait for another process's values before computing them here.
LOCK_WAIT = 30.0
#: First and longest pause between polls of the cache while waiting.
POLL_FIRST, POLL_MAX = 0.01, 0.1


class SingleFlight:
    """Computes tiles with ``computer``, each once, and stores them in ``cache``."""

    def __init__(
        self, computer: Computer, cache: GuardedStore | None, lock_wait: float = LOCK_WAIT
    ) -> None:
        self.computer = computer
        self.cache = cache
        self.lock_wait = lock_wait
        #: Model calls and tiles computed through this object (this process).
        self.model_calls = 0
        self.tiles_computed = 0
        self._slots: dict[tuple[str, Tile], Future[Entry]] = {}
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="cache-writer")

    def close(self) -> None:
        """Wait for the values handed to the writer to be stored."""
        self._writer.shutdown(wait=True)

    def flush(self) -> None:
        """Wait until every computed value handed to the writer is stored (or has failed)."""
        self._writer.submit(lambda: None).result()

    def entries(
        self, storm_name: str, tiles: Sequence[Tile], stores_seen: int | None = None
    ) -> tuple[dict[Tile, Entry], int]:
        """Entries of ``tiles``, and how many were ready-made (stored or computed by another
        request before this one asked). ``stores_seen``: the cache's store count before the
        caller's own cache read (the cache is not read again if nothing was stored since)."""
        mine: list[Tile] = []
        theirs: dict[Tile, Future[Entry]] = {}
        ready = 0
        with self._lock:
            for t in tiles:
                slot = self._slots.get((storm_name, t))
                if slot is None:
                    self._slots[(storm_name, t)] = Future()
                    mine.append(t)
                else:
                    theirs[t] = slot
                    ready += slot.done()  # computed, its value on its way to Redis
        result: dict[Tile, Entry] = {}
        handed_off = False
        try:
            if self.cache is not None and stores_seen != self.cache.stores:
                result.update(self.cache.get_many(storm_name, mine))
            ready += len(result)
            todo = [t for t in mine if t not in result]
            computed, locks, stored = (
                self._compute(storm_name, todo) if todo else (Computed(), [], {})
            )
            result.update(stored)
            ready += len(stored)
            result.update(computed.entries)
            for t in mine:
                if t in result:
                    self._slots[(storm_name, t)].set_result(result[t])
            handed_off = self._store(storm_name, computed, locks, mine)
            if computed.failed:
                raise next(iter(computed.failed.values()))
        except BaseException as exc:
            for t in mine:
                slot = self._slots[(storm_name, t)]
                if not slot.done():
                    slot.set_exception(exc)
            raise
        finally:
            if not handed_off:
                self._release(storm_name, mine)
        for t, slot in theirs.items():
            result[t] = slot.result()
        return result, ready

    # ------------------------------------------------------------------ computing

    def _run(self, storm_name: str, tiles: list[Tile]) -> Computed:
        computed = self.computer.compute(storm_name, tiles)
        self.model_calls += computed.model_calls
        self.tiles_computed += computed.tiles_inferred
        return computed

    def _compute(
        self, storm_name: str, tiles: list[Tile]
    ) -> tuple[Computed, list[Lock], dict[Tile, Entry]]:
        """Compute ``tiles`` under their blocks' locks: (what this process computed, the locks
        it holds for them, values that other processes stored while it waited)."""
        cache = self.cache
        if cache is None or not cache.ok:
            return self._run(storm_name, tiles), [], {}
        try:
            locks, free, busy = self._take_locks(storm_name, tiles)
        except (redis.RedisError, OSError):  # Redis went away: compute without locks
            return self._run(storm_name, tiles), [], {}
        computed = self._run(storm_name, free) if free else Computed()
        stored: dict[Tile, Entry] = {}
        if busy:
            stored, left = self._wait(storm_name, busy)
            if left:  # the holders let go (or took too long) without storing these
                try:
                    more, free, busy_again = self._take_locks(storm_name, left)
                except (redis.RedisError, OSError):
                    more, free, busy_again = [], left, {}
                locks += more
                rest = free + [t for ts in busy_again.values() for t in ts]
                extra = self._run(storm_name, rest)
                computed.entries.update(extra.entries)
                computed.failed.update(extra.failed)
                computed.model_calls += extra.model_calls
        return computed, locks, stored

    def _take_locks(
        self, storm_name: str, tiles: list[Tile]
    ) -> tuple[list[Lock], list[Tile], dict[tuple[int, int, int], list[Tile]]]:
        """(locks taken, tiles under them, tiles under blocks that others hold, by block)."""
        assert self.cache is not None
        blocks: dict[tuple[int, int, int], list[Tile]] = {}
        for t in tiles:
            blocks.setdefault(MetricStore.block_of(t), []).append(t)
        locks: list[Lock] = []
        free: list[Tile] = []
        busy: dict[tuple[int, int, int], list[Tile]] = {}
        try:
            for block, ts in blocks.items():
                lock = self.cache.try_lock(storm_name, block)
                if lock is None:
                    busy[block] = ts
                else:
                    locks.append(lock)
                    free.extend(ts)
        except BaseException:
            self.cache.release(locks)
            raise
        return locks, free, busy

    def _wait(
        self, storm_name: str, busy: dict[tuple[int, int, int], list[Tile]]
    ) -> tuple[dict[Tile, Entry], list[Tile]]:
        """Poll the cache for the tiles of blocks that others hold until they are stored, the
        holder lets go, or ``lock_wait`` passes: (values found, tiles still missing)."""
        assert self.cache is not None
        found: dict[Tile, Entry] = {}
        waiting = {block: list(ts) for block, ts in busy.items()}
        deadline = time.monotonic() + self.lock_wait
        pause = POLL_FIRST
        while waiting and time.monotonic() < deadline and self.cache.ok:
            time.sleep(pause)
            pause = min(POLL_MAX, pause * 1.5)
            for block in list(waiting):
                # The lock first: values are stored before it is released, so once it is
                # gone, the read that follows sees all that its holder computed.
                let_go = not self.cache.locked(storm_name, block)
                got = self.cache.get_many(storm_name, waiting[block])
                found.update(got)
                waiting[block] = [t for t in waiting[block] if t not in got]
                if let_go or not waiting[block]:
                    del waiting[block]
        left = [t for ts in busy.values() for t in ts if t not in found]
        return found, left

    # ------------------------------------------------------------------ storing

    def _store(
        self, storm_name: str, computed: Computed, locks: list[Lock], mine: list[Tile]
    ) -> bool:
        """Store ``computed`` (in the writer thread when the cache is up), then release the
        locks and slots. True if that was handed to the writer."""
        cache = self.cache
        if cache is not None and cache.ok and (computed.entries or locks):
            # Answer now, store in the writer thread: the slots and locks stay taken (their
            # futures done) until the values are in Redis, so nobody computes them again.
            self._writer.submit(self._store_and_release, storm_name, computed, locks, mine)
            return True
        if cache is not None:  # Redis known to be down: one quick failure here
            cache.set_many(storm_name, computed.entries)
            cache.release(locks)
        return False

    def _store_and_release(
        self, storm_name: str, computed: Computed, locks: list[Lock], tiles: list[Tile]
    ) -> None:
        assert self.cache is not None
        try:
            self.cache.set_many(storm_name, computed.entries)
            self.cache.count(computed.model_calls, computed.tiles_inferred)
        finally:
            self.cache.release(locks)
            self._release(storm_name, tiles)

    def _release(self, storm_name: str, tiles: Sequence[Tile]) -> None:
        with self._lock:
            for t in tiles:
                self._slots.pop((storm_name, t), None)
