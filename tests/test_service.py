"""The service over real HTTP: a uvicorn subprocess, the real Redis fixture, real COGs, real TF."""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import mercantile
import numpy as np
import pytest
import rasterio
import shapely
from PIL import Image

from iou_maps.models.classes import DEMO_CLASSES
from iou_maps.storms.catalog import Catalog
from service.testing import ServiceProcess

STORM = "alpha"


@pytest.fixture(scope="module")
def service(served_data, redis_server, tmp_path_factory) -> Iterator[ServiceProcess]:
    redis_server.client().flushdb()
    log = tmp_path_factory.mktemp("service") / "service.log"
    with ServiceProcess(served_data.data_dir, redis_server.url, log_path=log) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def storm(served_data):
    return Catalog(served_data.data_dir).storm(STORM)


@pytest.fixture(scope="module")
def center(storm) -> tuple[float, float]:
    w, s, e, n = storm.bounds
    return (w + e) / 2, (s + n) / 2


def tile_url(kind: str, z: int, x: int, y: int, fmt: str, metric: str = "miou") -> str:
    layer = "imagery" if kind == "imagery" else f"metrics/{metric}"
    return f"/storms/{STORM}/{layer}/tiles/WebMercatorQuad/{z}/{x}/{y}.{fmt}"


def health(client: httpx.Client) -> dict:
    r = client.get("/healthz")
    assert r.status_code == 200
    return r.json()


# --------------------------------------------------------------------------- catalog, health


def test_healthz_counts_what_a_request_computed(client, center):
    before = health(client)
    assert before["status"] == "ok" and before["redis"] is True
    assert set(before) == {
        "status", "redis", "model_id", "model_calls", "tiles_computed", "model_calls_all",
        "tiles_computed_all", "compute_queued",
    }  # fmt: skip
    t = mercantile.tile(*center, 17)  # 4 analysis tiles, computed by this request
    r = client.get(tile_url("metric", t.z, t.x, t.y, "png"))
    assert r.status_code == 200
    computed = int(r.headers["x-iou-computed"])
    assert computed > 0
    # This process's counts at once; every process's (in Redis) once the values are stored.
    deadline = time.monotonic() + 60
    while (after := health(client))["tiles_computed_all"] < before["tiles_computed_all"] + computed:
        assert time.monotonic() < deadline, after
        time.sleep(0.1)
    assert after["tiles_computed"] == before["tiles_computed"] + computed
    assert after["tiles_computed_all"] == before["tiles_computed_all"] + computed
    assert after["model_calls"] > before["model_calls"]
    assert after["model_calls_all"] - before["model_calls_all"] == (
        after["model_calls"] - before["model_calls"]
    )


def test_storm_list_and_detail(client, storm):
    r = client.get("/storms")
    assert r.status_code == 200
    (info,) = r.json()["storms"]
    assert info["name"] == STORM and info["scenes"] == 4
    assert info["bounds"] == pytest.approx(list(storm.bounds))
    assert info["minzoom"] <= info["analysis_zoom"] <= 22
    assert client.get(f"/storms/{STORM}").json() == info


# --------------------------------------------------------------------------- imagery


@pytest.mark.parametrize(
    "fmt,mime", [("png", "image/png"), ("jpg", "image/jpg"), ("webp", "image/webp")]
)
def test_imagery_tiles(client, center, fmt, mime):
    t = mercantile.tile(*center, 18)
    r = client.get(tile_url("imagery", t.z, t.x, t.y, fmt))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == mime
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (256, 256)
    assert np.asarray(img.convert("RGB")).std() > 1  # real imagery, not a blank tile


def test_imagery_tilejson_wmts_point(client, storm, center):
    tj = client.get(f"/storms/{STORM}/imagery/WebMercatorQuad/tilejson.json").json()
    assert tj["bounds"] == pytest.approx(list(storm.bounds))
    assert f"/storms/{STORM}/imagery/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}" in tj["tiles"][0]
    wmts = client.get(f"/storms/{STORM}/imagery/WMTSCapabilities.xml")
    assert wmts.status_code == 200 and "<Capabilities" in wmts.text
    assert f"/storms/{STORM}/imagery/tiles/WebMercatorQuad/{{TileMatrix}}" in wmts.text
    pt = client.get(f"/storms/{STORM}/imagery/point/{center[0]},{center[1]}").json()
    assert pt["assets"] and all(len(a["values"]) == 3 for a in pt["assets"])
    assert all("/" not in a["name"] for a in pt["assets"])  # scene ids, not server paths


