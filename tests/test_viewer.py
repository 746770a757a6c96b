"""The viewer in headless Chromium: imagery and metric tiles drawn, a click gives the numbers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.testing import REPO, ServiceProcess

CHROMIUM = os.environ.get("IOU_MAPS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason=f"no chromium binary at {CHROMIUM} (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def service(served_data, redis_server, tmp_path_factory) -> Iterator[ServiceProcess]:
    log = tmp_path_factory.mktemp("viewer") / "service.log"
    with ServiceProcess(served_data.data_dir, redis_server.url, log_path=log) as proc:
        yield proc


def test_viewer_draws_tiles_and_popup(service):
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            outside: list[str] = []
            failed: list[str] = []
            page.on(
                "request",
                lambda r: outside.append(r.url) if not r.url.startswith(service.url) else None,
            )
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(service.url + "/", wait_until="load")
            # Leaflet marks tiles loaded once the image has decoded.
            page.wait_for_selector(".imagery-layer img.leaflet-tile-loaded", timeout=60_000)
            page.wait_for_selector(".metric-layer img.leaflet-tile-loaded", timeout=60_000)
            page.wait_for_load_state("networkidle", timeout=60_000)
            assert page.locator("#storm option").all_inner_texts() == ["alpha"]
            metric_tiles = page.locator(".metric-layer img.leaflet-tile-loaded")
            assert "/metrics/miou/tiles/WebMercatorQuad/" in metric_tiles.first.get_attribute("src")
            assert page.evaluate(
                "() => [...document.querySelectorAll('.metric-layer img.leaflet-tile-loaded')]"
                ".some(i => i.naturalWidth === 256)"
            )
            # The legend comes from the TileJSON's colour stops.
            assert "linear-gradient" in page.locator("#legend-bar").get_attribute("style")
            page.screenshot(path=str(ARTIFACTS / "viewer.png"))

            # Opacity slider and metric picker act on the metric layer.
            page.locator("#opacity").fill("0.3")
            assert page.locator(".metric-layer").evaluate("e => e.style.opacity") == "0.3"
            page.select_option("#metric", "dice")
            page.wait_for_selector(
                ".metric-layer img.leaflet-tile-loaded[src*='/metrics/dice/']", timeout=60_000
            )

            box = page.locator("#map").bounding_box()
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            popup = page.locator(".metrics-popup table")
            popup.wait_for(timeout=60_000)
            text = page.locator(".metrics-popup").inner_text()
            for metric in ("iou_water", "miou", "dice"):
                assert metric in text
            assert any(c.isdigit() for c in text.split("miou")[1][:12])
            page.screenshot(path=str(ARTIFACTS / "viewer-popup.png"))
            assert not outside, f"requests leaving the service: {outside[:5]}"
            assert not failed, failed[:5]
        finally:
            browser.close()
