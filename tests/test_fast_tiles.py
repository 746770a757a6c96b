"""Complete metric tiles answered from their kept bytes (service/fast_tiles.py), over real
HTTP: the same status, bytes and headers as the full path, 304s, never an incomplete tile, a
new key after a metric cache flush, a new model or a re-ingest, shared between replicas
through the tile cache's Redis server."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import mercantile
import pytest

from iou_maps.storms.catalog import Catalog
from iou_maps.storms.ingest import ingest
from service.fast_tiles import EPOCH_KEY, Epoch, TileByteCache, TileBytes, kept
from service.testing import ServiceProcess
from tests.conftest import RedisProcess, ServedData, tiny_segmentation

STORM = "alpha"
HIT = "x-iou-tile-cache"
#: Headers that differ between any two responses (or say where the bytes came from).
PER_RESPONSE = {"date", "server", HIT}


@pytest.fixture(scope="module")
def data(served_data: ServedData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the served data (a test re-ingests) with a second model, ``tiny2``."""
    from iou_maps.models.registry import regressor_dir
    from iou_maps.models.regressor.files import save_regressor
    from iou_maps.models.regressor.network import build_regressor

    root = tmp_path_factory.mktemp("fast-tiles") / "data"
    shutil.copytree(served_data.data_dir, root, ignore=shutil.ignore_patterns("redis"))
    seg = tiny_segmentation()
    meta = {"input_size": list(seg.cfg.target_size), "analysis_zoom": 18, "segmentation": "tiny"}
    save_regressor(build_regressor(seg), {**meta, "note": "other"}, regressor_dir(root, "tiny2"))
    return root


@pytest.fixture(scope="module")
def tile_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """The tile cache's own server, shared by the replicas."""
    server = RedisProcess(tmp_path_factory.mktemp("tile-redis"))
    server.start()
    yield server
    server.stop()


def process(
    data: Path, redis_url: str, tile_url: str, tmp: Path, **settings: str
) -> ServiceProcess:
    """The service (not started) with the tile cache at ``tile_url``."""
    log = tmp / "service.log"
    return ServiceProcess(data, redis_url, log_path=log, tile_cache_url=tile_url, **settings)