# --------------------------------------------------------------------------- metric tiles


def test_metric_tiles_every_zoom(client, storm, center):
    info = client.get(f"/storms/{STORM}").json()
    # Deepest first: zooms above analysis_zoom - 4 compute; farther out ones aggregate the cache.
    for z in range(max(info["maxzoom"], info["analysis_zoom"]), info["minzoom"] - 1, -1):
        t = mercantile.tile(*center, z)
        r = client.get(tile_url("metric", t.z, t.x, t.y, "png"))
        assert r.status_code == 200, (z, r.text)
        if z >= info["analysis_zoom"] - 4:  # farther out: precompute's aggregates complete them
            assert r.headers["x-iou-missing"] == "0", z
        img = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))
        assert img.shape == (256, 256, 4)
        assert img[..., 3].max() == 255, f"nothing drawn at zoom {z}"


def test_metric_formats_and_headers(client, center):
    t = mercantile.tile(*center, 17)
    model_id = health(client)["model_id"]
    png = client.get(tile_url("metric", t.z, t.x, t.y, "png"))
    assert png.headers["content-type"] == "image/png"
    assert png.headers["x-iou-model"] == model_id
    assert png.headers["x-iou-cache"] == "ok"
    # The tile's analysis tiles: each cached or computed (none left missing at this zoom).
    assert png.headers["x-iou-missing"] == "0"
    assert int(png.headers["x-iou-cached"]) + int(png.headers["x-iou-computed"]) > 0
    rgba = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGBA"))

    webp = client.get(tile_url("metric", t.z, t.x, t.y, "webp"))
    assert webp.status_code == 200 and webp.headers["content-type"] == "image/webp"
    assert webp.headers["x-iou-cached"] != "0"  # the PNG request filled the cache

    tif = client.get(tile_url("metric", t.z, t.x, t.y, "tif"))
    assert tif.headers["content-type"].startswith("image/tiff")
    with rasterio.MemoryFile(tif.content) as mem, mem.open() as ds:
        assert ds.count == 1 and ds.dtypes[0] == "float32"
        assert ds.crs.to_epsg() == 3857
        values = ds.read(1)
    w, s, e, n = mercantile.xy_bounds(t)
    assert ds.bounds == pytest.approx((w, s, e, n))

    npy = client.get(tile_url("metric", t.z, t.x, t.y, "npy"))
    arr = np.load(io.BytesIO(npy.content))
    assert arr.shape == (1, 256, 256) and arr.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(arr[0]), np.isnan(values))
    np.testing.assert_allclose(arr[0], values, equal_nan=True)

    valid = ~np.isnan(values)
    assert valid.any() and (values[valid] >= 0).all() and (values[valid] <= 1).all()
    # Transparent exactly where there is no value.
    np.testing.assert_array_equal(rgba[..., 3] == 0, ~valid)


def test_colormap_choice_changes_colors(client, center):
    t = mercantile.tile(*center, 18)
    a = client.get(tile_url("metric", t.z, t.x, t.y, "png"))
    b = client.get(tile_url("metric", t.z, t.x, t.y, "png") + "?colormap_name=viridis")
    assert a.status_code == b.status_code == 200
    pa = np.asarray(Image.open(io.BytesIO(a.content)).convert("RGBA"))[128, 128]
    pb = np.asarray(Image.open(io.BytesIO(b.content)).convert("RGBA"))[128, 128]
    assert tuple(pa) != tuple(pb)


