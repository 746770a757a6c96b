"""Metric regressor: structure, model id, save/load, refusals, retrace-free inference."""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest

from iou_maps.errors import ClassSetMismatch, RegressorError
from iou_maps.models.classes import DEMO_CLASSES, NODATA_LABEL, ClassSet
from iou_maps.models.inference_graph import foldable_batch_norms
from iou_maps.models.metrics import class_fractions
from iou_maps.models.model_layers import FlipAugmented
from iou_maps.models.regressor.features import encode
from iou_maps.models.regressor.files import load_regressor, save_regressor
from iou_maps.models.regressor.model import Regressor
from iou_maps.models.regressor.network import (
    FEATURES,
    KINDS,
    NETWORK,
    build_regressor,
    features_model,
    head_of,
    kind_of,
)
from iou_maps.models.regressor.train import masked_loss, split_by_scene, train_regressor
from iou_maps.models.segmentation.config import SegmentationConfig, demo_config
from iou_maps.models.segmentation.model import SegmentationModel

from .conftest import tiny_segmentation

META = {"input_size": [64, 64], "analysis_zoom": 18, "segmentation": "tiny"}


@pytest.fixture(scope="module")
def seg():
    return tiny_segmentation()


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 255, (9, 256, 256, 3), dtype=np.uint8)


def test_segmentation_is_frozen_and_its_own(seg) -> None:
    model = build_regressor(seg)
    frozen = model.get_layer("segmentation")
    assert not frozen.trainable and frozen.trainable_weights == []
    assert model.output.shape[-1] == len(DEMO_CLASSES.metrics)
    # The segmentation model's weights themselves, not copies: the heads read its output.
    seg_kernel = seg.model.get_layer("encoder_bottleneck").weights[0]
    assert any(w is seg_kernel for w in frozen.weights)
    assert all(w.trainable and w.path.startswith("head") for w in model.trainable_weights)


def colour_segmentation() -> SegmentationModel:
    """A one-layer model whose classes follow local colour: unlike an untrained UNet (one class
    everywhere), its predictions vary inside a chip, and its flips change them."""
    cfg = demo_config()
    cfg.update(TARGET_SIZE=[64, 64])
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 64, 3))
    init = keras.initializers.RandomNormal(stddev=2.0)
    outputs = keras.layers.Conv2D(
        4, 3, padding="same", activation="softmax", kernel_initializer=init
    )(inputs)
    return SegmentationModel(SegmentationConfig.from_dict(cfg), keras.Model(inputs, outputs))


def test_statistics_see_what_the_segmentation_predicts(chips) -> None:
    # The predicted share of each class over the imagery is the one evaluation measures from
    # SegmentationModel.predict (its preprocessing, test-time flips, resize to the chip,
    # argmax), so the heads see the classes that will enter the tile's mIoU.
    seg = colour_segmentation()
    holed = chips.copy()
    holed[:, :, 200:] = 0  # no imagery on the right: left out of every share
    pred = seg.predict(holed)
    pred[:, :, 200:] = NODATA_LABEL
    expected = class_fractions(pred, DEMO_CLASSES.nclasses)
    assert (np.sort(expected, axis=1)[:, -2] > 0.1).all()  # at least two classes in each chip
    model = build_regressor(seg)
    feats = encode(model, holed)
    assert feats.shape == (len(chips), model.get_layer(FEATURES).output.shape[-1])
    np.testing.assert_allclose(feats[:, : DEMO_CLASSES.nclasses], expected, atol=2e-3)
    assert np.isfinite(feats).all()


def test_output_is_the_average_of_the_heads(seg, chips) -> None:
    model = build_regressor(seg, heads=3)
    for k in range(3):  # distinct heads, as training makes them
        w = model.get_layer(f"head{k}_iou").bias
        w.assign(w.numpy() + k - 1.0)
    x = chips[:4].astype(np.float32)
    feats = features_model(model)(x)
    per_head = [keras.ops.convert_to_numpy(head_of(model, k)(feats)) for k in range(3)]
    assert not np.allclose(per_head[0], per_head[2])
    np.testing.assert_allclose(model(x), np.mean(per_head, axis=0), atol=1e-6)
    assert build_regressor(seg, heads=1).output.shape[-1] == len(DEMO_CLASSES.metrics)
    with pytest.raises(ValueError, match="heads"):
        build_regressor(seg, heads=0)


def test_round_trip_same_outputs_and_model_id(seg, chips, tmp_path) -> None:
    model = build_regressor(seg)
    saved = save_regressor(model, META, tmp_path / "r")
    loaded = load_regressor(tmp_path / "r")
    assert saved.model_id == loaded.model_id and len(saved.model_id) == 12
    np.testing.assert_array_equal(saved.predict(chips), loaded.predict(chips))
    again = save_regressor(loaded.model, loaded.metadata, tmp_path / "r2")
    assert again.model_id == saved.model_id
    meta = json.loads((tmp_path / "r" / "metadata.json").read_text())
    assert meta["metrics"] == list(DEMO_CLASSES.metrics) and meta["model_id"] == saved.model_id


