"""The viewer in headless Chromium: imagery and metric tiles drawn, the sources switched, a click
gives numbers that agree with each other, incomplete tiles are fetched until complete."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import mercantile
import pytest
import shapely

from iou_maps.models.classes import DEMO_CLASSES
from iou_maps.storms.catalog import Catalog
from service.testing import REPO, ServiceProcess, open_popup_at

CHROMIUM = os.environ.get("IOU_MAPS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
STORM = "alpha"
#: Analysis tiles one request may compute: a z17 metric tile (4 of them) takes two requests.
BUDGET = 2
#: Redis database of this module's service (flushed: the other modules use database 0).
DB = 3

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason=f"no chromium binary at {CHROMIUM} (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def redis_db(redis_server) -> str:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    return url


def flush(redis_db: str) -> None:
    import redis

    redis.Redis.from_url(redis_db).flushdb()


@pytest.fixture(scope="module")
def service(served_data, redis_db, tmp_path_factory) -> Iterator[ServiceProcess]:
    flush(redis_db)
    log = tmp_path_factory.mktemp("viewer") / "service.log"
    with ServiceProcess(
        served_data.data_dir, redis_db, log_path=log, compute_budget=str(BUDGET)
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def browser() -> Iterator:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, service) -> Iterator:
    """A page of the viewer's origin; any request leaving the service fails the test (the
    OpenStreetMap basemap's are answered here with an empty 404 instead)."""
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    page = context.new_page()
    page.outside = []  # type: ignore[attr-defined]
    page.failed = []  # type: ignore[attr-defined]
    page.on(
        "request",
        lambda r: page.outside.append(r.url) if not r.url.startswith(service.url) else None,
    )
    # Tiles dropped while loading (zoom, a new layer) are aborted, not failed.
    page.on(
        "requestfailed",
        lambda r: page.failed.append(r.url) if "ERR_ABORTED" not in (r.failure or "") else None,
    )
    context.route("https://tile.openstreetmap.org/**", lambda route: route.fulfill(status=404))
    try:
        yield page
    finally:
        context.close()


def metric_tiles_loaded(page, source: str) -> None:
    """Wait for a loaded metric tile of ``source``, then for the network to settle."""
    page.wait_for_selector(
        f".metric-layer img.leaflet-tile-loaded[data-src*='source={source}']", timeout=60_000
    )
    page.wait_for_load_state("networkidle", timeout=60_000)


def wait_for_text(page, selector: str, text: str) -> None:
    """Wait until ``selector``'s text holds ``text`` (the viewer updates it asynchronously)."""
    page.wait_for_function(
        "([sel, text]) => (document.querySelector(sel)?.innerText || '').includes(text)",
        arg=[selector, text],
        timeout=60_000,
    )


def test_viewer_draws_tiles_sources_and_legend(page, service):
    page.goto(service.url + "/", wait_until="load")
    # Leaflet marks tiles loaded once the image has decoded.
    page.wait_for_selector(".imagery-layer img.leaflet-tile-loaded", timeout=60_000)
    metric_tiles_loaded(page, "predicted")
    assert page.locator("#storm option").all_inner_texts() == [STORM]
    first = page.locator(".metric-layer img.leaflet-tile-loaded").first
    assert "/metrics/miou/tiles/WebMercatorQuad/" in first.get_attribute("data-src")
    assert page.evaluate(
        "() => [...document.querySelectorAll('.metric-layer img.leaflet-tile-loaded')]"
        ".some(i => i.naturalWidth === 256)"
    )
    # The legend comes from the TileJSON's colour stops: red to green for predicted values.
    assert "linear-gradient" in page.locator("#legend-bar").get_attribute("style")
    assert "predicted miou" in page.locator("#legend-caption").inner_text()
    assert page.locator("#legend-labels").inner_text().split() == ["0", "0.5", "1"]
    page.screenshot(path=str(ARTIFACTS / "viewer.png"))

    # Opacity slider and metric picker act on the metric layer.
    page.locator("#opacity").fill("0.3")
    assert page.locator(".metric-layer").evaluate("e => e.style.opacity") == "0.3"
    page.select_option("#metric", "dice")
    page.wait_for_selector(
        ".metric-layer img.leaflet-tile-loaded[data-src*='/metrics/dice/']", timeout=60_000
    )

    # The source selector: true values, then the error layer with its diverging legend.
    page.select_option("#metric", "miou")
    page.select_option("#source", "true")
    metric_tiles_loaded(page, "true")
    wait_for_text(page, "#legend-caption", "true miou")
    page.select_option("#source", "error")
    metric_tiles_loaded(page, "error")
    # The legend is redrawn from the layer's TileJSON, which may arrive after its tiles.
    page.wait_for_function(
        "document.querySelector('#legend-labels').innerText.trim().split(/\\s+/).join(' ')"
        " === '-0.5 0 0.5'",
        timeout=60_000,
    )
    assert page.locator("#legend-labels").inner_text().split() == ["-0.5", "0", "0.5"]
    wait_for_text(page, "#legend-caption", "predicted − true")
    style = page.locator("#legend-bar").get_attribute("style")
    assert "rgb(5, 48, 97)" in style or "#053061" in style  # rdbu_r: deep blue at -0.5
    assert not page.locator(".metric-layer img[data-src*='source=true']").count()
    page.screenshot(path=str(ARTIFACTS / "viewer-error.png"))

    # The basemap is off until asked for, with its attribution.
    assert not page.locator(".basemap-layer").count()
    assert not page.outside, f"requests leaving the service: {page.outside[:5]}"
    page.check("#basemap")
    page.wait_for_selector(".leaflet-control-attribution", timeout=10_000)
    assert "OpenStreetMap" in page.locator(".leaflet-control-attribution").inner_text()
    assert any(u.startswith("https://tile.openstreetmap.org/") for u in page.outside)
    page.uncheck("#basemap")
    assert not page.locator(".basemap-layer").count()
    assert not page.locator(".leaflet-control-attribution").count()
    assert not [u for u in page.failed if u.startswith(service.url)], page.failed[:5]