def test_rescale_spans_the_colormap(client, center):
    from rio_tiler.colormap import cmap

    t = mercantile.tile(*center, 18)
    value = float(
        np.load(io.BytesIO(client.get(tile_url("metric", 18, t.x, t.y, "npy")).content))[
            0, 128, 128
        ]
    )
    viridis = cmap.get("viridis")

    def colour(rescale: str) -> tuple[int, ...]:
        query = f"?colormap_name=viridis&rescale={rescale}"
        r = client.get(tile_url("metric", t.z, t.x, t.y, "png") + query)
        assert r.status_code == 200, r.text
        return tuple(
            int(c) for c in np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))[128, 128]
        )

    # A range above the value draws it with the colormap's first colour, one below it with
    # the last.
    assert colour(f"{value + 0.01},{value + 0.02}") == tuple(viridis[0])
    assert colour(f"{value - 0.02},{value - 0.01}") == tuple(viridis[255])
    for bad in ("1,0", "0,1&rescale=0,2", "a,b"):
        r = client.get(tile_url("metric", t.z, t.x, t.y, "png") + f"?rescale={bad}")
        assert r.status_code == 422, (bad, r.text)
        assert "rescale" in r.text


def test_metric_tilejson_and_wmts(client, storm):
    tj = client.get(f"/storms/{STORM}/metrics/dice/WebMercatorQuad/tilejson.json").json()
    assert tj["metric"] == "dice" and tj["colormap_name"] == "rdylgn"
    assert tj["tiles"][0].endswith(
        "/storms/alpha/metrics/dice/tiles/WebMercatorQuad/{z}/{x}/{y}.png"
    )
    assert tj["bounds"] == pytest.approx(list(storm.bounds))
    stops = tj["legend_stops"]
    assert stops[0]["value"] == 0 and stops[-1]["value"] == 1
    r0, g0 = int(stops[0]["color"][1:3], 16), int(stops[0]["color"][3:5], 16)
    r1, g1 = int(stops[-1]["color"][1:3], 16), int(stops[-1]["color"][3:5], 16)
    assert r0 > g0 and g1 > r1  # red → green
    tif = client.get(
        f"/storms/{STORM}/metrics/dice/WebMercatorQuad/tilejson.json?tile_format=tif&budget=3"
    ).json()
    assert ".tif?budget=3" in tif["tiles"][0]
    wmts = client.get(f"/storms/{STORM}/metrics/dice/WMTSCapabilities.xml?tile_format=tif")
    assert wmts.status_code == 200
    assert "image/tiff" in wmts.text and "alpha_dice_WebMercatorQuad" in wmts.text
    assert "/metrics/dice/tiles/WebMercatorQuad/{TileMatrix}/{TileCol}/{TileRow}.tif" in wmts.text


def test_budget_leaves_tiles_missing(client, redis_server, storm, center):
    redis_server.client().flushdb()
    t = mercantile.tile(*center, 16)
    r = client.get(tile_url("metric", t.z, t.x, t.y, "npy") + "?budget=1")
    assert r.status_code == 200
    assert int(r.headers["x-iou-computed"]) == 1
    missing = int(r.headers["x-iou-missing"])
    assert missing >= 1 and r.headers["cache-control"] == "no-store"
    arr = np.load(io.BytesIO(r.content))[0]
    # 256 px / 4 cells: each analysis tile is a 64 px block; one has a value, the rest not.
    assert (~np.isnan(arr)).sum() <= 64 * 64 and np.isnan(arr).any()
    # The budget is capped by the settings (64), and a full request fills the tile.
    full = client.get(tile_url("metric", t.z, t.x, t.y, "npy") + "?budget=100000")
    assert full.headers["x-iou-missing"] == "0"
    assert int(full.headers["x-iou-cached"]) >= 1


# --------------------------------------------------------------------------- point lookup