def test_changed_weight_changes_the_id(seg, tmp_path) -> None:
    model = build_regressor(seg)
    first = save_regressor(model, META, tmp_path / "a").model_id
    w = model.get_layer("head0_iou").kernel
    w.assign(w.numpy() + 1e-3)
    assert save_regressor(model, META, tmp_path / "b").model_id != first


def test_refuses_mismatched_classes_and_tampered_files(seg, tmp_path) -> None:
    save_regressor(build_regressor(seg), META, tmp_path / "r")
    meta_path = tmp_path / "r" / "metadata.json"
    meta = json.loads(meta_path.read_text())

    bad = tmp_path / "classes"
    shutil.copytree(tmp_path / "r", bad)
    (bad / "metadata.json").write_text(json.dumps({**meta, "classes": ["water", "land"]}))
    with pytest.raises(RegressorError, match="classes"):
        load_regressor(bad)
    with pytest.raises(ClassSetMismatch, match="segmentation model has .*'class4'"):
        load_regressor(tmp_path / "r", classes=ClassSet.generic(5))

    tampered = tmp_path / "tampered"
    shutil.copytree(tmp_path / "r", tampered)
    (tampered / "metadata.json").write_text(json.dumps({**meta, "analysis_zoom": 17}))
    with pytest.raises(RegressorError, match="model id"):
        load_regressor(tampered)
    with pytest.raises(RegressorError, match="missing"):
        load_regressor(tmp_path / "nothing")

    # A regressor of the older layout (the segmentation model's input, not the chip).
    older = tmp_path / "older"
    older.mkdir()
    inputs = keras.Input((64, 64, 3))
    keras.Model(inputs, keras.layers.Dense(6)(inputs)).save(older / "model.keras")
    (older / "metadata.json").write_text(meta_path.read_text())
    with pytest.raises(RegressorError, match="older IoU Maps.*train-regressor"):
        load_regressor(older)


def test_one_trace_for_every_batch_size(seg, chips, tmp_path) -> None:
    reg = save_regressor(build_regressor(seg), META, tmp_path / "r")
    outs = [reg.predict(chips[:n]) for n in (1, 2, 5, 9)]
    assert reg.trace_count() == 1
    assert all(o.shape == (n, 6) for o, n in zip(outs, (1, 2, 5, 9), strict=True))
    defined = outs[-1][np.isfinite(outs[-1])]  # NaN: the IoU of a class predicted absent
    assert defined.size and np.all((defined >= 0) & (defined <= 1))
    # Batching does not change a tile's numbers.
    np.testing.assert_allclose(outs[-1][:1], outs[0], atol=1e-5)
    with pytest.raises(ValueError, match="chips"):
        reg.predict(chips[:, :128])


def test_masked_loss_ignores_absent_classes() -> None:
    y = np.array([[0.5, np.nan, 1.0, np.nan, 0.75, 0.8]], np.float32)
    p = np.array([[0.5, 0.9, 1.0, 0.1, 0.75, 0.8]], np.float32)
    assert float(keras.ops.convert_to_numpy(masked_loss(y, p))[0]) == pytest.approx(0.0)
    p2 = p.copy()
    p2[0, 0] = 0.0
    assert float(keras.ops.convert_to_numpy(masked_loss(y, p2))[0]) > 0


def test_split_by_scene_keeps_validation_scenes_out_of_training() -> None:
    sets = [frozenset({f"s{i % 6}", f"s{(i + 1) % 6}"}) for i in range(60)]
    train, val, val_scenes = split_by_scene(sets, 0.3, seed=0)
    assert train.any() and val.any()
    for s, is_train in zip(sets, train, strict=True):
        assert is_train == (not (s & set(val_scenes)))


def test_training_learns_a_learnable_target(seg) -> None:
    # The target is the share of the chip covered by noisy texture (the rest is flat):
    # structure that survives per-image standardisation, so the frozen segmentation sees it.
    rng = np.random.default_rng(0)
    level = rng.random(80)
    chips = np.full((80, 256, 256, 3), 120, np.uint8)
    for i, lv in enumerate(level):
        cols = int(lv * 256)
        chips[i, :, :cols] = rng.integers(0, 255, (256, cols, 3))
    y = np.repeat(level[:, None], 6, axis=1).astype(np.float32)
    sets = [frozenset({f"s{i % 8}"}) for i in range(80)]
    model, report = train_regressor(
        seg, chips, y, sets, epochs=200, patience=50, augment=False, heads=2
    )
    assert report["heads"] == 2 and len(report["epochs_run"]) == 2
    assert report["scores"]["miou"]["pearson_r"] > 0.8
    assert report["scores"]["miou"]["mae"] < report["scores"]["miou"]["baseline_mae"]


