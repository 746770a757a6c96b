"""Admission of on-demand computation: a bounded queue, waited for off the cached path.

A request first answers what the cache holds, in the server's ordinary worker threads (one
hop, no model). Only if it must compute does it enter the queue: at most ``limit`` analysis
tiles may wait for the model at once in this process, and their requests wait in threads of
their own (``threads`` at a time; the rest wait asynchronously, holding no thread). So cold
requests can never take the threads or cores that cached reads need, and over the limit a
request gets what is cached now (a partial tile, or 503 with Retry-After for a point) instead
of queueing behind everyone.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from anyio import CapacityLimiter, to_thread

T = TypeVar("T")

#: Requests computing at once (each waits in a thread while the model works).
COMPUTE_THREADS = 8


class Busy(Exception):
    """The compute queue is full: try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the model is busy; retry after {retry_after} s")
        self.retry_after = retry_after


class ComputeQueue:
    """At most ``limit`` analysis tiles waiting for the model in this process."""

    def __init__(self, limit: int, threads: int = COMPUTE_THREADS) -> None:
        self.limit = limit
        self.queued = 0
        self.limiter = CapacityLimiter(threads)
        self._lock = threading.Lock()
        #: Seconds per computed tile, a moving average (for Retry-After).
        self._per_tile = 0.05

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained (at least 1)."""
        return max(1, math.ceil(self.queued * self._per_tile))

    def _admit(self, tiles: int) -> bool:
        with self._lock:
            # One request always gets in, however large: the limit bounds the queue, not work.
            if self.queued and self.queued + tiles > self.limit:
                return False
            self.queued += tiles
            return True

    def _done(self, tiles: int, seconds: float) -> None:
        with self._lock:
            self.queued -= tiles
            if tiles:
                self._per_tile = 0.8 * self._per_tile + 0.2 * (seconds / tiles)

    async def run(self, tiles: int, func: Callable[..., T], *args: object) -> T:
        """``func(*args)`` in a compute thread, counting ``tiles`` in the queue meanwhile;
        Busy if they do not fit."""
        if not self._admit(tiles):
            raise Busy(self.retry_after())
        start = time.perf_counter()
        try:
            return await to_thread.run_sync(func, *args, limiter=self.limiter)
        finally:
            self._done(tiles, time.perf_counter() - start)
