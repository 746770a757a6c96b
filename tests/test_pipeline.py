"""The model pipeline through the CLI: train-segmentation → evaluate → train-regressor → predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from iou_maps.models.classes import DEMO_CLASSES
from iou_maps.models.registry import load_regressor_model, load_segmentation_model, regressor_dir
from iou_maps.models.segmentation.config import demo_config

from .conftest import ServedData, make_served_data


def run(data: ServedData, *args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IOU_MAPS_DATA_DIR": str(data.data_dir), **env_vars}
    return subprocess.run(
        [sys.executable, "-m", "iou_maps.cli", *args], env=env, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> ServedData:
    return make_served_data(tmp_path_factory.mktemp("pipeline"), scenes=4, size=768, seed=21)


def test_cli_pipeline_end_to_end(data, tmp_path) -> None:
    cfg = demo_config()
    cfg.update(TARGET_SIZE=[64, 64], FILTERS=4, BATCH_SIZE=4)
    cfg_path = tmp_path / "tiny.json"
    cfg_path.write_text(json.dumps(cfg))
    res = run(data, "train-segmentation", data.storm, "--out", "seg2", "--config", str(cfg_path),
              "--epochs", "1")  # fmt: skip
    assert res.returncode == 0, res.stderr
    seg = load_segmentation_model(data.data_dir, "seg2")
    assert seg.cfg.target_size == (64, 64)

    table_path = tmp_path / "eval" / "alpha.parquet"
    res = run(data, "evaluate", data.storm, "--model", "seg2", "--out", str(table_path))
    assert res.returncode == 0, res.stderr
    table = gpd.read_parquet(table_path)
    assert len(table) > 5 and table.crs.to_epsg() == 4326
    for col in (
        "z",
        "x",
        "y",
        "scene",
        *DEMO_CLASSES.metrics,
        "label_frac_water",
        "pred_frac_sand",
    ):
        assert col in table.columns
    vals = table[list(DEMO_CLASSES.metrics)].to_numpy()
    assert np.all(np.isnan(vals) | ((vals >= 0) & (vals <= 1)))
    assert table["miou"].notna().all()
    summary = pd.read_csv(table_path.with_name("alpha_scenes.csv"))
    assert summary["tiles"].sum() == len(table)
    png = table_path.with_name("alpha_examples.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    res = run(data, "train-regressor", "--segmentation", "seg2", "--table", str(table_path),
              "--out", "reg2", "--epochs", "3")  # fmt: skip
    assert res.returncode == 0, res.stderr
    reg = load_regressor_model(data.data_dir, "reg2")
    meta = reg.metadata
    assert meta["segmentation"] == "seg2" and meta["input_size"] == [64, 64]
    assert meta["validation"]["val_tiles"] > 0 and "miou" in meta["validation_scores"]
    assert meta["training_data"][0]["tiles"] == len(table)

    out = tmp_path / "pred" / "alpha.parquet"
    res = run(data, "predict", data.storm, "--model", "reg2", "--out", str(out))
    assert res.returncode == 0, res.stderr
    pq = gpd.read_parquet(out)
    gj = gpd.read_file(out.with_suffix(".geojson"))
    csv = pd.read_csv(out.with_suffix(".csv"))
    assert len(pq) == len(gj) == len(csv) >= len(table)
    assert set(pq["model_id"]) == {reg.model_id}
    assert csv["geometry"].str.startswith("POLYGON").all()  # WKT, as kepler.gl reads it
    np.testing.assert_allclose(pq["miou"].to_numpy(), gj["miou"].to_numpy(), rtol=1e-6)

    # The demo's step retrains a regressor saved in an older layout instead of failing.
    import keras

    from iou_maps.cli.demo import ensure_regressor

    older = regressor_dir(data.data_dir, "reg2")
    inputs = keras.Input((64, 64, 3))
    keras.Model(inputs, keras.layers.Dense(6)(inputs)).save(older / "model.keras")
    messages: list[str] = []
    again = ensure_regressor(data.data_dir, "reg2", seg, [table_path], 18, log=messages.append)
    assert "older IoU Maps" in messages[0] and again.model_id != reg.model_id
    assert load_regressor_model(data.data_dir, "reg2").model_id == again.model_id


def test_encoder_kind_through_the_cli(data, tmp_path, redis_url) -> None:
    # The seed's design as a choice: trained by the CLI, recorded in the metadata, and used by
    # precompute like the default kind.
    table_path = tmp_path / "alpha.parquet"
    res = run(data, "evaluate", data.storm, "--model", data.model, "--out", str(table_path))
    assert res.returncode == 0, res.stderr
    res = run(data, "train-regressor", "--segmentation", data.model, "--table", str(table_path),
              "--out", "enc", "--epochs", "3", "--kind", "encoder")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "encoder regressor 'enc'" in res.stdout
    reg = load_regressor_model(data.data_dir, "enc")
    assert reg.kind == reg.metadata["kind"] == "encoder"
    res = run(data, "precompute", data.storm, "--model", "enc", REDIS_URL=redis_url)
    assert res.returncode == 0, res.stderr
    assert "computed" in res.stdout
    res = run(data, "train-regressor", "--segmentation", data.model, "--table", str(table_path),
              "--kind", "pixels")  # fmt: skip
    assert res.returncode == 2 and "pixels" in res.stderr


def test_cli_errors_are_clear(data, tmp_path) -> None:
    res = run(data, "evaluate", data.storm, "--model", "nosuch", "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "no segmentation model 'nosuch'" in res.stderr
    res = run(data, "predict", "nosuch", "--model", data.model)
    assert res.returncode == 2 and "unknown storm" in res.stderr
    res = run(data, "train-regressor", "--segmentation", data.model, "--table",
              str(tmp_path / "missing.parquet"))  # fmt: skip
    assert res.returncode == 2 and "no such table" in res.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**demo_config(), "NCLASSES": 5, "MYSTERY": 1}))
    res = run(data, "train-segmentation", data.storm, "--config", str(bad), "--epochs", "1")
    assert res.returncode != 0 and "MYSTERY" in res.stderr


def test_readme_commands_exist() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
