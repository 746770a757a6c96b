"""Exports against the service: the PMTiles, MBTiles and COG of a storm hold the service's
tiles and values (a real uvicorn process over the same Redis), and its STAC validates.

The first export runs the CLI on an empty cache (the model computes every value in a worker
process); the service then reads the same cache, so its tiles must be the exports' bytes.
The true and error exports follow: the first of them by the CLI with no true value cached
(the segmentation model computes them in a worker process), compared with ``?source=``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import mercantile
import numpy as np
import pystac
import pytest
import rasterio
import shapely
from PIL import Image
from pmtiles.reader import MmapSource, Reader, all_tiles
from pmtiles.tile import TileType
from rasterio.windows import Window, from_bounds
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

from iou_maps.cli.app import app
from iou_maps.compute.plan import tiles_of
from iou_maps.config import Settings
from iou_maps.errors import (
    BadTileFormat,
    ExportError,
    StacError,
    UnknownExportFormat,
    UnsupportedLayer,
)
from iou_maps.exports.filling import open_export_engine
from iou_maps.exports.formats import export_storm
from iou_maps.exports.maps import ImageryMap, MetricMap
from iou_maps.exports.options import ExportOptions
from iou_maps.exports.stac import offline_validation, validate, write_storm_collection
from iou_maps.exports.tiles import tiles_at
from iou_maps.layers.registry import Source
from iou_maps.models.classes import DEMO_CLASSES
from iou_maps.storms.catalog import Catalog
from service.testing import REPO, ServiceProcess

from .conftest import BARE, worker_processes

STORM = "alpha"


@pytest.fixture(scope="module")
def settings(served_data, redis_server) -> Settings:
    redis_server.client().flushdb()  # the first export computes every value
    return Settings(data_dir=served_data.data_dir, model="tiny", redis_url=redis_server.url)


@pytest.fixture(scope="module")
def storm(served_data):
    return Catalog(served_data.data_dir).storm(STORM)


def cli_env(settings: Settings, data_dir: Path | None = None) -> dict[str, str]:
    data = data_dir or settings.data_dir
    env = {**os.environ, "IOU_MAPS_DATA_DIR": str(data), "IOU_MAPS_MODEL": "tiny"}
    env["REDIS_URL"] = str(settings.redis_url)
    return env


@pytest.fixture(scope="module")
def exports(settings, tmp_path_factory) -> dict[str, object]:
    """Every kind of export of the storm: the first (PMTiles) by the CLI from a cold cache."""
    out = tmp_path_factory.mktemp("exports")
    cold = subprocess.run(
        [sys.executable, "-m", "iou_maps.cli", "export", STORM, "--metric", "miou",
         "--format", "pmtiles", "--out", str(out / "alpha-miou.pmtiles")],
        cwd=REPO, env=cli_env(settings), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert cold.returncode == 0, cold.stderr[-3000:]
    engine = open_export_engine(settings)
    layer = MetricMap(STORM, "miou")
    try:
        result: dict[str, object] = {"dir": out, "cold_stdout": cold.stdout}
        result["pmtiles"] = out / "alpha-miou.pmtiles"
        result["mbtiles"] = export_storm("mbtiles", engine, layer, out / "alpha-miou.mbtiles")
        result["cog"] = export_storm("cog", engine, layer, out / "alpha-miou.tif")
        # Big enough to need overviews: each analysis tile 256 px.
        result["cog256"] = export_storm(
            "cog", engine, layer, out / "alpha-miou-256.tif", ExportOptions(pixels_per_tile=256)
        )
        result["imagery"] = export_storm(
            "pmtiles", engine, ImageryMap(STORM), out / "alpha-imagery.pmtiles"
        )
        result["model_id"] = engine.model_id
        result["model_calls_after_cold"] = engine.model_calls
    finally:
        engine.close()
    return result


@pytest.fixture(scope="module")
def source_exports(exports, settings, tmp_path_factory) -> dict[str, object]:
    """True and error exports, after the predicted ones (every prediction cached): the error
    PMTiles by the CLI with no true value cached, the others from the cache it filled."""
    out = tmp_path_factory.mktemp("source-exports")
    cold = subprocess.run(
        [sys.executable, "-m", "iou_maps.cli", "export", STORM, "--source", "error",
         "--format", "pmtiles", "--out", str(out / "alpha-miou-error.pmtiles")],
        cwd=REPO, env=cli_env(settings), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert cold.returncode == 0, cold.stderr[-3000:]
    workers_before = worker_processes()
    engine = open_export_engine(settings)
    try:
        result: dict[str, object] = {"dir": out, "cold_stdout": cold.stdout}
        result["error"] = out / "alpha-miou-error.pmtiles"
        result["true"] = export_storm(
            "pmtiles", engine, MetricMap(STORM, "miou", "true"), out / "alpha-miou-true.pmtiles"
        )
        error = MetricMap(STORM, "miou", "error")
        result["error_cog"] = export_storm("cog", engine, error, out / "alpha-miou-error.tif")
        result["error_cog256"] = export_storm(
            "cog", engine, error, out / "alpha-miou-error-256.tif",
            ExportOptions(pixels_per_tile=256),
        )  # fmt: skip
        result["model_ids"] = {s.value: engine.sources.source_id(s) for s in Source}
        truth = engine.sources.channels["true"]
        result["warm_model_calls"] = engine.model_calls + truth.flight.model_calls
        result["model_process_started"] = worker_processes() != workers_before
    finally:
        engine.close()
    return result


@pytest.fixture(scope="module")
def service(exports, source_exports, settings, tmp_path_factory) -> Iterator[ServiceProcess]:
    log = tmp_path_factory.mktemp("export-service") / "service.log"
    with ServiceProcess(settings.data_dir, settings.redis_url, log_path=log) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=120) as c:
        yield c


def metric_url(z: int, x: int, y: int, fmt: str = "png", source: str = "predicted") -> str:
    url = f"/storms/{STORM}/metrics/miou/tiles/WebMercatorQuad/{z}/{x}/{y}.{fmt}"
    return url if source == "predicted" else f"{url}?source={source}"


def values_computed(stdout: str) -> int:
    """The "values computed" row of the export command's table."""
    return int(stdout.split("values computed")[1].split()[1].strip("│|"))