def test_point_lookup(client, center):
    lon, lat = center
    r = client.get(f"/storms/{STORM}/point/{lon},{lat}")
    assert r.status_code == 200, r.text
    body = r.json()
    t = mercantile.tile(lon, lat, 18)
    assert body["tile"]["z"] == 18 and (body["tile"]["x"], body["tile"]["y"]) == (t.x, t.y)
    b = mercantile.bounds(t)
    assert body["tile"]["bounds"] == pytest.approx([b.west, b.south, b.east, b.north])
    assert list(body["metrics"]) == list(DEMO_CLASSES.metrics)
    assert all(v is None or 0 <= v <= 1 for v in body["metrics"].values())
    assert body["model_id"] == health(client)["model_id"]
    again = client.get(f"/storms/{STORM}/point/{lon},{lat}").json()
    assert again["from_cache"] is True
    for m in DEMO_CLASSES.metrics:
        if body["metrics"][m] is None:
            assert again["metrics"][m] is None
        else:
            assert again["metrics"][m] == pytest.approx(body["metrics"][m], abs=1e-4)
    # The same number as the raw GeoTIFF tile at that spot.
    tif = client.get(tile_url("metric", t.z, t.x, t.y, "tif", metric="miou"))
    with rasterio.MemoryFile(tif.content) as mem, mem.open() as ds:
        value = float(ds.read(1)[128, 128])
    expected = again["metrics"]["miou"]
    assert (math.isnan(value) and expected is None) or value == pytest.approx(expected, abs=1e-4)


def test_point_outside_storm_404(client, storm):
    w, s, e, n = storm.bounds
    r = client.get(f"/storms/{STORM}/point/{e + 0.05},{n + 0.05}")
    assert r.status_code == 404
    assert "outside" in r.json()["detail"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "path",
    [
        "/storms/nope",
        "/storms/nope/point/0,0",
        "/storms/nope/imagery/tiles/WebMercatorQuad/18/1/1.png",
        "/storms/nope/metrics/miou/tiles/WebMercatorQuad/18/1/1.png",
        "/storms/nope/metrics/miou/WebMercatorQuad/tilejson.json",
    ],
)
def test_unknown_storm_404(client, path):
    r = client.get(path)
    assert r.status_code == 404
    assert "unknown storm 'nope'" in r.json()["detail"]


@pytest.mark.parametrize("name", ["Alpha", "a" * 65, "-alpha", "al%20pha", "al.pha", "%2E%2E"])
def test_invalid_storm_name_422(client, name):
    for path in (f"/storms/{name}", f"/storms/{name}/metrics/miou/tiles/WebMercatorQuad/1/0/0.png"):
        r = client.get(path)
        assert r.status_code in (404, 422), (path, r.status_code)
        if r.status_code == 422:
            assert "invalid storm name" in json.dumps(r.json())


def test_unknown_metric_404_and_colormap_422(client, center):
    t = mercantile.tile(*center, 18)
    r = client.get(tile_url("metric", t.z, t.x, t.y, "png", metric="accuracy"))
    assert r.status_code == 404  # not a metric of this model: the valid ones are named
    assert all(m in json.dumps(r.json()) for m in DEMO_CLASSES.metrics)
    r = client.get(tile_url("metric", t.z, t.x, t.y, "png") + "?colormap_name=nope")
    assert r.status_code == 422
    assert "rdylgn" in json.dumps(r.json()) and "viridis" in json.dumps(r.json())
    r = client.get(tile_url("metric", t.z, t.x, t.y, "jpg"))
    assert r.status_code == 422 and "png" in json.dumps(r.json())


@pytest.mark.parametrize("kind", ["imagery", "metric"])
@pytest.mark.parametrize("zxy", [(18, 1 << 18, 0), (18, 0, -1), (25, 0, 0), (-1, 0, 0)])
def test_tile_out_of_range_422(client, kind, zxy):
    r = client.get(tile_url(kind, *zxy, "png"))
    assert r.status_code == 422, r.text
    assert "out of range" in r.json()["detail"]


def test_metric_zoom_outside_storm_range_422(client, center):
    t = mercantile.tile(*center, 3)
    r = client.get(tile_url("metric", t.z, t.x, t.y, "png"))
    assert r.status_code == 422 and "outside" in r.json()["detail"]


# --------------------------------------------------------------------------- nothing there


