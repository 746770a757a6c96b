"""HTTP caching over real HTTP: Cache-Control, strong ETags (the same in every process,
changed by a re-ingest or a new model), 304 Not Modified, no-store on incomplete metric
tiles, and the imagery tile cache (a second real redis-server with its own maxmemory): what
it serves is the bytes the service renders, and filling it past its limit never evicts a
metric value."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import mercantile
import numpy as np
import pytest
from titiler.core.resources.enums import ImageType
from typer.testing import CliRunner

from iou_maps.compute.metric_store import Entry, MetricStore
from iou_maps.compute.tile_cache import TileCache
from iou_maps.storms.catalog import Catalog
from iou_maps.storms.imagery import cached_zooms, imagery_key, precompute_imagery, render_tile
from iou_maps.storms.ingest import ingest
from iou_maps.storms.open_storms import OpenStorms
from service.testing import ServiceProcess
from tests.conftest import RedisProcess, ServedData, tiny_segmentation

STORM = "alpha"
MAX_AGE = "1234"
#: TileJSON and WMTS hold absolute URLs: ask every process under one host name.
HOST = {"Host": "tiles.example.org"}


@pytest.fixture(scope="module")
def data(served_data: ServedData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the served data (tests here re-ingest) with a second model, ``tiny2``."""
    from iou_maps.models.registry import regressor_dir
    from iou_maps.models.regressor.files import save_regressor
    from iou_maps.models.regressor.network import build_regressor

    root = tmp_path_factory.mktemp("http-cache") / "data"
    shutil.copytree(served_data.data_dir, root, ignore=shutil.ignore_patterns("redis"))
    seg = tiny_segmentation()
    meta = {"input_size": list(seg.cfg.target_size), "analysis_zoom": 18, "segmentation": "tiny"}
    save_regressor(
        build_regressor(seg), {**meta, "note": "another model"}, regressor_dir(root, "tiny2")
    )
    return root


@pytest.fixture(scope="module")
def tile_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """The imagery tile cache's own server, as compose runs it (LRU within its maxmemory)."""
    server = RedisProcess(
        tmp_path_factory.mktemp("tile-redis"),
        "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru",
    )  # fmt: skip
    server.start()
    yield server
    server.stop()


def start(data: Path, redis_url: str, tmp: Path, **settings: str) -> ServiceProcess:
    settings.setdefault("http_max_age", MAX_AGE)
    return ServiceProcess(data, redis_url, log_path=tmp / "service.log", **settings).start()


