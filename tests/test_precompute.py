"""Precompute: full fill then zero inference, SIGKILL + resume, corrupt scenes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mercantile
import numpy as np
import pytest
import redis
import shapely

from iou_maps.compute.engine import MetricEngine
from iou_maps.compute.metric_store import unpack
from iou_maps.compute.precompute import precompute, storm_tiles
from iou_maps.errors import CacheUnavailable
from iou_maps.models.registry import load_regressor_model
from iou_maps.storms.catalog import Catalog
from iou_maps.storms.grid import tiles_intersecting

from .conftest import ServedData


def engine_for(data: ServedData, client: redis.Redis | None, budget: int = 64) -> MetricEngine:
    reg = load_regressor_model(data.data_dir, data.model)
    return MetricEngine(Catalog(data.data_dir), reg, client, reg.analysis_zoom, budget)


def cli_env(data: ServedData, redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "IOU_MAPS_DATA_DIR": str(data.data_dir),
        "IOU_MAPS_MODEL": data.model,
    }


def test_full_fill_then_every_tile_and_point_without_inference(served_data, redis_url) -> None:
    client = redis.Redis.from_url(redis_url)
    summary = precompute(engine_for(served_data, client), served_data.storm, batch_size=5)
    assert summary.total > 0 and summary.failed == 0
    assert summary.computed + summary.no_imagery == summary.total
    assert summary.model_calls == -(-summary.computed // 5)  # full batches of 5

    fresh = engine_for(served_data, client, budget=10_000)
    loaded = fresh.storm(served_data.storm)
    storm, backend = loaded.storm, loaded.backend
    seen_values = 0
    for z in range(backend.minzoom, backend.maxzoom + 1):
        for tile in tiles_intersecting(storm.coverage, z):
            grid = fresh.tile_grid(served_data.storm, tile)
            assert grid.missing == 0 and grid.computed == 0, (tile, grid.missing)
            seen_values += int(grid.has_imagery.sum())
    pts = storm.footprints.geometry.representative_point()
    for p in pts:
        got = fresh.point_values(served_data.storm, p.x, p.y)
        assert got.cached and got.predicted is not None and got.predicted.has_imagery
    assert fresh.model_calls == 0 and seen_values > 0

    # Aggregates are the mean of the analysis tiles below them.
    za = fresh.analysis_zoom
    tiles = storm_tiles(fresh, served_data.storm)
    parent = mercantile.parent(tiles[0], zoom=za - 3)
    kids = [t for t in tiles if mercantile.parent(t, zoom=za - 3) == parent]
    got = fresh.store.get_many(served_data.storm, [parent, *kids])
    vals = np.array([got[k].values for k in kids if got[k].has_imagery])
    np.testing.assert_allclose(got[parent].values, np.nanmean(vals, axis=0), atol=1e-4)
    assert got[parent].count == len(vals)

    again = precompute(fresh, served_data.storm)
    assert again.computed == 0 and again.already_cached == summary.total
    refreshed = precompute(fresh, served_data.storm, refresh=True)
    assert refreshed.computed == summary.computed and refreshed.already_cached == 0


def test_sigkill_then_resume_loses_and_recomputes_nothing(bigger_data, redis_url) -> None:
    client = redis.Redis.from_url(redis_url)
    engine = engine_for(bigger_data, client)
    total = len(storm_tiles(engine, bigger_data.storm))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "iou_maps.cli",
            "precompute",
            bigger_data.storm,
            "--batch-size",
            "2",
        ],
        env=cli_env(bigger_data, redis_url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    za = engine.analysis_zoom

    def stored() -> int:
        return sum(
            client.hlen(k) for k in client.scan_iter(match=f"iou:*:{bigger_data.storm}:{za}:*")
        )

    deadline = time.monotonic() + 120
    while stored() < 6:
        assert proc.poll() is None, "precompute ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = stored()
    assert 0 < before < total, "kill should land mid-run"
    # Every stored value is whole.
    for key in client.scan_iter(match=f"iou:*:{bigger_data.storm}:*"):
        for raw in client.hvals(key):
            unpack(raw, engine.classes.nmetrics)

    summary = precompute(engine, bigger_data.storm, batch_size=8)
    assert summary.already_cached == before
    assert summary.computed + summary.no_imagery == total - before
    assert summary.failed == 0
    assert stored() == total


def test_corrupt_scene_counts_as_failed_and_the_rest_is_stored(
    served_data, tmp_path, redis_url
) -> None:
    data = ServedData(tmp_path / "data", served_data.source_dir)  # a copy: one scene corrupted
    shutil.copytree(served_data.data_dir, data.data_dir, ignore=shutil.ignore_patterns("redis"))
    storm = Catalog(data.data_dir).storm(data.storm)
    bad = Path(storm.footprints.iloc[0]["path"])
    assert bad.is_relative_to(data.data_dir)  # the shared data stays whole
    raw = bad.read_bytes()
    bad.write_bytes(raw[:2048] + b"\xde\xad" * ((len(raw) - 2048) // 2))  # header ok, data junk
    res = subprocess.run(
        [sys.executable, "-m", "iou_maps.cli", "precompute", data.storm],
        env=cli_env(data, redis_url),
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1, res.stderr
    assert "failed" in res.stderr and bad.stem in res.stderr
    client = redis.Redis.from_url(redis_url)
    engine = engine_for(data, client)
    tiles = storm_tiles(engine, data.storm)
    cached = engine.store.get_many(data.storm, tiles)
    bad_geom = storm.footprints.geometry.iloc[0]
    untouched = [t for t in tiles if not bad_geom.intersects(shapely.box(*mercantile.bounds(t)))]
    assert untouched and all(t in cached for t in untouched)
    assert len(cached) < len(tiles)


def test_precompute_refuses_without_redis(served_data, tmp_path) -> None:
    with pytest.raises(CacheUnavailable):
        precompute(engine_for(served_data, None), served_data.storm)
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    with pytest.raises(CacheUnavailable):
        precompute(engine_for(served_data, dead), served_data.storm)


def test_cli_rejects_bad_bbox_and_unknown_storm(served_data, redis_url) -> None:
    env = cli_env(served_data, redis_url)
    res = subprocess.run(
        [sys.executable, "-m", "iou_maps.cli", "precompute", served_data.storm, "--bbox", "1,2,3"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 2 and "bbox" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "iou_maps.cli", "precompute", "nosuch"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 2 and "unknown storm" in res.stderr