@pytest.fixture(scope="module")
def empty_tile(storm) -> mercantile.Tile:
    """A tile at the analysis zoom beside the storm, with no scene under it."""
    w, s, e, n = storm.bounds
    t = mercantile.tile(e, (s + n) / 2, 18)
    for dx in range(1, 10):
        candidate = mercantile.Tile(t.x + dx, t.y, 18)
        if not storm.coverage.intersects(shapely.box(*mercantile.bounds(candidate))):
            return candidate
    raise AssertionError("no empty tile beside the storm")


@pytest.fixture(scope="module")
def empty_point(storm) -> tuple[float, float]:
    """A coordinate inside the storm's bounds but outside every scene."""
    w, s, e, n = storm.bounds
    for lon in np.linspace(w, e, 21)[1:-1]:
        for lat in np.linspace(s, n, 21)[1:-1]:
            if not storm.coverage.intersects(shapely.Point(lon, lat)):
                return float(lon), float(lat)
    raise AssertionError("the scenes cover the storm's bounds")


@pytest.mark.parametrize(
    "kind,fmt",
    [("imagery", "png"), ("imagery", "jpg"), ("imagery", "tif"), ("metric", "png")]
    + [("metric", "tif"), ("metric", "npy")],
)
def test_tile_without_scene_is_204(client, empty_tile, kind, fmt):
    t = empty_tile
    r = client.get(tile_url(kind, t.z, t.x, t.y, fmt))
    assert r.status_code == 204, r.text
    assert r.content == b""
    # Far away too, and at a zoom where a metric tile is drawn from aggregates.
    far = mercantile.tile(10.0, 50.0, 14)
    assert client.get(tile_url(kind, far.z, far.x, far.y, fmt)).status_code == 204


@pytest.mark.parametrize("layer", ["imagery/point", "point"])
def test_point_without_scene_is_404(client, empty_point, layer):
    for lon, lat in (empty_point, (10.0, 50.0)):
        r = client.get(f"/storms/{STORM}/{layer}/{lon},{lat}")
        assert r.status_code == 404, r.text
        detail = r.json()["detail"]
        assert "outside every scene" in detail and STORM in detail and str(lon) in detail


# --------------------------------------------------------------------------- bad parameters


def assert_422_naming(r: httpx.Response, param: str) -> None:
    """A 422 whose body names ``param`` (FastAPI's validation list, or our message)."""
    assert r.status_code == 422, (param, r.status_code, r.text)
    body = r.json()["detail"]
    if isinstance(body, list):
        assert any(param in map(str, e["loc"]) for e in body), body
    else:
        assert body.startswith(f"{param}: ") or param in body, body


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "256", "0.5", "abc"])
def test_imagery_nodata_must_be_a_byte(client, center, value):
    t = mercantile.tile(*center, 18)
    assert_422_naming(
        client.get(tile_url("imagery", 18, t.x, t.y, "png") + f"?nodata={value}"), "nodata"
    )
    r = client.get(f"/storms/{STORM}/imagery/point/{center[0]},{center[1]}?nodata={value}")
    assert_422_naming(r, "nodata")


def test_imagery_nodata_byte_accepted(client, center):
    t = mercantile.tile(*center, 18)
    url = tile_url("imagery", 18, t.x, t.y, "png")
    default = client.get(url)
    same = client.get(url + "?nodata=0")  # the scenes' own nodata value
    other = client.get(url + "?nodata=255")
    assert default.status_code == same.status_code == other.status_code == 200
    assert same.content == default.content
    assert Image.open(io.BytesIO(other.content)).size == (256, 256)


@pytest.mark.parametrize(
    "query,param",
    [
        ("f=png&height=-5", "height"),
        ("f=png&width=0", "width"),
        ("f=png&height=100000", "height"),
        ("f=png&width=-1&height=10", "width"),
    ],
)
def test_colormap_legend_sizes_422(client, query, param):
    assert_422_naming(client.get(f"/colorMaps/viridis?{query}"), param)


def test_colormap_legend_size(client):
    r = client.get("/colorMaps/viridis?f=png&height=12&width=300")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (300, 12)


