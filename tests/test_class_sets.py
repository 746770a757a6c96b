"""Models with their own class sets: a 2-class water mask and a 5-class model, in
segmentation_gym's file layout, from evaluate to tiles, point, summary, exports and the viewer's
metric menu, served side by side on the same storm; and what is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import mercantile
import numpy as np
import pytest
import redis

from iou_maps.compute.engine import MetricEngine
from iou_maps.compute.metric_store import MetricStore, pack, unpack
from iou_maps.compute.precompute import precompute
from iou_maps.compute.truth import SegmentationSource
from iou_maps.errors import BadClassSet, ClassSetMismatch, LabelClassError, MetricNotInModel
from iou_maps.exports.formats import FORMATS
from iou_maps.exports.maps import MetricMap
from iou_maps.exports.options import ExportOptions
from iou_maps.layers.registry import Source
from iou_maps.models.classes import DEMO_CLASSES, NODATA_LABEL, ClassSet
from iou_maps.models.gym_files import CLASSES_FILE, CONFIG_FILE, model_classes
from iou_maps.models.pipeline import (
    evaluate_storm,
    regressor_metadata,
    regressor_training_set,
)
from iou_maps.models.registry import (
    load_regressor_model,
    load_segmentation_model,
    regressor_dir,
    segmentation_dir,
)
from iou_maps.models.regressor.files import load_regressor, model_id_of, save_regressor
from iou_maps.models.regressor.train import train_regressor
from iou_maps.models.segmentation.config import SegmentationConfig, demo_config
from iou_maps.models.segmentation.files import save_segmentation
from iou_maps.storms.catalog import Catalog
from iou_maps.storms.ingest import ingest
from iou_maps.storms.synthetic.classes import SYNTHETIC_CLASSES
from iou_maps.storms.synthetic.generate import generate_storm
from iou_maps.storms.synthetic.world import BUILDING, DEVELOPMENT, SAND, VEGETATION, WATER
from service.testing import ServiceProcess

WATER_CLASSES = ("water", "not_water")
FIVE_CLASSES = ("water", "sand", "vegetation", "paved", "building")


# --------------------------------------------------------------------------- class sets


def test_a_class_set_names_its_metrics_and_refuses_bad_names() -> None:
    two = ClassSet(WATER_CLASSES)
    assert two.metrics == ("iou_water", "iou_not_water", "miou", "dice") and two.nmetrics == 4
    assert two.hex_colors()["water"] == "#1f78b4"  # the demo's water colour, wherever it is
    assert DEMO_CLASSES.metrics == (
        "iou_water", "iou_sand", "iou_vegetation", "iou_development", "miou", "dice"
    )  # fmt: skip
    with pytest.raises(BadClassSet, match="at least 2"):
        ClassSet(("water",))
    with pytest.raises(BadClassSet, match="repeated: \\['sand'\\]"):
        ClassSet(("sand", "water", "sand"))
    with pytest.raises(BadClassSet, match="URL-safe.*'Water'.*'bare ground'"):
        ClassSet(("Water", "bare ground", "ok"))
    with pytest.raises(MetricNotInModel, match="iou_sand.*valid: iou_water, iou_not_water"):
        two.metric_index("iou_sand")


def test_the_config_or_classes_txt_names_the_classes(tmp_path) -> None:
    gym = {**demo_config(), "NCLASSES": 2}
    assert SegmentationConfig.from_dict(gym).classes.names == ("class0", "class1")
    named = SegmentationConfig.from_dict({**gym, "MY_CLASS_NAMES": {"1": "land", "0": "water"}})
    assert named.classes.names == ("water", "land")
    assert SegmentationConfig.from_dict(demo_config()).classes == DEMO_CLASSES
    with pytest.raises(BadClassSet, match="MY_CLASS_NAMES names 3 classes .* NCLASSES = 2"):
        SegmentationConfig.from_dict({**gym, "MY_CLASS_NAMES": ["a", "b", "c"]})
    with pytest.raises(BadClassSet, match="--classes names 3"):
        SegmentationConfig.from_dict(gym).with_classes(ClassSet.parse("a,b,c"))
    (tmp_path / CONFIG_FILE).write_text(json.dumps(gym))
    (tmp_path / "config_fullmodel.h5").write_bytes(b"")
    (tmp_path / CLASSES_FILE).write_text("water\nwater\n")
    with pytest.raises(BadClassSet, match="classes.txt.*repeated"):
        model_classes(tmp_path)
    (tmp_path / CLASSES_FILE).write_text("water\nnot_water\n")
    assert model_classes(tmp_path).names == WATER_CLASSES
    assert SegmentationConfig.from_json(tmp_path / CONFIG_FILE).classes.names == WATER_CLASSES


def test_values_pack_for_any_metric_count_and_the_demo_bytes_stay() -> None:
    demo = np.array([0.5, np.nan, 1.0, 0.0, 0.25, 0.75], np.float32)
    # The 4-class cache's bytes: 6 little-endian uint16, 65535 for NaN (as before class sets).
    assert pack(demo) == np.array([32767, 65535, 65534, 0, 16384, 49150], "<u2").tobytes()
    assert pack(demo, 7)[12:] == np.uint32(7).astype("<u4").tobytes()
    for n in (4, 7, 8):
        v = np.linspace(0, 1, n).astype(np.float32)
        for count in (1, 3):
            entry = unpack(pack(v, count), n)
            assert entry.count == count and entry.values is not None
            np.testing.assert_allclose(entry.values, v, atol=1e-5)
    # 16 bytes: 8 metrics, or 6 metrics and a count; the store's count decides which.
    assert unpack(pack(np.zeros(6), 5), 6).count == 5
    assert len(unpack(pack(np.zeros(8)), 8).values) == 8  # type: ignore[arg-type]


def test_synthetic_covers_map_to_each_class_set() -> None:
    covers = np.array([WATER, SAND, VEGETATION, DEVELOPMENT, BUILDING, NODATA_LABEL], np.uint8)
    demo = SYNTHETIC_CLASSES["demo"]
    assert demo.classes == DEMO_CLASSES
    assert demo.relabel(covers).tolist() == [0, 1, 2, 3, 3, 255]  # houses are development
    assert SYNTHETIC_CLASSES["water"].relabel(covers).tolist() == [0, 1, 1, 1, 1, 255]
    five = SYNTHETIC_CLASSES["buildings"]
    assert five.classes.names == FIVE_CLASSES
    assert five.relabel(covers).tolist() == [0, 1, 2, 3, 4, 255]


# --------------------------------------------------------------------------- models


class ClassData:
    """A data directory with one storm in two labellings (2 and 5 classes) and two models."""

    def __init__(self, root: Path) -> None:
        self.data_dir = root / "data"
        self.root = root


def tiny_gym_model(nclasses: int, **config: object):
    """A tiny untrained segmentation_gym resunet of ``nclasses`` classes."""
    import keras

    from iou_maps.models.segmentation.model import SegmentationModel
    from iou_maps.models.segmentation.network import build_model

    cfg = {**demo_config(), "NCLASSES": nclasses, "TARGET_SIZE": [64, 64], "FILTERS": 4}
    cfg.update(config)
    keras.utils.set_random_seed(nclasses)
    parsed = SegmentationConfig.from_dict(cfg)
    return SegmentationModel(parsed, build_model(parsed))


def cli(data: ClassData, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IOU_MAPS_DATA_DIR": str(data.data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "iou_maps.cli", *args], env=env, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> ClassData:
    """Storm ``two`` (water / not_water labels) and ``five`` (the same ground, 5 classes);
    model ``water2`` (brought as gym's config.json + _fullmodel.h5, named with --classes)
    trained through the CLI, model ``five5`` (names in MY_CLASS_NAMES) in process."""
    out = ClassData(tmp_path_factory.mktemp("classes"))
    for storm, classes in (("two", "water"), ("five", "buildings")):
        src = out.root / f"src-{storm}"
        generate_storm(storm, src, scenes=3, seed=5, size=512, classes=classes)
        assert len(ingest(out.data_dir, storm, [src]).ingested) == 3
    save_segmentation(tiny_gym_model(2), segmentation_dir(out.data_dir, "water2"))
    table = out.root / "two.parquet"
    res = cli(out, "evaluate", "two", "--model", "water2", "--classes", "water,not_water",
              "--out", str(table))  # fmt: skip
    assert res.returncode == 0, res.stderr
    res = cli(out, "train-regressor", "--segmentation", "water2", "--table", str(table),
              "--out", "water2", "--epochs", "2")  # fmt: skip
    assert res.returncode == 0, res.stderr

    seg5 = tiny_gym_model(5, MY_CLASS_NAMES=list(FIVE_CLASSES))
    save_segmentation(seg5, segmentation_dir(out.data_dir, "five5"))
    storm = Catalog(out.data_dir).storm("five")
    evaluation = evaluate_storm(storm, seg5, 18)
    training = regressor_training_set(Catalog(out.data_dir), [evaluation.table], seg5.cfg.classes)
    model, report = train_regressor(
        seg5, training.images, training.targets, training.scene_sets, epochs=2, heads=1
    )
    save_regressor(
        model, regressor_metadata("five5", seg5, 18, training, report),
        regressor_dir(out.data_dir, "five5"),
    )  # fmt: skip
    return out


def engine_of(data: ClassData, model: str, client: redis.Redis) -> MetricEngine:
    reg = load_regressor_model(data.data_dir, model)
    truth = SegmentationSource(segmentation_dir(data.data_dir, model))
    return MetricEngine(Catalog(data.data_dir), reg, client, reg.analysis_zoom, truth=truth)


def test_the_models_carry_their_class_sets(data) -> None:
    seg_dir = segmentation_dir(data.data_dir, "water2")
    assert sorted(p.name for p in seg_dir.iterdir()) == [
        CLASSES_FILE, CONFIG_FILE, "config_fullmodel.h5"
    ]  # fmt: skip
    assert load_segmentation_model(data.data_dir, "water2").cfg.classes.names == WATER_CLASSES
    two, five = (load_regressor_model(data.data_dir, m) for m in ("water2", "five5"))
    assert two.classes.names == WATER_CLASSES and five.classes.names == FIVE_CLASSES
    assert two.metadata["metrics"] == list(two.classes.metrics)
    assert two.model_id != five.model_id
    chips = np.zeros((2, 256, 256, 3), np.uint8)
    assert two.predict(chips).shape == (2, 4) and five.predict(chips).shape == (2, 7)
    validation = five.metadata["validation_scores"]
    assert set(validation) == set(five.classes.metrics)


def test_precompute_summary_and_exports_of_each_model(data, redis_server, tmp_path) -> None:
    client = redis_server.client()
    for model, storm, classes in (
        ("water2", "two", WATER_CLASSES),
        ("five5", "five", FIVE_CLASSES),
    ):
        engine = engine_of(data, model, client)
        try:
            assert engine.classes.names == classes
            precompute(engine, storm, source=Source.true)
            summary = engine.summary(storm)
            assert summary.metrics == list(engine.classes.metrics)
            assert summary.compared == summary.evaluated > 0
            assert summary.accuracy is not None and set(summary.accuracy) == set(summary.metrics)
            metric = f"iou_{classes[-1]}"
            out = tmp_path / f"{model}.pmtiles"
            layer = MetricMap(storm, metric)
            written = FORMATS["pmtiles"].write(engine, layer, out, ExportOptions())
            assert written.tiles > 0
            meta = FORMATS["pmtiles"].read_metadata(out)
            assert meta["metric"] == metric and meta["classes"] == list(classes)
            with pytest.raises(MetricNotInModel, match="valid: iou_water"):
                FORMATS["pmtiles"].write(
                    engine, MetricMap(storm, "iou_nothing"), tmp_path / "x.pmtiles",
                    ExportOptions(),
                )  # fmt: skip
        finally:
            engine.close()


# --------------------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def services(data, redis_server, tmp_path_factory) -> Iterator[dict[str, httpx.Client]]:
    """The two models served side by side on the same Redis."""
    logs = tmp_path_factory.mktemp("class-services")
    with (
        ServiceProcess(data.data_dir, redis_server.url, model="water2",
                       log_path=logs / "water2.log") as two,
        ServiceProcess(data.data_dir, redis_server.url, model="five5",
                       log_path=logs / "five5.log") as five,
        httpx.Client(base_url=two.url, timeout=120) as c2,
        httpx.Client(base_url=five.url, timeout=120) as c5,
    ):  # fmt: skip
        yield {"water2": c2, "five5": c5}


def centre_tile(data: ClassData, storm: str) -> mercantile.Tile:
    w, s, e, n = Catalog(data.data_dir).storm(storm).bounds
    return mercantile.tile((w + e) / 2, (s + n) / 2, 18)


def test_each_service_lists_and_serves_its_models_metrics(data, services, redis_server) -> None:
    t = centre_tile(data, "two")
    ids = {}
    for model, classes in (("water2", WATER_CLASSES), ("five5", FIVE_CLASSES)):
        c = services[model]
        metrics = [f"iou_{n}" for n in classes] + ["miou", "dice"]
        info = c.get("/storms/two").json()
        assert info["metrics"] == metrics
        assert [k["name"] for k in info["classes"]] == list(classes)
        ids[model] = info["model_id"]
        tj = c.get(f"/storms/two/metrics/iou_{classes[-1]}/WebMercatorQuad/tilejson.json")
        assert tj.status_code == 200 and tj.json()["metrics"] == metrics
        base = f"/storms/two/metrics/{{}}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.npy"
        r = c.get(base.format(f"iou_{classes[-1]}"))
        assert r.status_code == 200, r.text
        other = "iou_building" if model == "water2" else "iou_not_water"
        r = c.get(base.format(other))
        assert r.status_code == 404 and all(m in r.json()["detail"] for m in metrics)
        assert c.get(f"/storms/two/metrics/{other}/WMTSCapabilities.xml").status_code == 404
        lon, lat = mercantile.ul(t.x, t.y, t.z)
        point = c.get(f"/storms/two/point/{lon + 1e-6},{lat - 1e-6}")
        assert point.status_code == 200 and list(point.json()["predicted"]) == metrics
        page = c.get("/").text
        assert f'value="iou_{classes[-1]}"' in page and f'value="{other}"' not in page
        summary = c.get("/storms/two/summary").json()
        assert summary["model_id"] == ids[model]
    # Their ids differ, so their caches never mix: each key space holds its own vectors.
    assert ids["water2"] != ids["five5"]
    client = redis_server.client()
    for model, n in (("water2", 4), ("five5", 7)):
        got = MetricStore(client, ids[model], nmetrics=n).get_many("two", [t])
        assert got[t].values is not None and len(got[t].values) == n


# --------------------------------------------------------------------------- refused


def test_a_regressor_of_other_classes_than_its_segmentation_model_is_refused(data) -> None:
    mixed = regressor_dir(data.data_dir, "mixed")
    shutil.copytree(regressor_dir(data.data_dir, "water2"), mixed)
    meta = json.loads((mixed / "metadata.json").read_text())
    (mixed / "metadata.json").write_text(json.dumps({**meta, "segmentation": "five5"}))
    with pytest.raises(ClassSetMismatch, match="'water', 'not_water'.*'paved', 'building'"):
        load_regressor_model(data.data_dir, "mixed")


def test_labels_of_other_classes_are_refused_naming_the_file(data) -> None:
    # The 2-class model on the 5-class storm: label ids 2..4 are none of its classes.
    storm = Catalog(data.data_dir).storm("five")
    seg = load_segmentation_model(data.data_dir, "water2")
    with pytest.raises(
        LabelClassError, match=r"storms/five/labels/.*tif hold class ids \[2.*model's 2"
    ):
        evaluate_storm(storm, seg, 18)


def test_cli_refuses_classes_of_another_count(data) -> None:
    res = cli(data, "evaluate", "two", "--model", "water2", "--classes", "a,b,c")
    assert res.returncode == 2 and "NCLASSES = 2" in res.stderr
    res = cli(data, "evaluate", "two", "--model", "water2", "--classes", "Water,land")
    assert res.returncode == 2 and "URL-safe" in res.stderr


def test_a_regressor_saved_before_class_sets_loads_with_its_id(served_data, tmp_path) -> None:
    demo = load_regressor_model(served_data.data_dir, served_data.model)
    # Saved without naming classes: the demo's four, recorded as every regressor has them.
    assert demo.classes == DEMO_CLASSES
    assert demo.metadata["classes"] == list(DEMO_CLASSES.names)
    assert demo.metadata["metrics"] == list(DEMO_CLASSES.metrics)
    # Metadata with no class set at all: the demo's classes, and the id it was saved with.
    legacy = tmp_path / "legacy"
    shutil.copytree(regressor_dir(served_data.data_dir, served_data.model), legacy)
    meta = {k: v for k, v in demo.metadata.items() if k not in ("classes", "metrics")}
    meta["model_id"] = model_id_of(demo.model, meta)
    (legacy / "metadata.json").write_text(json.dumps(meta))
    loaded = load_regressor(legacy, classes=DEMO_CLASSES)
    assert loaded.classes == DEMO_CLASSES and loaded.model_id == meta["model_id"]
    assert loaded.predict(np.zeros((1, 256, 256, 3), np.uint8)).shape == (1, 6)