def rgba(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)).convert("RGBA"))


# --------------------------------------------------------------------------- PMTiles


def test_cold_export_computed_every_value_through_the_cli(exports):
    out = exports["cold_stdout"]
    assert "values computed" in out and "model calls" in out
    assert values_computed(out) > 0  # the cache was empty: the model ran


@pytest.mark.parametrize("source", ["predicted", "true", "error"])
def test_pmtiles_archive_holds_the_services_tiles(exports, source_exports, client, source):
    """Each source's archive (the error one written by ``export --source error``) holds the
    service's ``?source=`` tiles byte for byte, with its legend (error: rdbu_r over -0.5..0.5
    by default, as the service) and the model id of its values."""
    path = exports["pmtiles"] if source == "predicted" else source_exports[source]
    path = getattr(path, "path", path)
    info = client.get(f"/storms/{STORM}").json()
    zooms = info["minzoom"], max(info["maxzoom"], info["analysis_zoom"])
    tilejson = client.get(
        f"/storms/{STORM}/metrics/miou/WebMercatorQuad/tilejson.json", params={"source": source}
    ).json()
    with open(path, "rb") as f:
        pm = MmapSource(f)
        reader = Reader(pm)
        header, meta = reader.header(), reader.metadata()
        tiles = {zxy: data for zxy, data in all_tiles(pm)}
    assert header["tile_type"] == TileType.PNG
    assert (header["min_zoom"], header["max_zoom"]) == zooms == (meta["minzoom"], meta["maxzoom"])
    assert meta["bounds"] == pytest.approx(info["bounds"])
    assert meta["legend_stops"] == tilejson["legend_stops"]
    assert meta["colormap_name"] == tilejson["colormap_name"]
    assert meta["rescale"] == pytest.approx(tilejson["rescale"])
    assert meta["model_id"] == tilejson["model_id"] == source_exports["model_ids"][source]
    assert meta["metric"] == "miou" and meta["source"] == source and meta["attribution"]
    if source == "predicted":
        assert meta["model_id"] == client.get("/healthz").json()["model_id"] == exports["model_id"]
    if source == "error":
        assert (meta["colormap_name"], meta["rescale"]) == ("rdbu_r", [-0.5, 0.5])
    assert {z for z, _, _ in tiles} == set(range(zooms[0], zooms[1] + 1))
    for (z, x, y), data in tiles.items():
        r = client.get(metric_url(z, x, y, source=source))
        assert r.status_code == 200, (z, x, y)
        assert r.content == data, f"tile {z}/{x}/{y} differs from the service's"
        assert r.headers["X-IoU-Missing"] == "0"
        assert r.headers["X-IoU-Model"] == meta["model_id"]
    # Every other tile around the storm is empty at the service too (204).
    for z in range(zooms[0], zooms[1] + 1):
        w, s, e, n = info["bounds"]
        pad = 360 / 2**z
        for t in mercantile.tiles(w - pad, s - pad, e + pad, n + pad, zooms=[z]):
            if (t.z, t.x, t.y) not in tiles:
                r = client.get(metric_url(t.z, t.x, t.y, source=source))
                assert r.status_code == 204, t