@pytest.mark.parametrize(
    "query,param",
    [
        ("tilesize=0", "tilesize"),
        ("tilesize=100000", "tilesize"),
        ("rescale=0,10&rescale=0,20", "rescale"),
        ("rescale=10,0", "rescale"),
        ("rescale=nan,1", "rescale"),
        ("color_formula=gamma%20rgb%200", "color_formula"),
        ("color_formula=gamma%20rgbx%201.5", "color_formula"),
        ("resampling=magic", "resampling"),
        ("return_mask=perhaps", "return_mask"),
    ],
)
def test_imagery_bad_parameters_422(client, center, query, param):
    t = mercantile.tile(*center, 18)
    assert_422_naming(client.get(tile_url("imagery", 18, t.x, t.y, "png") + f"?{query}"), param)


def test_imagery_display_parameters(client, center):
    t = mercantile.tile(*center, 18)
    url = tile_url("imagery", 18, t.x, t.y, "png")
    r = client.get(url + "?tilesize=512&rescale=0,128&color_formula=gamma%20rgb%201.5")
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (512, 512)
    # Parameters left out (band math, colormaps on RGB, DEM algorithms) are not in the schema.
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/storms/{storm}/imagery/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}"]
    names = {prm["name"] for prm in op["get"]["parameters"]}
    assert not names & {"expression", "bidx", "colormap", "colormap_name", "algorithm"}
    assert not names & {"buffer", "padding", "unscale", "reproject", "pixel_selection"}


@pytest.mark.parametrize(
    "path,query,param",
    [
        ("imagery/WMTSCapabilities.xml", "zooms=WebMercatorQuad::2,44732", "zooms"),
        ("imagery/WMTSCapabilities.xml", "rescale=5,1", "rescale"),
        ("imagery/WMTSCapabilities.xml", "nodata=nan", "nodata"),
        ("imagery/WebMercatorQuad/tilejson.json", "minzoom=-7343", "minzoom"),
        ("imagery/WebMercatorQuad/tilejson.json", "minzoom=12&maxzoom=3", "minzoom"),
        ("imagery/tiles/WebMercatorQuad", "maxzoom=19217401941", "maxzoom"),
        ("imagery/tiles", "crs=EPSG:4978", "crs"),
        ("imagery/info.geojson", "crs=EPSG:4978", "crs"),
        ("imagery/point/-75.47,35.58", "coord_crs=EPSG:3857", "coord_crs"),
        ("imagery/point/-200,35.58", "", "lon"),
        ("point/-75.47,95", "", "lat"),
        ("metrics/miou/WebMercatorQuad/tilejson.json", "colormap=%7B%22a%22:1%7D", "colormap"),
        ("metrics/miou/WebMercatorQuad/tilejson.json", "colormap=[1,2]", "colormap"),
        (
            "metrics/miou/WebMercatorQuad/tilejson.json",
            "colormap=%7B%220%22:[300,0,0]%7D",
            "colormap",
        ),
        ("metrics/miou/WebMercatorQuad/tilejson.json", "colormap=not-json", "colormap"),
        ("metrics/miou/WebMercatorQuad/tilejson.json", "budget=-1", "budget"),
        ("metrics/miou/WebMercatorQuad/tilejson.json", "rescale=-inf,inf", "rescale"),
    ],
)
def test_bad_parameters_422(client, path, query, param):
    assert_422_naming(client.get(f"/storms/{STORM}/{path}?{query}"), param)


def test_custom_colormap_json(client, center):
    t = mercantile.tile(*center, 18)
    url = tile_url("metric", 18, t.x, t.y, "png")
    red = json.dumps({str(i): "#ff0000" for i in range(256)})
    r = client.get(url, params={"colormap": red})
    assert r.status_code == 200, r.text
    assert tuple(np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))[128, 128]) == (
        255, 0, 0, 255,
    )  # fmt: skip
    intervals = json.dumps([[[0, 0.5], [0, 0, 255, 255]], [[0.5, 1.01], [0, 255, 0, 255]]])
    r = client.get(url, params={"colormap": intervals})
    assert r.status_code == 200, r.text


# --------------------------------------------------------------------------- single flight