def with_batch_statistics(seg: SegmentationModel) -> SegmentationModel:
    """``seg`` with trained-looking batch-norm statistics (a fresh model's are 0 and 1, which
    folding leaves unchanged)."""
    rng = np.random.default_rng(2)
    for layer in seg.model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), rng.normal(0, 0.2, n),
                 rng.uniform(0.5, 1.5, n)]
            )  # fmt: skip
    return seg


@pytest.mark.parametrize("kind", KINDS)
def test_inference_copy_computes_what_the_model_does(kind, chips, tmp_path) -> None:
    # Regressor.predict runs a copy with batch norms folded into convolutions and the frozen
    # network on parallel branches: the numbers must be the saved model's own.
    seg = with_batch_statistics(tiny_segmentation())
    folded = foldable_batch_norms(seg.model)
    assert len(folded) >= 10  # most of a resunet's batch norms follow a convolution
    model = build_regressor(seg, kind)
    direct = keras.ops.convert_to_numpy(model(chips.astype(np.float32), training=False))
    for branches in (1, 2, 3):
        reg = Regressor(model, {**META, "kind": kind, "model_id": "x"}, branches=branches)
        assert reg.branches == branches
        np.testing.assert_allclose(reg.outputs(chips).metrics, direct, atol=1e-5)
        # A batch smaller than the branches (one chip: one image without flips) too.
        np.testing.assert_allclose(reg.outputs(chips[:1]).metrics, direct[:1], atol=1e-5)
        # What predict serves: the classes resolved from the same run (softmax kind).
        outputs = reg.outputs(chips)
        np.testing.assert_array_equal(reg.predict(chips), outputs.resolved())
        assert (outputs.presence is None) == (kind == "encoder")
    name = NETWORK[kind]
    for network in (
        reg.inference.whole.get_layer(name),
        reg.inference.by_network.get_layer(f"{name}_branches").network,
    ):
        names = {layer.name for layer in network.layers}
        assert not names & set(folded)  # the folded batch norms are gone from the copies
    kept = reg.model.get_layer(NETWORK[kind]).get_layer(next(iter(folded)))
    assert isinstance(kept, keras.layers.BatchNormalization)  # the saved model keeps them


def test_encoder_kind_trains_saves_and_loads(seg, tmp_path) -> None:
    rng = np.random.default_rng(0)
    level = rng.random(48)
    chips = np.full((48, 256, 256, 3), 120, np.uint8)
    for i, lv in enumerate(level):
        chips[i, :, : int(lv * 256)] = rng.integers(0, 255, (256, int(lv * 256), 3))
    y = np.repeat(level[:, None], 6, axis=1).astype(np.float32)
    sets = [frozenset({f"s{i % 6}"}) for i in range(48)]
    model, report = train_regressor(
        seg, chips, y, sets, epochs=60, patience=20, heads=2, kind="encoder"
    )
    assert report["kind"] == "encoder" and kind_of(model) == "encoder"
    # The seed design: the encoder alone (no decoder, no flips), frozen; heads of 6 sigmoids.
    assert not any(isinstance(layer, FlipAugmented) for layer in model.layers)
    encoder = model.get_layer("encoder")
    assert not encoder.trainable and encoder.trainable_weights == []
    assert all(w.path.startswith("head") for w in model.trainable_weights)
    assert not any(layer.name.startswith("conv2d_transpose") for layer in encoder.layers)
    assert encoder.output[-1].shape[1] == seg.cfg.target_size[0] // 16  # cut at the bottleneck
    saved = save_regressor(model, META, tmp_path / "enc")
    loaded = load_regressor(tmp_path / "enc")
    assert loaded.kind == saved.kind == "encoder"
    assert json.loads((tmp_path / "enc" / "metadata.json").read_text())["kind"] == "encoder"
    np.testing.assert_allclose(loaded.predict(chips[:5]), saved.predict(chips[:5]), atol=1e-6)
    # The kind is part of the metadata, hence of the model id.
    softmax = save_regressor(build_regressor(seg), META, tmp_path / "soft")
    assert softmax.kind == "softmax" and softmax.model_id != loaded.model_id
    with pytest.raises(ValueError, match="kind"):
        build_regressor(seg, "pixels")
    # Metadata that lies about the kind is refused.
    meta = json.loads((tmp_path / "enc" / "metadata.json").read_text())
    (tmp_path / "enc" / "metadata.json").write_text(json.dumps({**meta, "kind": "softmax"}))
    with pytest.raises(RegressorError, match="kind"):
        load_regressor(tmp_path / "enc")