def test_true_and_error_exports_computed_only_the_true_values(exports, source_exports):
    """``export --source error`` with every prediction cached computed the true values (the
    segmentation model in a worker process); the exports after it made no model call."""
    out = source_exports["cold_stdout"]
    assert values_computed(out) > 0 and "aggregates written" in out
    assert source_exports["true"].fill.computed == source_exports["true"].fill.model_calls == 0
    assert source_exports["true"].fill.already_cached == source_exports["true"].fill.total
    assert source_exports["error_cog"].fill.computed == 0
    assert source_exports["warm_model_calls"] == 0
    assert not source_exports["model_process_started"]
    ids = source_exports["model_ids"]
    assert ids["error"] == f"{ids['predicted']}+{ids['true']}" and ids["true"] != ids["predicted"]


def test_export_from_a_warm_cache_makes_no_model_call(settings, exports, tmp_path, redis_server):
    key = f"iou-counters:{exports['model_id']}"
    counters_before = redis_server.client().hgetall(key)
    assert int(counters_before[b"model_calls"]) > 0  # the cold export's
    workers_before = worker_processes()
    engine = open_export_engine(settings)
    try:
        summary = export_storm(
            "pmtiles", engine, MetricMap(STORM, "dice", colormap_name="viridis"),
            tmp_path / "dice.pmtiles",
        )  # fmt: skip
        assert summary.fill.computed == 0 and summary.fill.model_calls == 0
        assert summary.fill.already_cached == summary.fill.total > 0
        assert engine.model_calls == 0 and engine.tiles_computed == 0
        assert worker_processes() == workers_before  # no model process was even started
    finally:
        engine.close()
    assert summary.tiles > 0
    assert redis_server.client().hgetall(key) == counters_before


def test_imagery_archive_holds_the_services_imagery_tiles(exports, client):
    with open(exports["imagery"].path, "rb") as f:
        source = MmapSource(f)
        reader = Reader(source)
        assert reader.header()["tile_type"] == TileType.WEBP
        assert reader.metadata()["layer"] == "imagery"
        tiles = list(all_tiles(source))
    assert tiles
    for (z, x, y), data in tiles:
        r = client.get(f"/storms/{STORM}/imagery/tiles/WebMercatorQuad/{z}/{x}/{y}.webp")
        assert r.status_code == 200 and r.content == data, (z, x, y)


# --------------------------------------------------------------------------- MBTiles


def test_mbtiles_archive_reads_in_gdal_as_the_services_tiles(exports, client):
    path = exports["mbtiles"].path
    db = sqlite3.connect(path)
    rows = db.execute("SELECT zoom_level, tile_column, tile_row FROM tiles").fetchall()
    meta = dict(db.execute("SELECT name, value FROM metadata").fetchall())
    db.close()
    assert meta["format"] == "png" and meta["model_id"] == exports["model_id"]
    maxzoom = max(z for z, _, _ in rows)
    compared = 0
    # GDAL opens the deepest zoom, and each zoom above as an overview (factor 2 each).
    for level, z in ((None, maxzoom), (0, maxzoom - 1)):
        opts = {} if level is None else {"overview_level": level}
        with rasterio.open(path, **opts) as ds:
            assert ds.driver == "MBTiles" and ds.crs.to_epsg() == 3857 and ds.count == 4
            data = ds.read()
            transform, shape = ds.transform, (ds.height, ds.width)
        for zz, x, row in rows:
            if zz != z:
                continue
            y = (1 << z) - 1 - row
            win = from_bounds(*mercantile.xy_bounds(x, y, z), transform=transform)
            col0, row0 = round(win.col_off), round(win.row_off)
            assert abs(win.col_off - col0) < 1e-6 and abs(win.width - 256) < 1e-6
            inside = Window(col0, row0, 256, 256).intersection(Window(0, 0, shape[1], shape[0]))
            c, r = int(inside.col_off), int(inside.row_off)
            h, w = int(inside.height), int(inside.width)
            gdal = np.moveaxis(data[:, r : r + h, c : c + w], 0, -1)
            service = rgba(client.get(metric_url(z, x, y)).content)[
                r - row0 : r - row0 + h, c - col0 : c - col0 + w
            ]
            assert (gdal[..., 3] == service[..., 3]).all(), (z, x, y)
            seen = service[..., 3] > 0
            assert (gdal[seen] == service[seen]).all(), (z, x, y)
            compared += int(seen.sum())
    assert compared > 0