def test_single_flight(client, service, redis_server, center):
    redis_server.client().flushdb()
    t = mercantile.tile(*center, 17)  # 4 analysis tiles, all cold now
    before = health(client)
    with (
        httpx.Client(base_url=service.url, timeout=120) as c,
        ThreadPoolExecutor(8) as pool,
    ):
        responses = list(
            pool.map(lambda _: c.get(tile_url("metric", t.z, t.x, t.y, "png")), range(8))
        )
    assert all(r.status_code == 200 for r in responses)
    after = health(client)
    assert after["model_calls"] - before["model_calls"] == 1
    assert after["tiles_computed"] - before["tiles_computed"] <= 4
    assert sum(int(r.headers["x-iou-computed"]) for r in responses) >= 1


# --------------------------------------------------------------------------- API docs, viewer


def test_openapi_documents_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for p in (
        "/healthz",
        "/storms",
        "/storms/{storm}",
        "/storms/{storm}/point/{lon},{lat}",
        "/storms/{storm}/imagery/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}",
        "/storms/{storm}/imagery/{tileMatrixSetId}/tilejson.json",
        "/storms/{storm}/imagery/WMTSCapabilities.xml",
        "/storms/{storm}/metrics/{metric}/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}",
        "/storms/{storm}/metrics/{metric}/{tileMatrixSetId}/tilejson.json",
        "/storms/{storm}/metrics/{metric}/WMTSCapabilities.xml",
    ):
        assert p in paths, p
    for path, ops in paths.items():
        for op in ops.values():
            names = {prm["name"] for prm in op.get("parameters", [])}
            assert "url" not in names, path  # storms are resolved server-side, by name
    ours = [p for p in paths if p.startswith(("/storms", "/healthz")) and "/imagery/" not in p]
    for p in ours:
        assert paths[p]["get"].get("summary"), p
    assert not any("/assets" in p for p in paths)  # would expose server file paths


def test_openapi_states_the_rules(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]

    def param(path: str, name: str) -> dict:
        (p,) = [p for p in paths[path]["get"]["parameters"] if p["name"] == name]
        return p["schema"]

    for path in paths:
        if "{storm}" in path:
            assert param(path, "storm")["pattern"] == "^[a-z0-9][a-z0-9_-]{0,63}$", path
    for path in (
        "/storms/{storm}/imagery/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}",
        "/storms/{storm}/metrics/{metric}/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}",
    ):
        assert (param(path, "z")["minimum"], param(path, "z")["maximum"]) == (0, 24)
        assert (param(path, "x")["minimum"], param(path, "x")["maximum"]) == (0, 2**24 - 1)
        assert (param(path, "y")["minimum"], param(path, "y")["maximum"]) == (0, 2**24 - 1)
        assert "204" in paths[path]["get"]["responses"]
    for path in ("/storms/{storm}/point/{lon},{lat}", "/storms/{storm}/imagery/point/{lon},{lat}"):
        assert (param(path, "lon")["minimum"], param(path, "lon")["maximum"]) == (-180, 180)
        assert param(path, "lat")["maximum"] == pytest.approx(85.06)
    # Errors are documented as JSON on every operation, also where success is an image or XML.
    for path, ops in paths.items():
        responses = ops["get"]["responses"]
        if ops["get"].get("parameters"):
            assert "application/json" in responses["422"]["content"], path
        if "{storm}" in path:
            assert "application/json" in responses["404"]["content"], path
    assert "prefixItems" not in json.dumps(spec)  # tuples as items + min/maxItems


def test_viewer_page_and_vendored_leaflet(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "leaflet.js" in page.text and "unpkg" not in page.text and "cdn" not in page.text
    js = client.get("/static/vendor/leaflet/leaflet.js")
    assert js.status_code == 200 and "Leaflet" in js.text[:500]
    assert client.get("/static/vendor/leaflet/leaflet.css").status_code == 200
    assert client.get("/static/viewer.js").status_code == 200


def test_cors(client):
    r = client.get("/healthz", headers={"Origin": "http://example.org"})
    assert r.headers.get("access-control-allow-origin") in ("*", "http://example.org")
