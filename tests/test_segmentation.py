"""segmentation.py on real TensorFlow: configs, gym-compatible weights, preprocessing, training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from iou_maps.errors import ConfigError, WeightsError
from iou_maps.models.classes import NODATA_LABEL
from iou_maps.models.segmentation.config import KNOWN_CONFIG_KEYS, SegmentationConfig, demo_config
from iou_maps.models.segmentation.files import load_segmentation, load_weights, save_segmentation
from iou_maps.models.segmentation.model import SegmentationModel, standardize
from iou_maps.models.segmentation.network import bottleneck_layer_name, build_model
from iou_maps.models.segmentation.train import (
    encode_labels,
    masked_crossentropy,
    masked_dice_loss,
    train_segmentation,
)
from iou_maps.storms.synthetic.world import SAND, VEGETATION, WATER


def gym_config(**overrides: object) -> dict:
    """A complete segmentation_gym config as its users write them, sized for CPU tests."""
    cfg = {
        "TARGET_SIZE": [64, 64],
        "MODEL": "resunet",
        "NCLASSES": 4,
        "KERNEL": 3,
        "STRIDE": 2,
        "BATCH_SIZE": 8,
        "FILTERS": 4,
        "N_DATA_BANDS": 3,
        "DROPOUT": 0.1,
        "DROPOUT_CHANGE_PER_LAYER": 0.0,
        "DROPOUT_TYPE": "standard",
        "USE_DROPOUT_ON_UPSAMPLING": False,
        "DO_TRAIN": True,
        "LOSS": "cat",
        "PATIENCE": 10,
        "MAX_EPOCHS": 100,
        "VALIDATION_SPLIT": 0.6,
        "RAMPUP_EPOCHS": 0,
        "SUSTAIN_EPOCHS": 10,
        "EXP_DECAY": 0.9,
        "START_LR": 1e-7,
        "MIN_LR": 1e-7,
        "MAX_LR": 3e-3,
        "FILTER_VALUE": 0,
        "DOPLOT": True,
        "ROOT_STRING": "noaa_storm",
        "USEMASK": False,
        "AUG_ROT": 5,
        "AUG_ZOOM": 0.05,
        "AUG_WIDTHSHIFT": 0.05,
        "AUG_HEIGHTSHIFT": 0.05,
        "AUG_HFLIP": True,
        "AUG_VFLIP": False,
        "AUG_LOOPS": 10,
        "AUG_COPIES": 3,
        "REMAP_CLASSES": {"0": 0, "1": 1, "2": 2, "3": 3},
        "SET_GPU": "0",
        "WRITE_MODELMETADATA": False,
        "DO_CRF": False,
        "LOSS_WEIGHTS": False,
        "MODE": "all",
        "SET_PCI_BUS_ID": True,
        "TESTTIMEAUG": False,
        "OTSU_THRESHOLD": False,
    }
    cfg.update(overrides)
    return cfg


def randomise(model, seed: int = 0) -> None:
    """Give every weight (BN statistics included) non-initial values."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        new = []
        for v in layer.weights:
            w = v.numpy()
            noise = rng.normal(scale=0.1, size=w.shape).astype(w.dtype)
            new.append(np.abs(w) + 0.5 if "variance" in v.name else w + noise)
        if new:
            layer.set_weights(new)


