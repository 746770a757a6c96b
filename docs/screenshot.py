"""Regenerate docs/viewer.png: the viewer in headless Chromium on the demo's data, showing the
error layer of mIoU with a point lookup open on a tile where a class is absent.

    make demo                                  # or: iou-maps demo --no-serve
    .venv/bin/python docs/screenshot.py        # --data-dir DIR, --out PATH, --chromium PATH

It starts the service on the data directory (its embedded Redis unless REDIS_URL is set),
picks the labelled analysis tile with the largest mIoU error among those with an absent class,
and clicks it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import httpx
import mercantile
import shapely

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from iou_maps.models.classes import DEMO_CLASSES  # noqa: E402
from iou_maps.storms.catalog import Catalog  # noqa: E402
from service.testing import ServiceProcess, open_popup_at  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def pick_tile(base: str, data_dir: Path, storm: str) -> tuple[float, float]:
    """The centre of the labelled tile with the largest |mIoU error| and an absent class."""
    st = Catalog(data_dir).storm(storm)
    best: tuple[float, float, float] | None = None
    with httpx.Client(base_url=base, timeout=120) as client:
        for t in mercantile.tiles(*st.label_coverage.bounds, zooms=[18]):
            w, s, e, n = mercantile.bounds(t)
            lon, lat = (w + e) / 2, (s + n) / 2
            if not st.label_coverage.contains(shapely.Point(lon, lat)):
                continue
            body = client.get(f"/storms/{storm}/point/{lon},{lat}").json()
            if not body.get("true"):
                continue
            absent = any(
                v[f"iou_{c}"] is None
                for v in (body["predicted"], body["true"])
                for c in DEMO_CLASSES.names
            )
            err = abs(body["error"]["miou"] or 0.0)
            if absent and (best is None or err > best[0]):
                best = (err, lon, lat)
    if best is None:
        raise SystemExit(f"no labelled tile of {storm!r} with an absent class")
    return best[1], best[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", type=Path, default=REPO / "data")
    p.add_argument("--storm", default="hatteras")
    p.add_argument("--model", default=os.environ.get("IOU_MAPS_MODEL", "demo"))
    p.add_argument("--out", type=Path, default=REPO / "docs" / "viewer.png")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    a = p.parse_args()
    from playwright.sync_api import sync_playwright

    with ServiceProcess(a.data_dir.resolve(), os.environ.get("REDIS_URL"), model=a.model) as svc:
        lon, lat = pick_tile(svc.url, a.data_dir, a.storm)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=a.chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 750})
            page.goto(f"{svc.url}/", wait_until="load")
            page.wait_for_selector(".metric-layer img.leaflet-tile-loaded", timeout=120_000)
            page.select_option("#source", "error")
            page.wait_for_selector(
                ".metric-layer img.leaflet-tile-loaded[data-src*='source=error']", timeout=120_000
            )
            page.wait_for_load_state("networkidle", timeout=120_000)
            page.wait_for_function("() => document.getElementById('computing').hidden")
            open_popup_at(page, lat, lon)
            page.wait_for_timeout(500)  # the popup's opening animation
            a.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(a.out))
            browser.close()
    print(f"wrote {a.out} (popup at {lon:.6f},{lat:.6f})")


if __name__ == "__main__":
    main()
