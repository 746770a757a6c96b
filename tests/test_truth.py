"""True and error values in process: `evaluate`'s numbers, cached by segmentation-model id;
error = predicted − true (its aggregates: the mean absolute error); a storm without labels has
none; precompute --source true; the storm summary and `iou-maps storms` for scripts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import mercantile
import numpy as np
import pytest
import redis
from mercantile import Tile

from iou_maps.compute.engine import MetricEngine
from iou_maps.compute.metric_store import MetricStore
from iou_maps.compute.precompute import precompute
from iou_maps.compute.truth import TRUE_NAMESPACE, SegmentationSource, segmentation_id
from iou_maps.errors import NoLabels
from iou_maps.exports.prediction import predict_table
from iou_maps.layers.registry import Source
from iou_maps.models.classes import DEMO_CLASSES
from iou_maps.models.pipeline import storm_chips
from iou_maps.models.registry import (
    load_regressor_model,
    truth_segmentation_dir,
)
from iou_maps.models.regressor.model import PRESENCE_THRESHOLD, resolve_classes
from iou_maps.storms.catalog import Catalog
from iou_maps.storms.grid import tiles_intersecting

from .conftest import BARE, ServedData
from .test_precompute import cli_env

#: Values are stored as uint16 steps of 1/65534 (metric_store).
STEP = 1 / 65534


def engine_for(data: ServedData, client: redis.Redis | None, budget: int = 10_000) -> MetricEngine:
    """An in-process engine with the regressor and the segmentation model of the true values."""
    reg = load_regressor_model(data.data_dir, data.model)
    truth = SegmentationSource(truth_segmentation_dir(data.data_dir, data.model))
    return MetricEngine(Catalog(data.data_dir), reg, client, reg.analysis_zoom, budget, truth=truth)


def table_tiles(table: gpd.GeoDataFrame) -> list[Tile]:
    return [Tile(int(r.x), int(r.y), int(r.z)) for r in table.itertuples()]


def vectors(entries: dict, tiles: list[Tile]) -> np.ndarray:
    return np.array([entries[t].values for t in tiles], np.float32)


def test_true_values_are_the_evaluate_tables(served_data, table, redis_url) -> None:
    client = redis.Redis.from_url(redis_url)
    engine = engine_for(served_data, client)
    tiles = table_tiles(table)
    assert len(tiles) >= 5
    expected = table[list(DEMO_CLASSES.metrics)].to_numpy(np.float32)
    got = engine.analysis_values(served_data.storm, tiles, source=Source.true)
    assert got.computed == len(tiles) and not got.missing
    computed = vectors(got.entries, tiles)
    np.testing.assert_array_equal(np.isnan(computed), np.isnan(expected))
    # At the cache's resolution: a value is served as it is stored.
    np.testing.assert_allclose(computed, expected, atol=STEP, equal_nan=True)
    # Labelled tiles that evaluate leaves out (too few labelled pixels) have no true value.
    storm = engine.storm(served_data.storm).storm
    others = [t for t in tiles_intersecting(storm.label_coverage, 18) if t not in set(tiles)]
    rest = engine.analysis_values(served_data.storm, others, source=Source.true)
    assert all(not rest.entries[t].has_imagery for t in others)
    engine.close()  # stores what it computed

    # Cached by the segmentation model's id, in their own key space: a fresh engine reads them.
    seg_dir = truth_segmentation_dir(served_data.data_dir, served_data.model)
    store = MetricStore(client, segmentation_id(seg_dir), TRUE_NAMESPACE)
    assert set(store.get_many(served_data.storm, tiles)) == set(tiles)
    assert not list(client.scan_iter(match=f"iou:*:{served_data.storm}:*"))  # nothing predicted
    fresh = engine_for(served_data, client)
    again = fresh.analysis_values(served_data.storm, tiles, source=Source.true)
    assert again.cached == len(tiles) and again.computed == 0 and "true" in fresh.sources.channels
    assert fresh.sources.channels["true"].flight.model_calls == 0
    np.testing.assert_allclose(vectors(again.entries, tiles), expected, atol=STEP, equal_nan=True)
    fresh.close()


def test_error_is_predicted_minus_true(served_data, table, redis_url) -> None:
    engine = engine_for(served_data, redis.Redis.from_url(redis_url))
    tiles = table_tiles(table)
    error = engine.analysis_values(served_data.storm, tiles, source=Source.error)
    assert not error.missing
    engine.flush()
    pred = engine.analysis_values(served_data.storm, tiles)
    true = engine.analysis_values(served_data.storm, tiles, source=Source.true)
    assert pred.computed == true.computed == 0  # the error request computed both
    diff = vectors(pred.entries, tiles) - vectors(true.entries, tiles)
    got = vectors(error.entries, tiles)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(diff))
    np.testing.assert_allclose(got, diff, atol=2 * STEP, equal_nan=True)
    assert np.isfinite(got[:, DEMO_CLASSES.metrics.index("miou")]).all()
    # A tile with no true value has no error either; a tile drawn at a far zoom is the mean
    # absolute error of the analysis tiles under it.
    grid = engine.tile_grid(
        served_data.storm, mercantile.parent(tiles[0], zoom=12), 0, Source.error
    )
    assert grid.level == 16 and grid.has_imagery.any()
    engine.close()


def test_a_storm_without_labels_has_no_true_or_error_values(with_bare, redis_url) -> None:
    engine = engine_for(with_bare, redis.Redis.from_url(redis_url))
    storm = engine.storm(BARE).storm
    tiles = tiles_intersecting(storm.coverage, 18)[:3]
    for source in (Source.true, Source.error):
        with pytest.raises(NoLabels, match=f"storm '{BARE}' has no label rasters"):
            engine.analysis_values(BARE, tiles, source=source)
        with pytest.raises(NoLabels, match="no label rasters"):
            engine.tile_grid(BARE, mercantile.parent(tiles[0], zoom=12), 0, source)
    with pytest.raises(NoLabels):
        precompute(engine, BARE, source=Source.true)
    assert engine.analysis_values(BARE, tiles).computed >= 1  # predicted values as ever
    c = storm.coverage.representative_point()
    point = engine.point_values(BARE, c.x, c.y)
    assert point.predicted is not None and point.true is None and not point.labelled
    summary = engine.summary(BARE)
    assert summary.labelled == 0 and summary.accuracy is None
    engine.close()


def test_precompute_true_fills_the_true_and_error_layers(served_data, table, redis_url) -> None:
    client = redis.Redis.from_url(redis_url)
    engine = engine_for(served_data, client)
    summary = precompute(engine, served_data.storm, source=Source.true, batch_size=4)
    storm = engine.storm(served_data.storm).storm
    labelled = tiles_intersecting(storm.label_coverage, 18)
    assert summary.source == "true" and summary.failed == 0
    assert (
        summary.total
        == len(labelled)
        == summary.computed - summary.layers["error"].computed + (summary.no_imagery)
    )
    # The error layer needed a prediction for each tile with a true value (none was cached).
    assert summary.layers["error"].computed == len(table)
    assert summary.aggregated > 0 and summary.layers["error"].aggregated == summary.aggregated
    engine.close()

    # Every true and error tile of every zoom is then answered from the cache alone.
    fresh = engine_for(served_data, client, budget=0)
    backend = fresh.storm(served_data.storm).backend
    for source in (Source.true, Source.error):
        for z in range(backend.minzoom, backend.maxzoom + 1):
            for tile in tiles_intersecting(storm.label_coverage, z):
                grid = fresh.tile_grid(served_data.storm, tile, source=source)
                assert grid.missing == 0 and grid.computed == 0, (source, tile)
    # A far-out error cell is the mean absolute error of the analysis tiles under it.
    first = table_tiles(table)[0]
    agg = fresh.tile_grid(served_data.storm, mercantile.parent(first, zoom=8), source=Source.error)
    assert agg.level == 12 and agg.has_imagery.sum() == 1
    (value,) = agg.values[agg.has_imagery]
    z12 = mercantile.parent(first, zoom=12)
    kids = [t for t in labelled if mercantile.parent(t, zoom=12) == z12]
    pred = fresh.analysis_values(served_data.storm, kids, budget=0)
    true = fresh.analysis_values(served_data.storm, kids, budget=0, source=Source.true)
    both = [k for k in kids if true.entries[k].has_imagery]
    abs_err = np.abs(vectors(pred.entries, both) - vectors(true.entries, both))
    # Per metric, over the tiles where it is defined (NaN where it is nowhere).
    known = ~np.isnan(abs_err)
    with np.errstate(invalid="ignore"):
        mae = np.where(known, abs_err, 0).sum(axis=0) / known.sum(axis=0)
    np.testing.assert_allclose(value, mae, atol=4 * STEP, equal_nan=True)
    assert np.isfinite(value[DEMO_CLASSES.metrics.index("miou")])
    # A second run computes nothing.
    again = precompute(fresh, served_data.storm, source=Source.true)
    assert again.computed == 0 and again.already_cached == again.total
    assert (
        fresh.model_calls == 0
        and "true" in fresh.sources.channels
        and fresh.sources.channels["true"].flight.model_calls == 0
    )
    fresh.close()


def test_summary_mae_is_the_tables_against_the_predictions(served_data, table, redis_url) -> None:
    client = redis.Redis.from_url(redis_url)
    engine = engine_for(served_data, client)
    precompute(engine, served_data.storm)
    precompute(engine, served_data.storm, source=Source.true)
    summary = engine.summary(served_data.storm)
    # The MAE from the `evaluate` table and the `predict` table of the same tiles.
    storm = engine.storm(served_data.storm).storm
    reg = load_regressor_model(served_data.data_dir, served_data.model)
    chips = storm_chips(storm, 18, labelled=False, tiles=table_tiles(table))
    predictions = predict_table(chips, reg.predict, reg.model_id, reg.classes)
    joined = table.merge(predictions, on=["z", "x", "y"], suffixes=("_true", "_pred"))
    assert len(joined) == len(table)
    for m in DEMO_CLASSES.metrics:
        t, p = joined[f"{m}_true"].to_numpy(), joined[f"{m}_pred"].to_numpy()
        ok = np.isfinite(t) & np.isfinite(p)
        assert summary.accuracy is not None and summary.accuracy[m].n == ok.sum(), m
        if ok.any():
            assert summary.accuracy[m].mae == pytest.approx(np.abs(p - t)[ok].mean(), abs=1e-4)
    assert summary.compared == summary.evaluated == len(table)
    assert summary.cached == summary.analysis_tiles == len(tiles_intersecting(storm.coverage, 18))
    assert summary.labelled == summary.true_cached
    assert sum(summary.histogram_counts) == summary.with_imagery
    assert summary.histogram_edges[0] == 0 and summary.histogram_edges[-1] == 1
    engine.close()

    # The same in `iou-maps storms STORM --json`, and as text for people.
    env = cli_env(served_data, redis_url)
    cmd = [sys.executable, "-m", "iou_maps.cli", "storms", served_data.storm]
    res = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, check=True)
    body = json.loads(res.stdout)
    assert body["accuracy"]["miou"]["mae"] == pytest.approx(summary.accuracy["miou"].mae)
    assert body["analysis_tiles"] == summary.analysis_tiles
    assert body["catalog"]["storm"] == served_data.storm
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    lines = dict(line.split("\t", 1) for line in res.stdout.splitlines() if "\t" in line)
    assert lines["compared"] == str(summary.compared)
    assert lines["miou"].split("\t")[0] == str(summary.accuracy["miou"].n)


def test_storms_for_scripts_prints_whole_values(with_bare, redis_url, tmp_path) -> None:
    """`iou-maps storms | grep NAME`: full names and bounds when stdout is not a terminal."""
    long_name = "a-storm-whose-name-is-longer-than-a-column-of-an-80-column-table"
    assert len(long_name) == 64
    data = ServedData(tmp_path / "data", with_bare.source_dir)  # the shared data stays as is
    shutil.copytree(with_bare.data_dir, data.data_dir)
    storms = data.data_dir / "storms"
    shutil.copytree(storms / BARE, storms / long_name)
    env = cli_env(data, redis_url)
    res = subprocess.run(
        [sys.executable, "-m", "iou_maps.cli", "storms"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    assert rows[0][:5] == ["storm", "scenes", "labelled", "area_km2", "bounds"]
    by_name = {r[0]: r for r in rows[1:]}
    assert set(by_name) == {BARE, long_name, data.storm}
    summary = Catalog(data.data_dir).summary().set_index("storm")
    for name, row in by_name.items():
        assert row[4] == summary.loc[name, "bounds"]  # e.g. -75.47309,35.58167,-75.46925,...
    assert any(line.startswith(long_name + "\t") for line in res.stdout.splitlines())
    res = subprocess.run(
        [sys.executable, "-m", "iou_maps.cli", "storms", "--json"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    listed = {s["storm"]: s for s in json.loads(res.stdout)}
    assert listed[long_name]["bounds"] == summary.loc[long_name, "bounds"]
    assert listed[BARE]["labelled"] == 0


def test_resolve_classes_says_which_classes_count() -> None:
    metrics = np.array([[0.8, 0.6, 0.4, 0.2, 0.5, 0.7]], np.float32)
    presence = np.array([[0.0, 0.0, PRESENCE_THRESHOLD + 0.1, PRESENCE_THRESHOLD - 0.1]])
    shares = np.array([[0.7, 0.3, 0.0, 0.0]])
    (out,) = resolve_classes(metrics, presence, shares)
    # Predicted classes keep their IoU, a missed one has IoU 0, an absent one none.
    np.testing.assert_allclose(out[:4], [0.8, 0.6, 0.0, np.nan], equal_nan=True)
    # mIoU is the mean over the classes with an IoU; Dice the heads'.
    assert out[4] == pytest.approx((0.8 + 0.6 + 0.0) / 3)
    assert out[5] == pytest.approx(0.7) and out.shape == (DEMO_CLASSES.nmetrics,)


def test_segmentation_id_follows_the_files(served_data, tmp_path) -> None:
    seg_dir = truth_segmentation_dir(served_data.data_dir, served_data.model)
    copy = Path(shutil.copytree(seg_dir, tmp_path / "seg"))
    assert segmentation_id(copy) == segmentation_id(seg_dir)
    config = next(copy.glob("*.json"))
    config.write_text(config.read_text() + " ")
    assert segmentation_id(copy) != segmentation_id(seg_dir)


def test_precompute_cli_source_true(with_bare, redis_url) -> None:
    env = cli_env(with_bare, redis_url)
    cmd = [sys.executable, "-m", "iou_maps.cli", "precompute"]
    res = subprocess.run(
        [*cmd, with_bare.storm, "--source", "true", "--json"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    body = json.loads(res.stdout)
    assert body["source"] == "true" and body["failed"] == 0
    assert (
        body["computed"] > body["layers"]["error"]["computed"] > 0
        and body["layers"]["error"]["aggregated"] > 0
    )
    res = subprocess.run(
        [*cmd, BARE, "--source", "true"], env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 2 and f"storm '{BARE}' has no label rasters" in res.stderr
    res = subprocess.run(
        [*cmd, BARE, "--source", "error"], env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 2 and "--source" in res.stderr