def point_with_absent_class(service) -> tuple[float, float, dict]:
    """A coordinate whose analysis tile has a class without an IoU (absent), predicted or
    true, and the service's answer there."""
    storm = Catalog(service.env["IOU_MAPS_DATA_DIR"]).storm(STORM)
    with httpx.Client(base_url=service.url, timeout=120) as client:
        for t in mercantile.tiles(*storm.label_coverage.bounds, zooms=[18]):
            w, s, e, n = mercantile.bounds(t)
            lon, lat = (w + e) / 2, (s + n) / 2
            if not storm.label_coverage.contains(shapely.Point(lon, lat)):
                continue
            body = client.get(f"/storms/{STORM}/point/{lon},{lat}").json()
            values = [body["predicted"]] + ([body["true"]] if body["true"] else [])
            if any(v[f"iou_{c}"] is None for v in values for c in DEMO_CLASSES.names):
                return lon, lat, body
    raise AssertionError("no analysis tile with an absent class")


def test_popup_says_absent_and_agrees_with_itself(page, service):
    lon, lat, body = point_with_absent_class(service)
    page.goto(f"{service.url}/#18/{lat}/{lon}", wait_until="load")
    metric_tiles_loaded(page, "predicted")
    # Click the map where that coordinate is drawn.
    open_popup_at(page, lat, lon)
    rows = {
        r.locator("td").first.inner_text(): [c.inner_text() for c in r.locator("td.v").all()]
        for r in page.locator(".metrics-popup tr").all()
        if r.locator("td").count()
    }
    assert set(rows) == {*DEMO_CLASSES.names, "mIoU", "Dice"}
    labelled = body["true"] is not None
    assert labelled, "the test storm is labelled everywhere"
    for c in DEMO_CLASSES.names:
        predicted, true = rows[c][0], rows[c][1]
        # A class without an IoU says "absent", never a number; where it has one, a number.
        assert (predicted == "absent") == (body["predicted"][f"iou_{c}"] is None), (c, rows)
        assert (true == "absent") == (body["true"][f"iou_{c}"] is None), (c, rows)
    assert any("absent" in cells for cells in rows.values())
    # mIoU is the mean of the classes shown with a value, for predicted and true alike.
    for col in (0, 1):
        shown = [float(rows[c][col]) for c in DEMO_CLASSES.names if rows[c][col] != "absent"]
        assert float(rows["mIoU"][col]) == pytest.approx(sum(shown) / len(shown), abs=2e-3)
    page.screenshot(path=str(ARTIFACTS / "viewer-popup.png"))
    assert not page.outside, f"requests leaving the service: {page.outside[:5]}"


def test_incomplete_tiles_are_fetched_until_complete(page, service, redis_db, served_data):
    # A cold cache, and zoom 17: each metric tile needs 4 analysis tiles, a request computes 2.
    flush(redis_db)
    page.add_init_script(
        "document.addEventListener('DOMContentLoaded', () => {"
        "  window.notices = [];"
        "  const el = document.getElementById('computing');"
        "  new MutationObserver(() => window.notices.push(el.hidden ? '' : el.textContent))"
        "    .observe(el, {attributes: true, childList: true, characterData: true, subtree: true});"
        "});"
    )
    missing: dict[str, str] = {}
    page.on(
        "response",
        lambda r: (
            missing.__setitem__(r.url, r.headers.get("x-iou-missing", ""))
            if "/metrics/" in r.url and "/tiles/" in r.url
            else None
        ),
    )
    storm = Catalog(served_data.data_dir).storm(STORM)
    c = storm.coverage.centroid
    page.goto(f"{service.url}/#17/{c.y}/{c.x}", wait_until="load")
    page.wait_for_function(
        "() => window.notices.some(t => /^computing \\d+ analysis tiles?…$/.test(t))",
        timeout=60_000,
    )
    # Fetched again until complete: the notice goes, every tile's last answer misses nothing.
    page.wait_for_function(
        "() => document.getElementById('computing').hidden && window.notices.at(-1) === ''",
        timeout=120_000,
    )
    page.wait_for_load_state("networkidle", timeout=60_000)
    assert missing and all(v == "0" for v in missing.values()), missing
    assert page.locator("#computing").is_hidden()
