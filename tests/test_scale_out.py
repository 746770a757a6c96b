"""The service beyond one process, over real HTTP: replicas and uvicorn workers compute each
tile once between them (Redis locks, counted in Redis), cached tiles are served while the model
is frozen, and over the compute queue's limit a request gets what is cached now.

The model's processes are paused with SIGSTOP to hold a computation under way: the order of
events is then fixed, not left to timing.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import mercantile
import pytest
import shapely
from mercantile import Tile

from iou_maps.storms.catalog import Catalog
from iou_maps.storms.grid import descendants
from service.testing import ServiceProcess

STORM = "alpha"


def url(t: Tile, budget: int | None = None) -> str:
    q = f"?budget={budget}" if budget is not None else ""
    return f"/storms/{STORM}/metrics/miou/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png{q}"


@pytest.fixture(scope="module")
def analysis_tiles(served_data) -> list[Tile]:
    """Analysis tiles with imagery at their centre (a value, and a point lookup, there)."""
    coverage = Catalog(served_data.data_dir).storm(STORM).coverage
    tiles = mercantile.tiles(*coverage.bounds, zooms=[18])
    return [t for t in tiles if coverage.contains(shapely.Point(*center(t)))]


def center(t: Tile) -> tuple[float, float]:
    w, s, e, n = mercantile.bounds(t)
    return (w + e) / 2, (s + n) / 2


@pytest.fixture(scope="module")
def z16(served_data, analysis_tiles) -> Tile:
    """The z16 tile with the most of those analysis tiles under it."""
    inside = set(analysis_tiles)
    parents = {mercantile.parent(t, zoom=16) for t in analysis_tiles}
    return max(parents, key=lambda p: sum(k in inside for k in descendants(p, 18)))


def health(client: httpx.Client) -> dict:
    return client.get("/healthz").json()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextmanager
def frozen(service: ServiceProcess) -> Iterator[None]:
    """The service's model processes paused (SIGSTOP) for the duration."""
    pids = service.inference_pids()
    assert pids, "the service runs its model in worker processes"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def start(served_data, redis_url, tmp_path, name: str, **settings: str) -> ServiceProcess:
    return ServiceProcess(
        served_data.data_dir, redis_url, log_path=tmp_path / f"{name}.log", **settings
    ).start()


def test_replicas_compute_a_tile_once(served_data, redis_url, z16, tmp_path) -> None:
    a = start(served_data, redis_url, tmp_path, "a")
    b = start(served_data, redis_url, tmp_path, "b")
    try:
        with (
            httpx.Client(base_url=a.url, timeout=120) as ca,
            httpx.Client(base_url=b.url, timeout=120) as cb,
            ThreadPoolExecutor(2) as pool,
        ):
            with frozen(a):
                # A takes the locks of the tile's blocks, and its model hangs.
                fa = pool.submit(ca.get, url(z16))
                wait_for(lambda: health(ca)["compute_queued"] > 0, "A's computation")
                # B asks for the same tiles: it must wait for A's values, not compute them.
                fb = pool.submit(cb.get, url(z16))
                wait_for(lambda: health(cb)["compute_queued"] > 0, "B's request")
                time.sleep(1.0)  # room for B to compute, which it must not do
                assert not fb.done(), "B answered without A's values"
            ra, rb = fa.result(), fb.result()
        assert ra.status_code == rb.status_code == 200
        computed = int(ra.headers["x-iou-computed"])
        assert computed > 0 and ra.headers["x-iou-missing"] == "0"
        assert rb.headers["x-iou-computed"] == "0" and rb.headers["x-iou-missing"] == "0"
        assert int(rb.headers["x-iou-cached"]) >= computed
        # The counters in Redis count every process (A counts once its values are stored):
        # the model ran once per tile.
        with httpx.Client(base_url=b.url) as cb:
            wait_for(lambda: health(cb)["tiles_computed_all"] >= computed, "A's count")
            time.sleep(0.2)
            assert health(cb)["tiles_computed_all"] == computed
            assert health(cb)["tiles_computed"] == 0  # B computed nothing
    finally:
        a.stop()
        b.stop()


def test_two_uvicorn_workers_compute_each_tile_once(served_data, redis_url, z16, tmp_path):
    service = start(served_data, redis_url, tmp_path, "workers", workers=2)
    try:
        with ThreadPoolExecutor(8) as pool:
            clients = [httpx.Client(base_url=service.url, timeout=120) for _ in range(8)]
            # Eight connections at once: the kernel spreads them over both workers.
            responses = list(pool.map(lambda c: c.get(url(z16)), clients))
        assert all(r.status_code == 200 for r in responses)
        assert all(r.headers["x-iou-missing"] == "0" for r in responses)
        # Asked again, every value is cached: how many tiles have values.
        again = clients[0].get(url(z16))
        cells = int(again.headers["x-iou-cached"])
        assert cells > 0 and again.headers["x-iou-computed"] == "0"
        # The model ran once per tile, across requests and processes (counted in Redis).
        wait_for(lambda: health(clients[0])["tiles_computed_all"] >= cells, "the counts")
        time.sleep(0.2)
        assert health(clients[0])["tiles_computed_all"] == cells
        for c in clients:
            c.close()
    finally:
        service.stop()


def test_cached_tiles_stay_served_while_the_model_is_busy(
    served_data, redis_url, analysis_tiles, z16, tmp_path
) -> None:
    # A queue of one tile: the held computation fills it.
    service = start(served_data, redis_url, tmp_path, "queue", compute_queue="1")
    cached, cold = analysis_tiles[0], analysis_tiles[1:]
    try:
        with (
            httpx.Client(base_url=service.url, timeout=120) as client,
            ThreadPoolExecutor(1) as pool,
        ):
            assert client.get(url(cached)).headers["x-iou-computed"] == "1"
            with frozen(service):
                held = pool.submit(client.get, url(cold[0]))
                wait_for(lambda: health(client)["compute_queued"] == 1, "the held tile")
                # A cached tile needs no model: it is served while the model is frozen.
                r = client.get(url(cached))
                assert r.status_code == 200 and r.headers["x-iou-cached"] == "1"
                # Over the queue's limit: what the cache holds now (nothing), not a wait.
                part = client.get(url(z16))
                assert part.status_code == 200
                assert int(part.headers["x-iou-missing"]) > 0
                assert part.headers["cache-control"] == "no-store"
                assert int(part.headers["retry-after"]) >= 1
                # A point lookup cannot be partial: 503 with Retry-After.
                lon, lat = center(cold[1])
                pt = client.get(f"/storms/{STORM}/point/{lon},{lat}")
                assert pt.status_code == 503 and int(pt.headers["retry-after"]) >= 1
                assert "busy" in pt.json()["detail"]
                assert not held.done()
            r = held.result()
            assert r.status_code == 200 and r.headers["x-iou-computed"] == "1"
            assert health(client)["compute_queued"] == 0
            # With the queue free again, the same requests compute.
            assert client.get(url(z16)).headers["x-iou-missing"] == "0"
            assert client.get(f"/storms/{STORM}/point/{lon},{lat}").is_success
    finally:
        service.stop()
