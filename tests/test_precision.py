"""Reduced-precision inference: the machine's bfloat16 units, the precision in a regressor's
metadata and id, bfloat16 outputs against float32's, and which variant the loader picks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from iou_maps.errors import ModelNotFound, RegressorError
from iou_maps.models.precision import (
    bf16_units,
    check_precision,
    choose_precision,
    machine_precisions,
)
from iou_maps.models.registry import (
    load_regressor_model,
    prepared_precisions,
    regressor_dir,
    regressor_metadata,
    save_regressors,
    serving_precision,
)
from iou_maps.models.regressor.features import encode, encode_as_served
from iou_maps.models.regressor.files import load_regressor, model_id_of, save_regressor
from iou_maps.models.regressor.model import Regressor
from iou_maps.models.regressor.network import build_regressor

from .conftest import tiny_segmentation

META = {"input_size": [64, 64], "analysis_zoom": 18, "segmentation": "tiny"}

#: Each layer of a bfloat16 network rounds its activations to 8 significant bits (relative
#: error 2^-9 ≈ 0.002); over the UNet's ~20 layers that moved a softmax probability by up to
#: 0.008 on the demo-size network, and the heads' outputs (sigmoids of dense layers over
#: statistics of those probabilities) by 1e-4 to 4e-4 there and 3e-4 on this test's network.
#: 0.01 leaves room for other weights and kernels, and is still under a quarter of the
#: regressor's own error (mIoU MAE 0.045): a difference that large would show on the maps.
OUTPUT_TOLERANCE = 0.01


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / f"cpuinfo-{len(flags)}"
    path.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: fpu sse2 {flags}\n\n")
    return path


def test_bf16_units_from_the_processor_flags(tmp_path) -> None:
    amx = cpuinfo(tmp_path, "avx512f avx512_bf16 amx_tile amx_bf16")
    avx512 = cpuinfo(tmp_path, "avx512f avx512_bf16")
    none = cpuinfo(tmp_path, "avx2 avx512f")
    assert bf16_units(amx) == "amx_bf16" and bf16_units(avx512) == "avx512_bf16"
    assert bf16_units(none) is None and bf16_units(tmp_path / "missing") is None
    assert machine_precisions(amx) == machine_precisions(avx512) == ("bfloat16", "float32")
    assert machine_precisions(none) == ("float32",)
    both = ("float32", "bfloat16")
    # auto: the fastest the machine has units for, among those prepared.
    assert choose_precision("auto", both, amx) == "bfloat16"
    assert choose_precision("auto", both, none) == "float32"
    assert choose_precision("auto", ("float32",), amx) == "float32"
    # A setting: that precision where prepared (whatever the units), else float32.
    assert choose_precision("float32", both, amx) == "float32"
    assert choose_precision("bfloat16", both, none) == "bfloat16"
    assert choose_precision("bfloat16", ("float32",), amx) == "float32"
    with pytest.raises(RegressorError, match="float16"):
        choose_precision("float16", both, amx)
    with pytest.raises(ValueError, match="valid: float32, bfloat16"):
        check_precision("auto")


@pytest.fixture(scope="module")
def seg():
    return tiny_segmentation()


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    return np.random.default_rng(2).integers(0, 255, (5, 256, 256, 3), dtype=np.uint8)


def test_precision_is_in_the_metadata_and_the_id(seg, tmp_path) -> None:
    model = build_regressor(seg)
    f32 = save_regressor(model, META, tmp_path / "f32")
    bf16 = save_regressor(model, {**META, "precision": "bfloat16"}, tmp_path / "bf16")
    assert (f32.precision, bf16.precision) == ("float32", "bfloat16")
    assert f32.model_id != bf16.model_id  # same weights: values never mix in the cache
    loaded = load_regressor(tmp_path / "bf16")
    assert loaded.precision == "bfloat16" and loaded.model_id == bf16.model_id
    meta = json.loads((tmp_path / "bf16" / "metadata.json").read_text())
    assert meta["precision"] == "bfloat16"

    # A regressor saved before precisions: no precision in its metadata, its id computed
    # without one. It loads as float32 with that id.
    old = json.loads((tmp_path / "f32" / "metadata.json").read_text())
    del old["precision"]
    old["model_id"] = model_id_of(model, old)
    (tmp_path / "f32" / "metadata.json").write_text(json.dumps(old))
    before = load_regressor(tmp_path / "f32")
    assert before.precision == "float32" and before.model_id == old["model_id"] != f32.model_id

    meta["precision"] = "float8"
    (tmp_path / "bf16" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(RegressorError, match="precision 'float8'"):
        load_regressor(tmp_path / "bf16")


def test_bfloat16_outputs_close_to_float32(seg, chips) -> None:
    model = build_regressor(seg)
    f32 = Regressor(model, {**META, "precision": "float32"}, branches=2)
    bf16 = Regressor(model, {**META, "precision": "bfloat16"}, branches=2)
    a, b = f32.outputs(chips), bf16.outputs(chips)
    assert a.predicted_share is not None and b.predicted_share is not None
    # Computed in bfloat16 (else identical), and close: see OUTPUT_TOLERANCE.
    assert not np.array_equal(a.metrics, b.metrics)
    np.testing.assert_allclose(b.metrics, a.metrics, atol=OUTPUT_TOLERANCE)
    np.testing.assert_allclose(b.predicted_share, a.predicted_share, atol=OUTPUT_TOLERANCE)
    # A single chip (the network split inside, not by chips) gives the same as in a batch.
    np.testing.assert_allclose(bf16.outputs(chips[:1]).metrics, b.metrics[:1], atol=1e-6)


def test_heads_train_on_the_features_served(seg, chips) -> None:
    # This process trains (oneDNN off): bfloat16 features come from an inference child
    # process, as the served regressor computes them; float32 ones from here.
    model = build_regressor(seg)
    f32 = encode(model, chips)
    served = encode_as_served(model, chips, "bfloat16")
    assert served.shape == f32.shape and not np.array_equal(served, f32)
    shares = slice(0, 4)  # the predicted shares of the classes (probabilities)
    np.testing.assert_allclose(served[:, shares], f32[:, shares], atol=OUTPUT_TOLERANCE)
    np.testing.assert_array_equal(encode_as_served(model, chips, "float32"), f32)


def test_loader_picks_the_prepared_precision_the_machine_runs(seg, tmp_path, monkeypatch) -> None:
    model = build_regressor(seg)
    data = tmp_path / "data"
    trained = [(model, META), (model, {**META, "precision": "bfloat16"})]
    f32, bf16 = save_regressors(data, "m", trained)
    assert regressor_dir(data, "m", "bfloat16").name == "regressor-bfloat16"
    assert bf16.metadata["variant_of"] == f32.model_id
    assert prepared_precisions(data, "m") == ("float32", "bfloat16")
    fastest = machine_precisions()[0]  # bfloat16 on a processor with AMX / AVX512-BF16
    for setting, expected in (("auto", fastest), ("float32", "float32"), ("bfloat16", "bfloat16")):
        reg = load_regressor_model(data, "m", setting)
        assert reg.precision == expected and serving_precision(data, "m", setting) == expected
        # The id the processes that do not load the model read is the loaded one's.
        assert regressor_metadata(data, "m", setting)["model_id"] == reg.model_id
        assert reg.model_id == (bf16 if expected == "bfloat16" else f32).model_id
    # Off by setting: IOU_MAPS_PRECISION, the default of every caller.
    monkeypatch.setenv("IOU_MAPS_PRECISION", "float32")
    assert load_regressor_model(data, "m").model_id == f32.model_id
    monkeypatch.setenv("IOU_MAPS_PRECISION", "bfloat16")
    assert regressor_metadata(data, "m")["model_id"] == bf16.model_id

    # The float32 regressor trained again alone: the variant left from before is not its own.
    save_regressor(model, {**META, "note": "retrained"}, regressor_dir(data, "m"))
    assert prepared_precisions(data, "m") == ("float32",)
    assert load_regressor_model(data, "m", "bfloat16").precision == "float32"
    with pytest.raises(ModelNotFound, match="no metric regressor 'other'"):
        regressor_metadata(data, "other")
    with pytest.raises(ValueError, match="always prepared in float32"):
        save_regressors(data, "n", trained[1:])