# --------------------------------------------------------------------------- COG


@pytest.mark.parametrize("source", ["predicted", "error"])
def test_cog_is_valid_and_holds_the_point_values(exports, source_exports, client, storm, source):
    """The COG's pixel at each analysis tile's centre is the point lookup's value there (for
    ``error``: the lookup's ``?source=error``, predicted − true; NaN where it has none)."""
    path = (exports["cog"] if source == "predicted" else source_exports["error_cog"]).path
    valid, errors, warnings = cog_validate(path)
    assert valid and not errors, (errors, warnings)
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 3857 and ds.dtypes == ("float32",) and np.isnan(ds.nodata)
        assert ds.descriptions == ("miou",)
        tags = ds.tags()
        assert tags["MODEL_ID"] == source_exports["model_ids"][source]
        assert tags["SOURCE"] == source
        band = ds.read(1)
        transform = ds.transform
    tiles = tiles_of(storm, 18)
    found = 0
    for t in tiles:
        b = mercantile.bounds(t)
        centre = shapely.Point((b.west + b.east) / 2, (b.south + b.north) / 2)
        # The point lookup at the tile's centre, or where the tile meets the scenes if its
        # centre lies outside them (the lookup answers 404 outside every scene).
        inside = (
            centre
            if storm.coverage.contains(centre)
            else shapely.box(*b).intersection(storm.coverage).representative_point()
        )
        r = client.get(f"/storms/{STORM}/point/{inside.x},{inside.y}", params={"source": source})
        row, col = rasterio.transform.rowcol(transform, *mercantile.xy(centre.x, centre.y))
        pixel = band[row, col]
        if r.status_code == 404:  # no imagery (for error: no true value) in that tile
            assert np.isnan(pixel)
            continue
        assert r.status_code == 200
        assert r.json()["tile"] == {"z": t.z, "x": t.x, "y": t.y, "bounds": list(b)}
        assert r.json()["source"] == source
        value = r.json()["metrics"]["miou"]
        assert (np.isnan(pixel) and value is None) or np.float32(value) == pixel, (t, value)
        if source == "error" and value is not None:
            both = r.json()["predicted"]["miou"], r.json()["true"]["miou"]
            assert value == pytest.approx(both[0] - both[1], abs=1e-6)
        found += int(value is not None)
    assert found > 0
    # One pixel per analysis tile: nothing else has a value.
    assert int((~np.isnan(band)).sum()) == found