def write_keras2_h5(model, path: Path) -> None:
    """What tf.keras 2 ``model.save_weights('x.h5')`` writes, done by hand with h5py."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([ly.name.encode() for ly in model.layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.10.0"
        for layer in model.layers:
            g = f.create_group(layer.name)
            names = [f"{layer.name}/{v.name}:0".encode() for v in layer.weights]
            g.attrs["weight_names"] = np.array(names, dtype="S")
            for name, v in zip(names, layer.weights, strict=True):
                g.create_dataset(name.decode(), data=v.numpy())


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ config


def test_full_gym_config_is_accepted():
    cfg = SegmentationConfig.from_dict(gym_config())
    assert cfg.target_size == (64, 64) and cfg.model == "resunet" and cfg.nclasses == 4
    assert (cfg.filters, cfg.kernel, cfg.stride, cfg.dropout) == (4, 3, 2, 0.1)
    assert cfg.raw == gym_config()
    assert set(gym_config()) <= KNOWN_CONFIG_KEYS
    assert set(demo_config()) <= KNOWN_CONFIG_KEYS
    SegmentationConfig.from_dict(demo_config())


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="TARGET_SIZ\\b"):
        SegmentationConfig.from_dict({**gym_config(), "TARGET_SIZ": [64, 64]})


def test_wrong_nclasses_missing_key_and_unknown_model():
    with pytest.raises(ConfigError, match="NCLASSES must be >= 2"):
        SegmentationConfig.from_dict(gym_config(NCLASSES=1))
    three = SegmentationConfig.from_dict(gym_config(NCLASSES=3))
    assert three.classes.names == ("class0", "class1", "class2")
    cfg = gym_config()
    del cfg["FILTERS"]
    with pytest.raises(ConfigError, match="missing .*FILTERS"):
        SegmentationConfig.from_dict(cfg)
    with pytest.raises(ConfigError, match="'segformer' is not supported"):
        SegmentationConfig.from_dict(gym_config(MODEL="segformer"))
    with pytest.raises(ConfigError, match="multiples of 16"):
        SegmentationConfig.from_dict(gym_config(TARGET_SIZE=[60, 64]))


def test_from_json(tmp_path: Path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(gym_config(MODEL="unet")))
    assert SegmentationConfig.from_json(p).model == "unet"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        SegmentationConfig.from_json(p)


# ----------------------------------------------------------------------------------- weights


def test_saved_model_reloads_with_identical_predictions(tmp_path: Path, images: np.ndarray):
    cfg = SegmentationConfig.from_dict(gym_config())
    seg = SegmentationModel(cfg, build_model(cfg))
    randomise(seg.model)
    save_segmentation(seg, tmp_path / "seg")
    assert {p.name for p in (tmp_path / "seg").iterdir()} == {
        "config.json",
        "config_fullmodel.h5",
    }
    again = load_segmentation(tmp_path / "seg")
    np.testing.assert_array_equal(
        seg.predict_proba(images), again.predict_proba(images), strict=True
    )
    # A config that builds another architecture must not silently load these weights.
    cfg_file = tmp_path / "seg" / "config.json"
    cfg_file.write_text(json.dumps(gym_config(FILTERS=8)))
    with pytest.raises(WeightsError, match="shapes"):
        load_segmentation(tmp_path / "seg")
    cfg_file.write_text(json.dumps(gym_config(MODEL="unet")))
    with pytest.raises(WeightsError, match="does not match"):
        load_segmentation(tmp_path / "seg")
    cfg_file.unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_segmentation(tmp_path / "seg")


@pytest.mark.parametrize("model", ["resunet", "unet", "simple_resunet", "simple_unet"])
def test_keras2_h5_loads_by_layer_order(tmp_path: Path, images: np.ndarray, model: str):
    raw = gym_config(MODEL=model, STRIDE=2 if model in ("resunet", "unet") else 1)
    cfg = SegmentationConfig.from_dict(raw)
    source = build_model(cfg)
    randomise(source, seed=3)
    zoo = tmp_path / "zoo"  # a Segmentation Zoo download: <stem>.json + <stem>_fullmodel.h5
    zoo.mkdir()
    (zoo / "storm_4class_123.json").write_text(json.dumps(raw))
    write_keras2_h5(source, zoo / "storm_4class_123_fullmodel.h5")

    fresh = build_model(cfg)
    load_weights(fresh, zoo / "storm_4class_123_fullmodel.h5")
    x = standardize(images)
    np.testing.assert_array_equal(source(x, training=False), fresh(x, training=False))
    loaded = load_segmentation(zoo)
    np.testing.assert_array_equal(source(x, training=False), loaded.model(x, training=False))


# ------------------------------------------------------------------------- preprocess/predict


def test_standardize_matches_definition():
    img = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    mean, std = 5.5, math.sqrt(sum((v - 5.5) ** 2 for v in range(12)) / 12)
    np.testing.assert_allclose(standardize(img), (img - mean) / std, rtol=1e-6)
    # Flat images: the std floor is 1/sqrt(H*W) (pixels, not pixels*bands), as in doodleverse.
    flat = np.full((1, 4, 4, 3), 7, dtype=np.uint8)
    out = standardize(flat)
    assert out.dtype == np.float32 and out.shape == flat.shape and not out.any()
    batch = np.stack([img, img * 2])
    np.testing.assert_allclose(standardize(batch)[1], standardize(img * 2), rtol=1e-6)


def test_predict_any_size_and_scene():
    cfg = SegmentationConfig.from_dict(gym_config())
    seg = SegmentationModel(cfg, build_model(cfg))
    chips = np.random.default_rng(0).integers(0, 256, (5, 100, 90, 3), dtype=np.uint8)
    ids = seg.predict(chips, batch_size=2)
    assert ids.shape == (5, 100, 90) and ids.dtype == np.uint8 and ids.max() < 4
    assert seg.predict(chips[0]).shape == (100, 90)
    scene = seg.predict_scene(chips[0, :, :70], overlap=0.25)
    assert scene.shape == (100, 70) and scene.dtype == np.uint8
    with pytest.raises(ValueError, match="N,H,W,3"):
        seg.predict(chips[..., :2])


def test_test_time_augmentation_averages_flips():
    cfg = SegmentationConfig.from_dict(gym_config())
    model = build_model(cfg)
    randomise(model, seed=3)
    plain = SegmentationModel(cfg, model)
    tta = SegmentationModel(SegmentationConfig.from_dict(gym_config(TESTTIMEAUG=True)), model)
    chips = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    flips = [
        plain.predict_proba(chips),
        plain.predict_proba(chips[:, ::-1])[:, ::-1],
        plain.predict_proba(chips[:, :, ::-1])[:, :, ::-1],
        plain.predict_proba(chips[:, ::-1, ::-1])[:, ::-1, ::-1],
    ]
    np.testing.assert_allclose(tta.predict_proba(chips), np.mean(flips, axis=0), atol=1e-5)
    assert not np.allclose(flips[0], flips[1], atol=1e-3)  # the flips really differ


def test_bottleneck_is_the_smallest_layer():
    for model in ("resunet", "simple_unet"):
        cfg = SegmentationConfig.from_dict(gym_config(MODEL=model, STRIDE=2))
        m = build_model(cfg)
        name = bottleneck_layer_name(m, cfg)
        sizes = {
            ly.name: ly.output.shape[1] * ly.output.shape[2]
            for ly in m.layers
            if len(ly.output.shape) == 4
        }
        assert sizes[name] == min(sizes.values()) == (64 // 16) ** 2
        # The encoder ends there: no upsampling before it in the layer order.
        names = [ly.name for ly in m.layers]
        first_up = next(i for i, ly in enumerate(m.layers) if "up_sampling" in ly.name)
        assert names.index(name) < first_up


# -------------------------------------------------------------------------------- training


@pytest.mark.parametrize("loss", [masked_crossentropy, masked_dice_loss])
def test_nodata_pixels_do_not_count(loss):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (2, 8, 8)).astype(np.uint8)
    labels[:, :3] = NODATA_LABEL
    y_true = encode_labels(labels, 4)
    assert not y_true[:, :3].any() and (y_true[:, 3:].sum(-1) == 1).all()
    pred = rng.dirichlet(np.ones(4), (2, 8, 8)).astype(np.float32)
    other = pred.copy()
    other[:, :3] = rng.dirichlet(np.ones(4), (2, 3, 8))  # change only under nodata
    assert float(loss(y_true, pred)) == pytest.approx(float(loss(y_true, other)), abs=1e-6)
    other[:, 5] = rng.dirichlet(np.ones(4), (2, 8))  # change labelled pixels too
    assert float(loss(y_true, pred)) != pytest.approx(float(loss(y_true, other)), abs=1e-4)


def halves(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Chips split into two coloured halves (water blue / sand yellow / vegetation green)."""
    rng = np.random.default_rng(seed)
    colours = {WATER: (30, 90, 170), SAND: (225, 205, 140), VEGETATION: (50, 140, 45)}
    ids = list(colours)
    imgs = np.empty((n, size, size, 3), dtype=np.uint8)
    labs = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        a, b = rng.choice(ids, 2, replace=False)
        cut = int(rng.integers(size // 4, 3 * size // 4))
        labs[i] = a
        labs[i, :, cut:] = b
        img = np.array([colours[c] for c in labs[i].ravel()], dtype=float).reshape(size, size, 3)
        imgs[i] = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        if rng.random() < 0.5:
            imgs[i], labs[i] = imgs[i].transpose(1, 0, 2), labs[i].T
        labs[i, :4] = NODATA_LABEL  # an unlabelled strip
    return imgs, labs


def test_training_learns_coloured_halves():
    imgs, labs = halves(96, 40, seed=0)  # 40 px chips, resized to TARGET_SIZE 32
    # unet: half the layers of resunet, so graph tracing stays short; the training code is shared.
    raw = gym_config(MODEL="unet", TARGET_SIZE=[32, 32], BATCH_SIZE=4, DROPOUT=0.0)
    cfg = SegmentationConfig.from_dict(raw)
    seg, history = train_segmentation(imgs, labs, cfg, epochs=6, val_fraction=0.15, seed=0)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert len(history["val_loss"]) == 6 and history["accuracy"][-1] > 0.9
    test_imgs, test_labs = halves(8, 40, seed=1)
    pred = seg.predict(test_imgs)
    valid = test_labs != NODATA_LABEL
    assert (pred[valid] == test_labs[valid]).mean() > 0.9
