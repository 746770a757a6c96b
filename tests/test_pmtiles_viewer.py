"""A PMTiles export on a MapLibre map in headless Chromium, from a plain static file server:
no IoU Maps process, no internet; the map shows each analysis tile in the archive's colour.

MapLibre needs WebGL: headless Chromium draws it with SwiftShader (software), which recent
versions only use when asked (--use-angle=swiftshader --enable-unsafe-swiftshader).
"""

from __future__ import annotations

import base64
import io
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mercantile
import numpy as np
import pytest
import uvicorn
from PIL import Image
from pmtiles.reader import MmapSource, Reader
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from iou_maps.compute.metric_store import Entry, MetricStore
from iou_maps.compute.plan import tiles_of
from iou_maps.config import Settings
from iou_maps.exports.filling import open_export_engine
from iou_maps.exports.formats import export_storm
from iou_maps.exports.maps import MetricMap
from iou_maps.models.classes import DEMO_CLASSES
from iou_maps.storms.catalog import Catalog
from service.testing import REPO, free_port
from tests.test_viewer import ARTIFACTS, CHROMIUM

STATIC = REPO / "service" / "static"
ARGS = [
    "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason=f"no chromium binary at {CHROMIUM} (apt-get install chromium)",
)


def miou_of(tile: mercantile.Tile) -> float:
    """A value per analysis tile that differs from its neighbours'."""
    return 0.05 + 0.9 * ((tile.x * 7 + tile.y * 3) % 10) / 9


@pytest.fixture(scope="module")
def archive(served_data, redis_server, tmp_path_factory) -> Path:
    """The storm's miou PMTiles, from a cache that holds a known value per analysis tile."""
    redis_server.client().flushdb()
    settings = Settings(data_dir=served_data.data_dir, model="tiny", redis_url=redis_server.url)
    engine = open_export_engine(settings)
    try:
        storm = Catalog(served_data.data_dir).storm("alpha")
        store = MetricStore(redis_server.client(), engine.model_id)
        entries = {}
        for t in tiles_of(storm, engine.analysis_zoom):
            values = np.full(len(DEMO_CLASSES.metrics), 0.5, np.float32)
            values[DEMO_CLASSES.metrics.index("miou")] = miou_of(t)
            entries[t] = Entry(values, 1)
        store.set_many("alpha", entries)
        site = tmp_path_factory.mktemp("site")
        summary = export_storm(
            "pmtiles", engine, MetricMap("alpha", "miou"), site / "alpha-miou.pmtiles"
        )
        assert summary.fill.model_calls == 0 and summary.tiles > 0
    finally:
        engine.close()
    # The page and its libraries, as a user copies them beside an archive.
    for name in ("pmtiles.html", "pmtiles-viewer.js"):
        shutil.copy(STATIC / name, site / name)
    for lib in ("maplibre-gl", "pmtiles"):
        shutil.copytree(STATIC / "vendor" / lib, site / "vendor" / lib)
    return site / "alpha-miou.pmtiles"


@pytest.fixture(scope="module")
def static_server(archive) -> Iterator[str]:
    """A plain static file server (Starlette's StaticFiles: it answers Range requests,
    which PMTiles readers need; Python's http.server does not)."""
    app = Starlette(routes=[Mount("/", StaticFiles(directory=archive.parent))])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "static server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_maplibre_draws_the_pmtiles_export_from_a_static_server(archive, static_server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with open(archive, "rb") as f:
        reader = Reader(MmapSource(f))
        meta = reader.metadata()
        za = meta["analysis_zoom"]
        tiles = {}
        for t in mercantile.tiles(*meta["bounds"], zooms=[za]):
            data = reader.get(t.z, t.x, t.y)
            if data is not None:
                tiles[t] = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))[128, 128]
    assert tiles
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            outside: list[str] = []
            ranges: list[str] = []
            failed: list[str] = []
            errors: list[str] = []

            def on_request(r) -> None:
                if not r.url.startswith(static_server):
                    outside.append(r.url)
                if r.url.endswith(".pmtiles") and r.headers.get("range"):
                    ranges.append(r.headers["range"])

            page.on("request", on_request)
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{static_server}/pmtiles.html?url=alpha-miou.pmtiles&opacity=1")
            page.wait_for_selector("body[data-ready='1']", timeout=90_000)
            assert page.locator("#status").inner_text() == "tiles drawn"
            assert page.locator("#title").inner_text() == meta["name"]
            assert "linear-gradient" in page.locator("#legend-bar").get_attribute("style")
            page.screenshot(path=str(ARTIFACTS / "pmtiles-viewer.png"))
            # Each analysis tile on screen has the archive's colour at its centre.
            canvas = page.evaluate("() => iouMap.getCanvas().toDataURL('image/png')")
            pixels = np.asarray(
                Image.open(io.BytesIO(base64.b64decode(canvas.split(",", 1)[1]))).convert("RGBA")
            )
            ratio = page.evaluate("() => window.devicePixelRatio")
            checked = 0
            for t, colour in tiles.items():
                b = mercantile.bounds(t)
                lon, lat = (b.west + b.east) / 2, (b.south + b.north) / 2
                x, y = page.evaluate(
                    "([lon, lat]) => { const p = iouMap.project([lon, lat]); return [p.x, p.y]; }",
                    [lon, lat],
                )
                col, row = round(x * ratio), round(y * ratio)
                if not (0 <= row < pixels.shape[0] and 0 <= col < pixels.shape[1]):
                    continue
                got = pixels[row, col].astype(int)
                assert np.abs(got - colour.astype(int)).max() <= 2, (t, got, colour)
                checked += 1
            assert checked >= 4, checked
        finally:
            browser.close()
    assert len(ranges) >= 2, "the archive is read with HTTP range requests"
    assert not outside, f"requests leaving the static server: {outside[:5]}"
    assert not failed and not errors, (failed[:5], errors[:5])