@pytest.fixture(scope="module")
def service(data, redis_server, tile_redis, tmp_path_factory) -> Iterator[ServiceProcess]:
    redis_server.client().flushdb()
    proc = process(data, redis_server.url, tile_redis.url, tmp_path_factory.mktemp("a")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def center(data) -> tuple[float, float]:
    w, s, e, n = Catalog(data).storm(STORM).bounds
    return (w + e) / 2, (s + n) / 2


def metric_url(t: mercantile.Tile, fmt: str = "png", query: str = "") -> str:
    url = f"/storms/{STORM}/metrics/miou/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.{fmt}"
    return f"{url}?{query}" if query else url


def get(proc: ServiceProcess, url: str, **headers: str) -> httpx.Response:
    r = httpx.get(f"{proc.url}{url}", headers=headers, timeout=120)
    assert r.status_code in (200, 204, 304), (url, r.status_code, r.text[:300])
    return r


def until_kept(proc: ServiceProcess, url: str) -> tuple[httpx.Response, httpx.Response]:
    """(the full path's last response, the first one from the kept bytes)."""
    full = get(proc, url)
    for _ in range(3):
        r = get(proc, url)
        if HIT in r.headers:
            return full, r
        full = r
    raise AssertionError(f"{url} never answered from the kept bytes: {dict(full.headers)}")


def described(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k not in PER_RESPONSE}


# --------------------------------------------------------------------------- the kept bytes


def test_kept_tile_is_the_full_paths_response(service, center, data):
    w, s, _, _ = Catalog(data).storm(STORM).bounds
    urls = [
        metric_url(mercantile.tile(*center, 18)),  # the analysis zoom
        metric_url(mercantile.tile(*center, 16), "webp"),
        metric_url(mercantile.tile(*center, 17), "npy", "colormap_name=viridis"),
        metric_url(mercantile.tile(w - 1.0, s - 1.0, 16)),  # no scene: a 204
    ]
    for url in urls:
        full, hit = until_kept(service, url)
        assert HIT not in full.headers and hit.headers[HIT] == "hit", url
        assert hit.status_code == full.status_code and hit.content == full.content, url
        assert described(hit) == described(full), url
        assert full.headers["cache-control"].startswith("public, max-age="), url
        if full.status_code == 200:
            assert full.headers["x-iou-missing"] == "0" and full.headers["x-iou-computed"] == "0"


def test_304_from_the_kept_bytes(service, center):
    url = metric_url(mercantile.tile(*center, 17))
    _, hit = until_kept(service, url)
    etag = hit.headers["etag"]
    for header in (etag, f"W/{etag}", f'"stale", {etag}', "*"):
        r = get(service, url, **{"If-None-Match": header})
        assert r.status_code == 304 and r.content == b"", header
        assert (
            r.headers["etag"] == etag and r.headers["cache-control"] == hit.headers["cache-control"]
        )
    stale = get(service, url, **{"If-None-Match": '"stale"'})
    assert stale.status_code == 200 and stale.content == hit.content and stale.headers[HIT] == "hit"


def test_incomplete_tiles_are_never_kept(service, redis_server, center):
    redis_server.client().flushdb()  # a small budget now leaves cells out
    url = metric_url(mercantile.tile(*center, 16), "npy", "budget=1")
    for _ in range(2):
        r = get(service, url)
        assert int(r.headers["x-iou-missing"]) >= 1 and r.headers["x-iou-computed"] == "1"
        assert r.headers["cache-control"] == "no-store" and HIT not in r.headers


def test_flushing_the_metric_cache_draws_tiles_again(service, redis_server, center):
    url = metric_url(mercantile.tile(*center, 17), "tif")
    _, hit = until_kept(service, url)
    redis_server.client().flushdb()
    r = get(service, url)
    assert HIT not in r.headers and int(r.headers["x-iou-computed"]) >= 1
    assert r.headers["etag"] == hit.headers["etag"]  # the same model: the same values


# --------------------------------------------------------------------------- keys


def test_replicas_share_kept_tiles(service, data, redis_server, tile_redis, center, tmp_path):
    url = metric_url(mercantile.tile(*center, 16))
    full, _ = until_kept(service, url)
    with process(data, redis_server.url, tile_redis.url, tmp_path) as other:
        r = get(other, url)  # its first request: from the tile cache's server
        assert r.headers[HIT] == "hit" and r.content == full.content
        assert described(r) == described(full)


def test_a_new_model_is_a_new_key(service, data, redis_server, tile_redis, center, tmp_path):
    url = metric_url(mercantile.tile(*center, 18))
    full, _ = until_kept(service, url)
    with process(data, redis_server.url, tile_redis.url, tmp_path, model="tiny2") as other:
        r = get(other, url)
        assert HIT not in r.headers and r.headers["x-iou-model"] != full.headers["x-iou-model"]
        assert r.headers["etag"] != full.headers["etag"]


def test_a_reingest_is_a_new_key(served_data, redis_server, tile_redis, center, tmp_path):
    from iou_maps.storms.synthetic.generate import generate_storm

    root = tmp_path / "data"
    shutil.copytree(served_data.data_dir, root, ignore=shutil.ignore_patterns("redis"))
    url = metric_url(mercantile.tile(*center, 16))
    with process(root, redis_server.url, tile_redis.url, tmp_path) as proc:
        full, _ = until_kept(proc, url)
        generate_storm(STORM, tmp_path / "more", scenes=1, seed=11, size=512)
        assert ingest(root, STORM, [tmp_path / "more"]).ingested  # a scene replaced
        r = get(proc, url)
        assert HIT not in r.headers and r.headers["etag"] != full.headers["etag"]


# --------------------------------------------------------------------------- what is kept


def tile_bytes(size: int, **headers: bytes) -> tuple[int, tuple[tuple[bytes, bytes], ...], bytes]:
    named = {b"etag": b'"e"', b"cache-control": b"public, max-age=60", b"x-iou-computed": b"0"}
    named.update({k.replace("_", "-").encode(): v for k, v in headers.items()})
    return 200, tuple(named.items()), b"x" * size


def test_only_complete_tiles_from_cached_values_are_kept():
    assert kept(*tile_bytes(10)) is not None
    assert kept(*tile_bytes(10, cache_control=b"no-store")) is None  # incomplete
    assert kept(*tile_bytes(10, x_iou_computed=b"3")) is None  # a repeat says 0
    assert kept(*tile_bytes(10, x_iou_cache=b"unavailable")) is None
    assert kept(*tile_bytes(10, retry_after=b"5")) is None
    status, headers, body = tile_bytes(10)
    assert kept(500, headers, body) is None
    assert kept(status, tuple(h for h in headers if h[0] != b"etag"), body) is None


def test_the_local_cache_is_bounded_in_bytes():
    cache = TileByteCache(None, local_bytes=10_000)
    tiles: list[TileBytes] = []
    for i in range(4):
        tile = kept(*tile_bytes(3_000))
        assert tile is not None
        tiles.append(tile)
        cache.put_local(str(i), tile)
    assert cache.get_local("0") is None  # the oldest made room
    assert all(cache.get_local(str(i)) is tiles[i] for i in (1, 2, 3))
    huge = kept(*tile_bytes(20_000))
    assert huge is not None
    cache.put_local("huge", huge)
    assert cache.get_local("huge") is None and cache.get_local("3") is tiles[3]


def test_the_epoch_changes_with_a_flush_and_only_then(redis_server):
    client = redis_server.client()

    async def tokens() -> list[str | None]:
        epoch = Epoch(client)
        got = [epoch.current(), epoch.current()]
        await asyncio.sleep(0)  # another event loop pass: still no change
        got.append(epoch.current())
        client.flushdb()  # Redis pushes the change before it answers the flush
        got.append(epoch.current())
        client.set(EPOCH_KEY, "another process made this one")
        got.append(epoch.current())
        return got

    first, same, next_pass, flushed, written = asyncio.run(tokens())
    assert first is not None and same == first and next_pass == first
    assert flushed is not None and flushed != first
    assert written == "another process made this one"