@pytest.fixture(scope="module")
def service(data, redis_server, tile_redis, tmp_path_factory) -> Iterator[ServiceProcess]:
    """The service with the imagery tile cache."""
    redis_server.client().flushdb()
    proc = start(
        data, redis_server.url, tmp_path_factory.mktemp("svc1"), tile_cache_url=tile_redis.url
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def service2(data, redis_server, service, tmp_path_factory) -> Iterator[ServiceProcess]:
    """A second process over the same data and metric cache, rendering every imagery tile."""
    proc = start(data, redis_server.url, tmp_path_factory.mktemp("svc2"), tile_cache_url="off")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def zooms(service) -> dict[str, int]:
    info = httpx.get(f"{service.url}/storms/{STORM}", timeout=60).json()
    return {k: info[k] for k in ("minzoom", "maxzoom", "analysis_zoom")}


@pytest.fixture(scope="module")
def center(data) -> tuple[float, float]:
    w, s, e, n = Catalog(data).storm(STORM).bounds
    return (w + e) / 2, (s + n) / 2


def tile_url(kind: str, t: mercantile.Tile, fmt: str, query: str = "") -> str:
    layer = "imagery" if kind == "imagery" else "metrics/miou"
    url = f"/storms/{STORM}/{layer}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.{fmt}"
    return f"{url}?{query}" if query else url


@pytest.fixture(scope="module")
def urls(zooms, center) -> dict[str, str]:
    """One URL of each kind that gets an ETag."""
    low = mercantile.tile(*center, zooms["maxzoom"] - 2)  # kept in the tile cache
    deep = mercantile.tile(*center, zooms["maxzoom"])  # rendered every time
    z16 = mercantile.tile(*center, 16)
    return {
        "imagery low": tile_url("imagery", low, "webp"),
        "imagery deep": tile_url("imagery", deep, "png"),
        "imagery query": tile_url("imagery", low, "png", "rescale=10,200&resampling=bilinear"),
        "metric": tile_url("metric", z16, "png"),
        "metric raw": tile_url("metric", z16, "npy", "budget=64"),
        "imagery tilejson": f"/storms/{STORM}/imagery/WebMercatorQuad/tilejson.json",
        "imagery wmts": f"/storms/{STORM}/imagery/WMTSCapabilities.xml",
        "metric tilejson": f"/storms/{STORM}/metrics/miou/WebMercatorQuad/tilejson.json",
        "metric wmts": f"/storms/{STORM}/metrics/miou/WMTSCapabilities.xml?tile_format=tif",
    }


def get(proc: ServiceProcess, path: str, **headers: str) -> httpx.Response:
    r = httpx.get(f"{proc.url}{path}", headers={**HOST, **headers}, timeout=120)
    assert r.status_code in (200, 204, 304), (path, r.status_code, r.text[:300])
    return r


def etags(proc: ServiceProcess, urls: dict[str, str]) -> dict[str, str]:
    return {name: get(proc, url).headers["etag"] for name, url in urls.items()}


# --------------------------------------------------------------------------- ETag, Cache-Control


def test_etag_stable_across_requests_and_processes(service, service2, urls):
    for name, url in urls.items():
        first = get(service, url)  # a metric tile's values are computed here
        again = get(service, url)
        other = get(service2, url)  # another process; its imagery is rendered, not cached
        etag = first.headers["etag"]
        assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/"), name
        assert again.headers["etag"] == etag == other.headers["etag"], name
        # A strong ETag: the same bytes everywhere (computed values are served as stored).
        assert first.content == again.content == other.content, name
        kind_max_age = MAX_AGE if "/tiles/" in url else "300"
        assert first.headers["cache-control"] == f"public, max-age={kind_max_age}", name
        assert other.headers["cache-control"] == first.headers["cache-control"], name


def test_etag_follows_the_parameters(service, urls, zooms, center):
    low = mercantile.tile(*center, zooms["maxzoom"] - 2)
    a = get(service, tile_url("imagery", low, "png", "rescale=10,200&resampling=bilinear"))
    b = get(service, tile_url("imagery", low, "png", "resampling=bilinear&rescale=10,200"))
    c = get(service, tile_url("imagery", low, "png", "rescale=10,201&resampling=bilinear"))
    assert a.headers["etag"] == b.headers["etag"] != c.headers["etag"]
    z16 = mercantile.tile(*center, 16)
    m = get(service, tile_url("metric", z16, "png")).headers["etag"]
    # Any parameter counts, whatever it is (a new one needs no code to be part of the ETag).
    for query in ("colormap_name=viridis", "rescale=0.5,1", "anything=else"):
        assert get(service, tile_url("metric", z16, "png", query)).headers["etag"] != m, query
    assert get(service, tile_url("metric", z16, "webp")).headers["etag"] != m
    # TileJSON holds absolute URLs: another host name is another document.
    tj = urls["metric tilejson"]
    other_host = httpx.get(f"{service.url}{tj}", headers={"Host": "cdn.example.net"}, timeout=60)
    assert other_host.headers["etag"] != get(service, tj).headers["etag"]
    assert "cdn.example.net" in other_host.text


def test_304_on_if_none_match(service, urls):
    for name, url in urls.items():
        full = get(service, url)
        etag = full.headers["etag"]
        for header in (etag, f"W/{etag}", f'"stale", {etag}', "*"):
            r = get(service, url, **{"If-None-Match": header})
            assert r.status_code == 304 and r.content == b"", (name, header)
            assert r.headers["etag"] == etag, name
            assert r.headers["cache-control"] == full.headers["cache-control"], name
        stale = get(service, url, **{"If-None-Match": '"stale"'})
        assert stale.status_code == 200 and stale.content == full.content, name


def test_no_scene_tiles_are_cacheable_too(service, data):
    w, s, e, n = Catalog(data).storm(STORM).bounds
    far = mercantile.tile(w - 1.0, s - 1.0, 16)  # no scene under it
    for kind in ("imagery", "metric"):
        r = get(service, tile_url(kind, far, "png"))
        assert r.status_code == 204 and r.headers["cache-control"].startswith("public, max-age")
        again = get(service, tile_url(kind, far, "png"), **{"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304


def test_incomplete_metric_tiles_stay_no_store(service, redis_server, center):
    t = mercantile.tile(*center, 16)
    complete = get(service, tile_url("metric", t, "npy"))
    assert complete.headers["x-iou-missing"] == "0" and "etag" in complete.headers
    redis_server.client().flushdb()  # the values are gone: a small budget leaves cells out
    r = get(service, tile_url("metric", t, "npy", "budget=1"))
    assert int(r.headers["x-iou-missing"]) >= 1
    assert r.headers["cache-control"] == "no-store" and "etag" not in r.headers
    # The client's complete copy is not vouched for by an incomplete answer either.
    again = get(
        service,
        tile_url("metric", t, "npy", "budget=0"),
        **{"If-None-Match": complete.headers["etag"]},
    )
    assert again.status_code == 200 and again.headers["cache-control"] == "no-store"
    # Computed again in full: the same values (as stored), so the same ETag and bytes.
    full = get(service, tile_url("metric", t, "npy"))
    assert full.headers["x-iou-missing"] == "0"
    assert full.headers["etag"] == complete.headers["etag"] and full.content == complete.content


def test_etag_changes_with_the_model(service, data, redis_server, tile_redis, urls, tmp_path):
    before = etags(service, urls)
    with ServiceProcess(
        data, redis_server.url, model="tiny2", log_path=tmp_path / "svc.log",
        tile_cache_url=tile_redis.url, http_max_age=MAX_AGE,
    ) as other:  # fmt: skip
        after = etags(other, urls)
    for name in urls:
        if name.startswith("metric"):
            assert after[name] != before[name], name
        else:  # imagery does not depend on the model
            assert after[name] == before[name], name


def test_etag_changes_on_reingest(served_data, redis_server, tmp_path, center, zooms):
    """A re-ingest that changes a scene changes every ETag of the storm; one that changes
    nothing keeps them (the version hashes the footprints file's contents)."""
    from iou_maps.storms.synthetic.generate import generate_storm

    root = tmp_path / "data"
    shutil.copytree(served_data.data_dir, root, ignore=shutil.ignore_patterns("redis"))
    low = mercantile.tile(*center, zooms["maxzoom"] - 2)
    urls = {
        "imagery": tile_url("imagery", low, "png"),
        "metric": tile_url("metric", mercantile.tile(*center, 16), "png"),
        "tilejson": f"/storms/{STORM}/imagery/WebMercatorQuad/tilejson.json",
        "metric tilejson": f"/storms/{STORM}/metrics/miou/WebMercatorQuad/tilejson.json",
    }
    with ServiceProcess(root, redis_server.url, log_path=tmp_path / "svc.log") as proc:
        before = etags(proc, urls)
        assert ingest(root, STORM, [served_data.source_dir]).unchanged  # nothing new
        assert etags(proc, urls) == before
        extra = tmp_path / "more"
        generate_storm(STORM, extra, scenes=1, seed=11, size=512)
        report = ingest(root, STORM, [extra])  # a scene replaced by another flight's
        assert report.ingested, report.skipped
        after = etags(proc, urls)
    for name in urls:
        assert after[name] != before[name], name


# --------------------------------------------------------------------------- imagery tile cache


def test_imagery_from_the_tile_cache_is_byte_identical(
    service, service2, tile_redis, zooms, center
):
    tile_redis.client().flushdb()
    t = mercantile.tile(*center, zooms["maxzoom"] - 2)
    for fmt in ("png", "webp", "jpg", "tif"):
        url = tile_url("imagery", t, fmt)
        miss, hit = get(service, url), get(service, url)
        fresh = get(service2, url)  # rendered by a process without the tile cache
        assert (
            miss.headers["x-iou-tile-cache"] == "miss" and hit.headers["x-iou-tile-cache"] == "hit"
        )
        assert "x-iou-tile-cache" not in fresh.headers
        assert hit.content == miss.content == fresh.content, fmt
        for h in ("content-type", "content-bbox", "content-crs", "etag", "cache-control"):
            assert hit.headers[h] == fresh.headers[h], (fmt, h)
    # Deep zooms read a few blocks: they are not kept.
    deep = get(service, tile_url("imagery", mercantile.tile(*center, zooms["maxzoom"]), "png"))
    assert "x-iou-tile-cache" not in deep.headers


def test_precompute_imagery_fills_what_the_service_serves(
    service, service2, tile_redis, zooms, data, monkeypatch
):
    from iou_maps.cli.app import app

    tile_redis.client().flushdb()
    monkeypatch.setenv("IOU_MAPS_TILE_CACHE_URL", tile_redis.url)
    result = CliRunner().invoke(
        app,
        ["precompute", STORM, "--imagery", "--no-metrics", "--data-dir", str(data),
         "--imagery-format", "webp", "--imagery-format", "png"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "tiles rendered" in result.output
    storm = Catalog(data).storm(STORM)
    keys = tile_redis.client().keys("iou-tile:*")
    assert keys and all(k.decode().startswith(f"iou-tile:{STORM}:{storm.version}:") for k in keys)
    low = zooms["maxzoom"] - 2
    tiles = [t for t in mercantile.tiles(*storm.bounds, zooms=[zooms["minzoom"], low])]
    served = 0
    for t in tiles:
        for fmt in ("webp", "png"):
            r = get(service, tile_url("imagery", t, fmt))
            if r.status_code == 204:
                continue
            assert r.headers["x-iou-tile-cache"] == "hit", (t, fmt)  # filled, never requested
            assert r.content == get(service2, tile_url("imagery", t, fmt)).content, (t, fmt)
            served += 1
    assert served >= 2
    # A re-run keeps what is there.
    again = CliRunner().invoke(
        app, ["precompute", STORM, "--imagery", "--no-metrics", "--data-dir", str(data)]
    )
    assert again.exit_code == 0, again.output


def test_filling_the_tile_cache_never_evicts_a_metric_value(data, redis_server, tmp_path):
    """The tile cache, filled far past its maxmemory, evicts old tiles; every metric value in
    the metric cache stays."""
    small = RedisProcess(tmp_path, "--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru")
    small.start()
    try:
        metric = redis_server.client()
        metric.flushdb()
        storms = OpenStorms(Catalog(data))
        loaded = storms.get(STORM)
        # Metric values of every analysis tile of the storm, in the metric cache.
        store = MetricStore(metric, "model-under-test")
        tiles = list(mercantile.tiles(*loaded.storm.bounds, zooms=[18]))
        rng = np.random.default_rng(0)
        values = {t: Entry(rng.random(6).astype(np.float32)) for t in tiles}
        store.set_many(STORM, values)
        stored = store.get_many(STORM, tiles)
        keys_before = metric.dbsize()

        cache = TileCache(small.client())
        zooms = range(loaded.backend.minzoom, loaded.backend.maxzoom + 1)
        # Every zoom, in formats up to raw arrays (a quarter megabyte a tile): many times
        # the tile cache's memory.
        formats = [ImageType.webp, ImageType.png, ImageType.tif, ImageType.npy]
        summary = precompute_imagery(loaded, cache, zooms, formats, refresh=True)
        info = small.client().info()
        assert summary.kept_bytes > 3 * info["maxmemory"]  # well past the limit
        assert info["evicted_keys"] > 0  # the tile cache reached its limit and evicted
        # ... and stayed within it, up to the one tile written last
        assert info["used_memory"] <= info["maxmemory"] + 300_000

        assert metric.dbsize() == keys_before
        assert metric.info()["evicted_keys"] == 0
        after = store.get_many(STORM, tiles)
        assert after.keys() == stored.keys() == set(tiles)
        for t in tiles:
            np.testing.assert_array_equal(after[t].values, stored[t].values)
        storms.close()
    finally:
        small.stop()


def test_render_tile_matches_the_service(service2, data, zooms, center):
    """The library's rendering (precompute --imagery) is the service's, byte for byte, at
    every zoom."""
    storms = OpenStorms(Catalog(data))
    loaded = storms.get(STORM)
    assert zooms["maxzoom"] - 2 in cached_zooms(loaded, 2)
    for z in (zooms["minzoom"], zooms["maxzoom"] - 2, zooms["maxzoom"]):
        t = mercantile.tile(*center, z)
        mine = render_tile(loaded, t, ImageType.png)
        assert mine is not None
        r = get(service2, tile_url("imagery", t, "png"))
        assert mine.content == r.content and mine.media_type == r.headers["content-type"]
        assert imagery_key(loaded, t, "png").endswith(f"/{t.z}/{t.x}/{t.y}.png")
    storms.close()


def test_openapi_documents_caching(service):
    doc = httpx.get(f"{service.url}/openapi.json", timeout=60).json()
    for path, op in (
        (
            "/storms/{storm}/imagery/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}",
            "get",
        ),
        ("/storms/{storm}/metrics/{metric}/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}", "get"),
        ("/storms/{storm}/metrics/{metric}/{tileMatrixSetId}/tilejson.json", "get"),
        ("/storms/{storm}/imagery/WMTSCapabilities.xml", "get"),
    ):
        responses = doc["paths"][path][op]["responses"]
        assert "304" in responses, path
        assert {"ETag", "Cache-Control"} <= set(responses["200"]["headers"]), path
    point = doc["paths"]["/storms/{storm}/point/{lon},{lat}"]["get"]["responses"]
    assert "304" not in point
