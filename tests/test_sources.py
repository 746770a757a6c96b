"""Predicted, true and error layers over real HTTP (uvicorn, Redis, the models in worker
processes): the true tiles are `evaluate`'s numbers, error = predicted − true, a storm without
labels gets a 404 naming why, the point lookup puts predicted and true side by side."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import httpx
import mercantile
import numpy as np
import pytest
import shapely
from mercantile import Tile

from iou_maps.models.classes import DEMO_CLASSES
from iou_maps.storms.catalog import Catalog
from service.testing import ServiceProcess

from .conftest import BARE
from .test_truth import STEP, table_tiles

STORM = "alpha"


@pytest.fixture(scope="module")
def service(with_bare, redis_server, tmp_path_factory) -> Iterator[ServiceProcess]:
    redis_server.client().flushdb()
    log = tmp_path_factory.mktemp("sources") / "service.log"
    with ServiceProcess(with_bare.data_dir, redis_server.url, log_path=log) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=120) as c:
        yield c


def npy(client: httpx.Client, t: Tile, metric: str, source: str, storm: str = STORM) -> np.ndarray:
    url = f"/storms/{storm}/metrics/{metric}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.npy"
    r = client.get(url, params={"source": source})
    assert r.status_code == 200, r.text
    assert r.headers["x-iou-missing"] == "0" and r.headers["x-iou-source"] == source
    return np.load(io.BytesIO(r.content))[0]


def cell(values: np.ndarray, parent: Tile, t: Tile) -> float:
    """The value drawn for analysis tile ``t`` in the npy tile ``parent`` (one block each)."""
    levels = t.z - parent.z
    k = 256 >> levels
    return float(values[(t.y - (parent.y << levels)) * k, (t.x - (parent.x << levels)) * k])


def test_true_tiles_are_the_evaluate_table(client, table) -> None:
    tiles = table_tiles(table)
    for m in DEMO_CLASSES.metrics:
        drawn: dict[Tile, np.ndarray] = {}
        for t in tiles:
            parent = mercantile.parent(t, zoom=16)
            if parent not in drawn:
                drawn[parent] = npy(client, parent, m, "true")
            got = cell(drawn[parent], parent, t)
            want = float(table.loc[(table.x == t.x) & (table.y == t.y), m].iloc[0])
            if np.isnan(want):
                assert np.isnan(got), (m, t)
            else:
                assert got == pytest.approx(want, abs=STEP), (m, t)


def test_error_tiles_are_predicted_minus_true(client, table) -> None:
    parent = mercantile.parent(table_tiles(table)[0], zoom=17)
    for m in ("miou", "iou_sand", "dice"):
        true = npy(client, parent, m, "true")
        pred = npy(client, parent, m, "predicted")
        error = npy(client, parent, m, "error")
        both = ~np.isnan(true) & ~np.isnan(pred)
        np.testing.assert_array_equal(~np.isnan(error), both)
        np.testing.assert_allclose(error[both], (pred - true)[both], atol=2 * STEP)
    assert both.any()
    # The error layer's colours: rdbu_r over -0.5..0.5 by default (white at 0).
    png = client.get(
        f"/storms/{STORM}/metrics/miou/tiles/WebMercatorQuad/{parent.z}/{parent.x}/{parent.y}.png",
        params={"source": "error", "rescale": "-1,1"},
    )
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"


@pytest.mark.parametrize("source", ["true", "error"])
@pytest.mark.parametrize(
    "path",
    [
        "metrics/miou/tiles/WebMercatorQuad/18/{x}/{y}.png",
        "metrics/miou/WebMercatorQuad/tilejson.json",
        "metrics/miou/WMTSCapabilities.xml",
        "point/{lon},{lat}",
    ],
)
def test_a_storm_without_labels_says_so(client, with_bare, source, path) -> None:
    storm = Catalog(with_bare.data_dir).storm(BARE)
    c = storm.coverage.representative_point()
    t = mercantile.tile(c.x, c.y, 18)
    url = f"/storms/{BARE}/" + path.format(x=t.x, y=t.y, lon=c.x, lat=c.y)
    r = client.get(url, params={"source": source})
    assert r.status_code == 404, r.text
    assert r.json()["detail"].startswith(f"storm '{BARE}' has no label rasters: {source}")
    assert client.get(url).status_code == 200  # predicted values as ever


def test_storm_info_names_its_sources(client) -> None:
    info = {s["name"]: s for s in client.get("/storms").json()["storms"]}
    assert info[STORM]["sources"] == ["predicted", "true", "error"]
    assert info[BARE]["sources"] == ["predicted"]
    assert info[STORM]["on_demand_minzoom"] == info[STORM]["analysis_zoom"] - 4
    assert any(link["rel"] == "summary" for link in info[STORM]["links"])


def test_point_puts_predicted_and_true_side_by_side(client, table) -> None:
    t = table_tiles(table)[0]
    w, s, e, n = mercantile.bounds(t)
    lon, lat = (w + e) / 2, (s + n) / 2
    body = client.get(f"/storms/{STORM}/point/{lon},{lat}").json()
    assert body["source"] == "predicted" and body["metrics"] == body["predicted"]
    assert body["labelled"] is True and body["segmentation_id"]
    row = table[(table.x == t.x) & (table.y == t.y)].iloc[0]
    for m in DEMO_CLASSES.metrics:
        p, tr, err = body["predicted"][m], body["true"][m], body["error"][m]
        if np.isnan(row[m]):
            assert tr is None
        else:
            assert tr == pytest.approx(row[m], abs=STEP)
        assert err is None if p is None or tr is None else err == pytest.approx(p - tr, abs=1e-6)
    # The predicted mIoU is the mean of the per-class IoUs it has, as the true one is.
    for values in (body["predicted"], body["true"]):
        ious = [values[m] for m in DEMO_CLASSES.metrics[:4] if values[m] is not None]
        assert values["miou"] == pytest.approx(sum(ious) / len(ious), abs=2e-5)
    for source in ("true", "error"):
        other = client.get(f"/storms/{STORM}/point/{lon},{lat}", params={"source": source})
        assert other.json()["metrics"] == body[source] and other.json()["from_cache"]


def test_point_where_a_tile_has_too_few_labels(client, with_bare, table) -> None:
    # A tile with imagery but left out of `evaluate` (less than a quarter of it labelled).
    storm = Catalog(with_bare.data_dir).storm(STORM)
    evaluated = set(table_tiles(table))
    for t in mercantile.tiles(*storm.coverage.bounds, zooms=[18]):
        inside = storm.coverage.intersection(shapely.box(*mercantile.bounds(t)))
        if t in evaluated or inside.area == 0:
            continue
        p = inside.representative_point()
        body = client.get(f"/storms/{STORM}/point/{p.x},{p.y}").json()
        if "predicted" in body:  # else too little imagery for a prediction too (a 404)
            break
    else:
        pytest.skip("no tile with imagery but too few labels")
    assert body["true"] is None and body["labelled"] is False and body["error"] is None
    r = client.get(f"/storms/{STORM}/point/{p.x},{p.y}", params={"source": "true"})
    assert r.status_code == 404 and "no labelled imagery there" in r.json()["detail"]


def test_tilejson_and_wmts_of_each_source(client) -> None:
    tj = client.get(
        f"/storms/{STORM}/metrics/miou/WebMercatorQuad/tilejson.json", params={"source": "error"}
    ).json()
    assert tj["source"] == "error" and tj["colormap_name"] == "rdbu_r"
    assert tj["rescale"] == [-0.5, 0.5] and tj["name"] == f"{STORM} miou error"
    assert tj["tiles"][0].endswith("/tiles/WebMercatorQuad/{z}/{x}/{y}.png?source=error")
    assert tj["legend_stops"][0]["value"] == -0.5 and tj["legend_stops"][-1]["value"] == 0.5
    assert "+" in tj["model_id"]  # the regressor's and the segmentation model's ids
    true = client.get(
        f"/storms/{STORM}/metrics/dice/WebMercatorQuad/tilejson.json",
        params={"source": "true", "tile_format": "tif"},
    ).json()
    assert true["colormap_name"] == "rdylgn" and true["rescale"] == [0, 1]
    assert true["tiles"][0].endswith(".tif?source=true")
    wmts = client.get(f"/storms/{STORM}/metrics/miou/WMTSCapabilities.xml?source=error")
    assert wmts.status_code == 200 and f"{STORM}_miou_error_WebMercatorQuad" in wmts.text
    assert "source=error" in wmts.text
    r = client.get(f"/storms/{STORM}/metrics/miou/WebMercatorQuad/tilejson.json?source=truth")
    assert r.status_code == 422 and "source" in str(r.json()["detail"])


def test_summary(client, table) -> None:
    # Both kinds of values of every table tile, by point lookups (stored behind the answers:
    # wait for them); the summary's MAE is the mean of the lookups' absolute errors.
    errors = []
    for t in table_tiles(table):
        w, s, e, n = mercantile.bounds(t)
        err = client.get(f"/storms/{STORM}/point/{(w + e) / 2},{(s + n) / 2}").json()["error"]
        if err["miou"] is not None:
            errors.append(abs(err["miou"]))
    assert errors
    deadline = time.monotonic() + 60
    while (body := client.get(f"/storms/{STORM}/summary").json())["tiles"]["compared"] < len(table):
        assert time.monotonic() < deadline, body
        time.sleep(0.1)
    tiles = body["tiles"]
    assert tiles["analysis_tiles"] >= tiles["cached"] >= tiles["with_imagery"] > 0
    assert tiles["labelled"] >= tiles["true_cached"] >= tiles["evaluated"] >= tiles["compared"]
    assert sum(b["count"] for b in body["miou_histogram"]) == tiles["with_imagery"]
    assert [b["min"] for b in body["miou_histogram"]][:2] == [0.0, 0.1]
    assert body["accuracy"]["miou"]["n"] == tiles["compared"]
    assert body["accuracy"]["miou"]["n"] == len(errors)
    assert body["accuracy"]["miou"]["mae"] == pytest.approx(np.mean(errors), abs=1e-5)
    bare = client.get(f"/storms/{BARE}/summary").json()
    assert bare["accuracy"] is None and bare["tiles"]["labelled"] == 0
    assert client.get("/storms/nosuch/summary").status_code == 404