@pytest.mark.parametrize("source", ["predicted", "error"])
def test_cog_overviews_are_the_services_aggregated_tiles(
    exports, source_exports, client, storm, source
):
    """Overviews are the service's aggregates (for ``error``: its mean absolute errors)."""
    path = (exports["cog256"] if source == "predicted" else source_exports["error_cog256"]).path
    valid, errors, _ = cog_validate(path)
    assert valid and not errors
    with rasterio.open(path) as ds:
        overviews = ds.overviews(1)
        origin = ~ds.transform @ (ds.bounds.left, ds.bounds.top)
        assert origin == (0, 0)
    assert overviews == [2, 4]  # 12 analysis tiles at 256 px: two levels above the blocks
    ppt = 256
    checked = 0
    for level in range(len(overviews)):
        zoom = 18 - level - 1  # the aggregate cells of this overview
        with rasterio.open(path, overview_level=level) as ds:
            band, transform = ds.read(1), ds.transform
        x0, y0 = (transform.c, transform.f)
        for t in tiles_at(storm, zoom - 4):  # the service shows these cells on tiles 4 up
            r = client.get(metric_url(t.z, t.x, t.y, "npy", source))
            assert r.status_code in (200, 204), t
            service = (  # 256 x 256: 16 px per cell
                np.load(io.BytesIO(r.content))[0]
                if r.status_code == 200
                else np.full((256, 256), np.nan, np.float32)
            )
            for j in range(16):
                for i in range(16):
                    cell = mercantile.Tile(t.x * 16 + i, t.y * 16 + j, zoom)
                    b = mercantile.xy_bounds(cell)
                    col = round((b.left - x0) / transform.a)
                    row = round((b.top - y0) / transform.e)
                    want = service[16 * j + 8, 16 * i + 8]
                    if not (0 <= row < band.shape[0] and 0 <= col < band.shape[1]):
                        assert np.isnan(want)
                        continue
                    got = band[row + ppt // 2, col + ppt // 2]
                    assert (np.isnan(want) and np.isnan(got)) or want == got, (cell, want, got)
                    checked += int(not np.isnan(want))
    assert checked > 0


# --------------------------------------------------------------------------- STAC


def test_stac_collection_of_the_storm_and_its_exports_validates(exports, storm, tmp_path):
    out = exports["dir"]
    result = write_storm_collection(storm, out)
    assert result.scene_items == len(storm.footprints) == 4
    assert result.export_items == 2 and result.export_assets == 5
    assert validate(result.collection_path) == 1 + 4 + 2
    collection = pystac.Collection.from_file(str(result.collection_path))
    items = {i.id: i for i in collection.get_items()}
    model = exports["model_id"]
    metric = items[f"{STORM}-miou-predicted-{model}"]
    assert set(metric.assets) == {"pmtiles", "mbtiles", "cog", "cog-256px"}
    for asset in metric.assets.values():
        assert Path(asset.get_absolute_href()).is_file()
    assert metric.assets["pmtiles"].media_type == "application/vnd.pmtiles"
    assert metric.assets["cog"].extra_fields["proj:code"] == "EPSG:3857"
    assert metric.properties["iou_maps:model_id"] == model
    assert metric.properties["iou_maps:classes"] == list(DEMO_CLASSES.names)
    assert set(items[f"{STORM}-imagery"].assets) == {"pmtiles"}
    for row in storm.footprints.itertuples():
        scene = items[f"{STORM}-{row.scene_id}"]
        assert scene.geometry["type"] == row.geometry.geom_type
        assert Path(scene.assets["image"].href) == Path(row.path).resolve()
        assert scene.datetime.isoformat().startswith(row.datetime[:19])
    # Validation is real: a broken Item fails it, and no schema is fetched.
    item_path = Path(metric.get_self_href())
    broken = json.loads(item_path.read_text())
    broken["assets"]["cog"]["proj:code"] = 3857  # must be a string
    item_path.write_text(json.dumps(broken))
    with pytest.raises(StacError, match="proj:code|3857"):
        validate(result.collection_path)
    broken["assets"]["cog"]["proj:code"] = "EPSG:3857"
    broken["stac_extensions"].append("https://example.invalid/unknown/v1.0.0/schema.json")
    with offline_validation(), pytest.raises(StacError, match="example.invalid"):
        pystac.validation.validate_dict(broken)


def test_stac_catalogues_true_and_error_exports(source_exports, storm):
    """An Item per map: the true one under the segmentation model's id, the error one under
    both models' ids."""
    result = write_storm_collection(storm, source_exports["dir"])
    assert result.export_items == 2 and result.export_assets == 4
    assert validate(result.collection_path) == 1 + 4 + 2
    items = {i.id: i for i in pystac.Collection.from_file(str(result.collection_path)).get_items()}
    ids = source_exports["model_ids"]
    assert set(items[f"{STORM}-miou-true-{ids['true']}"].assets) == {"pmtiles"}
    error = items[f"{STORM}-miou-error-{ids['error']}"]
    assert set(error.assets) == {"pmtiles", "cog", "cog-256px"}
    assert error.properties["iou_maps:source"] == "error"
    assert error.properties["iou_maps:model_id"] == ids["error"]


def test_stac_cli_writes_a_valid_collection(exports, settings, tmp_path):
    runner = CliRunner()
    r = runner.invoke(
        app,
        ["stac", STORM, "--out", str(tmp_path), "--export", str(exports["cog"].path)],
        env=cli_env(settings),
    )
    assert r.exit_code == 0, r.output
    assert "valid" in r.output and (tmp_path / "collection.json").is_file()
    assert validate(tmp_path / "collection.json") == 1 + 4 + 1


# --------------------------------------------------------------------------- bad input


def test_export_rejects_bad_options_naming_them(settings, tmp_path):
    with pytest.raises(ExportError, match="metric 'nope'"):
        MetricMap(STORM, "nope")
    with pytest.raises(ExportError, match="colormap 'nope'"):
        MetricMap(STORM, colormap_name="nope")
    with pytest.raises(ExportError, match="rescale"):
        MetricMap(STORM, rescale=(1.0, 0.0))
    with pytest.raises(ExportError, match="source 'nope'"):
        MetricMap(STORM, source="nope")
    runner = CliRunner()
    env = cli_env(settings)
    base = ["export", STORM, "--out", str(tmp_path / "x.pmtiles")]
    cases = [
        (["--format", "pmtiles", "--minzoom", "3"], "minzoom 3 is outside 10..19"),
        (["--format", "mbtiles", "--maxzoom", "25"], "maxzoom 25 is outside 10..19"),
        (["--format", "pmtiles", "--source", "nope"], "nope"),
        (["--format", "cog", "--layer", "imagery"], "--layer imagery"),
        (["--format", "pmtiles", "--tile-format", "tif"], "--tile-format"),
        (["--format", "pmtiles", "--rescale", "1"], "--rescale"),
        (["--format", "zip"], "zip"),
    ]
    for args, message in cases:
        r = runner.invoke(app, base + args, env=env)
        assert r.exit_code == 2, (args, r.output)
        assert message in " ".join(r.output.split()), (args, r.output)
    assert not list(tmp_path.iterdir())  # nothing half-written
    r = runner.invoke(app, ["export", "nosuchstorm", "--format", "cog", "--out", "x.tif"], env=env)
    assert r.exit_code == 2 and "nosuchstorm" in r.output
    engine = open_export_engine(settings)
    try:
        layer = MetricMap(STORM)
        with pytest.raises(ExportError, match="pixels_per_tile"):
            export_storm("cog", engine, layer, tmp_path / "x.tif", ExportOptions(pixels_per_tile=0))
        with pytest.raises(ExportError, match="minzoom 30 is outside"):
            export_storm(
                "pmtiles", engine, ImageryMap(STORM), tmp_path / "x.pmtiles",
                ExportOptions(tile_format="webp", minzoom=30),
            )  # fmt: skip
        with pytest.raises(UnknownExportFormat, match="'zip'; valid: pmtiles, mbtiles, cog"):
            export_storm("zip", engine, layer, tmp_path / "x.zip")
        with pytest.raises(UnsupportedLayer, match="metric values only"):
            export_storm("cog", engine, ImageryMap(STORM), tmp_path / "x.tif")
        for fmt, layer_, tile_format in (
            ("pmtiles", layer, "npy"),
            ("mbtiles", layer, "jpeg"),
            ("pmtiles", ImageryMap(STORM), "npy"),
        ):
            with pytest.raises(BadTileFormat, match=tile_format):
                export_storm(
                    fmt,
                    engine,
                    layer_,
                    tmp_path / f"x.{fmt}",
                    ExportOptions(tile_format=tile_format),
                )
    finally:
        engine.close()
    assert not list(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize(("source", "fmt"), [("true", "pmtiles"), ("error", "cog")])
def test_export_of_true_values_without_labels_says_why(
    with_bare,
    settings,
    tmp_path,
    source,
    fmt,
):
    """A storm without label rasters has no true (hence no error) values: exit 2 with the
    engine's reason, before anything is computed or written."""
    r = CliRunner().invoke(
        app,
        ["export", BARE, "--source", source, "--format", fmt, "--out", str(tmp_path / "x")],
        env=cli_env(settings, with_bare.data_dir),
    )
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert f"storm '{BARE}' has no label rasters: {source} metrics need labels" in text, text
    assert "Traceback" not in r.output
    assert not list(tmp_path.iterdir())


def test_export_of_true_values_without_a_segmentation_model_says_why(
    served_data, settings, exports, tmp_path
):
    """Without the segmentation model of the true metrics, true and error exports are refused
    naming it; predicted ones need only the regressor (here: its values cached)."""
    data = tmp_path / "data"
    shutil.copytree(served_data.data_dir / "storms", data / "storms")
    regressor = Path("models", "tiny", "regressor")
    shutil.copytree(served_data.data_dir / regressor, data / regressor)
    out = tmp_path / "out"
    env = cli_env(settings, data)
    base = ["export", STORM, "--format", "cog"]
    for source in ("true", "error"):
        r = CliRunner().invoke(
            app, [*base, "--source", source, "--out", str(out / "x.tif")], env=env
        )
        assert r.exit_code == 2, r.output
        text = " ".join(r.output.split())
        assert f"{source} metrics are unavailable: no segmentation model" in text, text
        assert not out.exists()
    r = CliRunner().invoke(app, [*base, "--out", str(out / "x.tif")], env=env)
    assert r.exit_code == 0, r.output
    assert (out / "x.tif").is_file()
