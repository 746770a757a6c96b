"""The metric regressor: a frozen part of the segmentation model, then dense heads.

It predicts, from a 256×256 analysis-tile chip alone, the metric vector (per-class IoU, mIoU,
Dice) that the segmentation model would score against a label there. Two kinds:

- ``softmax`` (the default): the whole frozen UNet with its test-time flips, statistics of its
  softmax over the tile's imagery, heads that predict per-class IoU, missed classes and Dice.
- ``encoder`` (the design the project started from): the UNet's encoder alone, cut at its
  bottleneck, its feature maps pooled, heads that predict the six metrics. About 20x cheaper
  per chip and less accurate (README, bench/regressor_accuracy.py).

On disk::

    models/<name>/regressor/model.keras      frozen segmentation model + heads (Keras)
    models/<name>/regressor/metadata.json    classes, metrics, input size, analysis zoom,
                                              preprocessing, training data, validation scores,
                                              model id

The model id is a short hash of the weights and the metadata, so the same files always give
the same id and any changed weight gives a new one; the cache keys contain it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iou_maps.errors import RegressorError
from iou_maps.models import runtime
from iou_maps.models.backend import keras, tf
from iou_maps.models.classes import CLASSES, METRICS, NMETRICS
from iou_maps.models.inference_graph import InferenceModel
from iou_maps.models.model_layers import (
    ChipPreprocessing,
    FlipAugmented,
    ImageryMask,
    MeanOverCountedClasses,
    SoftmaxStatistics,
)
from iou_maps.models.segmentation import SegmentationModel, bottleneck_layer_name

CHIP_SIZE = 256
MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
#: Name of the layer whose output the heads read (the softmax statistics).
FEATURES = "features"
#: Chips per call of the compiled model inside ``Regressor.predict`` (see there).
PREDICT_CHUNK = 2
#: Dense heads averaged on the shared softmax statistics (see build_regressor).
HEADS = 5
#: The loss weighs mIoU more: it is the number the maps default to.
METRIC_WEIGHTS = np.array([1.0, 1.0, 1.0, 1.0, 2.0, 1.0], np.float32)
#: Regressor kinds (see the module docstring), the default first.
KINDS = ("softmax", "encoder")
#: The frozen network inside each kind's model: ``Regressor`` runs it on parallel branches.
NETWORK = {"softmax": "segmentation", "encoder": "encoder"}
#: Head sizes and dropout of each kind (the encoder's are the seed design's).
HEAD_LAYOUT = {"softmax": ((256, 128), 0.3), "encoder": ((128, 64), 0.2)}


# --------------------------------------------------------------------------- model


def masked_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Weighted squared error over the defined targets (NaN = class absent: no target)."""
    defined = tf.math.is_finite(y_true)
    y = tf.where(defined, y_true, 0.0)
    w = tf.cast(defined, tf.float32) * tf.constant(METRIC_WEIGHTS)
    return tf.reduce_sum(w * tf.square(y - y_pred), axis=-1) / tf.maximum(
        tf.reduce_sum(w, axis=-1), 1.0
    )


#: A class the segmentation does not predict on a tile counts as in its label (missed: IoU 0)
#: from this presence on, else as absent (no IoU); see ``resolve_classes``.
PRESENCE_THRESHOLD = 0.5


def encoder_outputs(seg: SegmentationModel) -> list:
    """The encoder's feature maps: each skip connection's source and the bottleneck.

    The decoder is cut off at the bottleneck; the skips are encoder tensors too (the decoder
    only reads them), so pooling every level gives the head fine texture as well as context.
    """
    model = seg.model
    skips = [
        layer.input[1]
        for layer in model.layers
        if isinstance(layer, keras.layers.Concatenate) and len(layer.input) == 2
    ]
    bottleneck = model.get_layer(bottleneck_layer_name(model, seg.cfg)).output
    skips.sort(key=lambda t: -int(t.shape[1]))  # finest first: a stable order
    return [*skips, bottleneck]


def _softmax_features(seg: SegmentationModel, chips: Any) -> Any:
    """Chip → frozen UNet (with its test-time flips) → softmax statistics."""
    segmentation = keras.Model(seg.model.inputs, seg.model.output, name=NETWORK["softmax"])
    segmentation.trainable = False
    x = ChipPreprocessing(seg.cfg.target_size, name="preprocess")(chips)
    if bool(seg.cfg.raw.get("TESTTIMEAUG", False)):
        flipped = FlipAugmented(name="flips")(x)
        probs = FlipAugmented(inverse=True, name="unflip_mean")(
            segmentation(flipped, training=False)
        )
    else:
        probs = segmentation(x, training=False)
    return SoftmaxStatistics(name=FEATURES)([probs, ImageryMask(name="imagery")(chips)])


def _encoder_features(seg: SegmentationModel, chips: Any) -> Any:
    """Chip → frozen encoder → global average and max pooling of each level's feature map."""
    encoder = keras.Model(seg.model.inputs, encoder_outputs(seg), name=NETWORK["encoder"])
    encoder.trainable = False
    x = ChipPreprocessing(seg.cfg.target_size, name="preprocess")(chips)
    pooled = []
    for i, fmap in enumerate(encoder(x, training=False)):
        pooled.append(keras.layers.GlobalAveragePooling2D(name=f"avg_pool_{i}")(fmap))
        pooled.append(keras.layers.GlobalMaxPooling2D(name=f"max_pool_{i}")(fmap))
    return keras.layers.Concatenate(name=FEATURES)(pooled)


def build_regressor(
    seg: SegmentationModel,
    kind: str = KINDS[0],
    hidden: Sequence[int] | None = None,
    dropout: float | None = None,
    heads: int = HEADS,
) -> keras.Model:
    """Chip → frozen part of the segmentation model → features → ``heads`` dense heads →
    their average.

    ``softmax``: the features are statistics of the UNet's softmax (with its test-time flips);
    each head predicts per-class IoU, the presence of classes the segmentation misses, and
    Dice, and its mIoU follows from those (see ``MeanOverCountedClasses``): a tile's mIoU is a
    mean over a set of classes that the segmentation's output largely fixes, so the head need
    not learn the averaging. It reads the segmentation's own output rather than the encoder's
    pooled features: a tile's mIoU hinges on which classes the model predicts there, down to a
    few pixels, and on how sure it is — the decoder's output says that directly, pooled
    bottleneck features only blur it (held-out MAE 0.045 against 0.085).

    ``encoder``: the seed design, pooled encoder features and heads of six sigmoids; no
    decoder, no flips: far cheaper per chip.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown regressor kind {kind!r}; valid: {', '.join(KINDS)}")
    if heads < 1:
        raise ValueError(f"heads must be >= 1, got {heads}")
    default_hidden, default_dropout = HEAD_LAYOUT[kind]
    hidden = default_hidden if hidden is None else hidden
    dropout = default_dropout if dropout is None else dropout
    chips = keras.Input(shape=(CHIP_SIZE, CHIP_SIZE, 3), name="chip")
    if kind == "softmax":
        features = _softmax_features(seg, chips)
    else:
        features = _encoder_features(seg, chips)
    # The features differ in scale by orders of magnitude (shares, logs, scores, activations).
    normalized = keras.layers.Normalization(name="feature_norm")(features)
    nclasses = NMETRICS - 2
    outs = []
    for k in range(heads):
        x = normalized
        for i, units in enumerate(hidden):
            x = keras.layers.Dense(units, activation="relu", name=f"head{k}_dense_{i}")(x)
            x = keras.layers.Dropout(dropout, name=f"head{k}_dropout_{i}")(x)
        if kind == "encoder":
            outs.append(keras.layers.Dense(NMETRICS, activation="sigmoid", name=f"head{k}_out")(x))
            continue
        parts = [
            keras.layers.Dense(n, activation="sigmoid", name=f"head{k}_{part}")(x)
            for part, n in (("iou", nclasses), ("presence", nclasses), ("dice", 1))
        ]
        outs.append(MeanOverCountedClasses(name=f"head{k}_out")([*parts, features]))
    # Heads trained apart from different initialisations err differently: averaging them cuts
    # the variance that a few hundred tiles leave in any single head.
    if heads == 1:
        outputs = keras.layers.Identity(name="metrics")(outs[0])
    else:
        outputs = keras.layers.Average(name="metrics")(outs)
    return keras.Model(chips, outputs, name="metric_regressor")


def kind_of(model: keras.Model) -> str:
    """The kind of a regressor model, from the frozen network it holds."""
    names = {layer.name for layer in model.layers}
    for kind, network in NETWORK.items():
        if network in names:
            return kind
    raise RegressorError(f"model {model.name!r} holds none of {sorted(NETWORK.values())}")


def features_model(model: keras.Model) -> keras.Model:
    """The frozen part: chip → softmax statistics (no trainable weights)."""
    return keras.Model(model.input, _own_output(model, FEATURES), name="features")


def head_count(model: keras.Model) -> int:
    """How many dense heads the regressor averages."""
    return sum(1 for layer in model.layers if layer.name.endswith("_out"))


def head_of(model: keras.Model, k: int = 0, *, presence: bool = False) -> keras.Model:
    """Head ``k`` (normalisation → dense layers → outputs) as a model on pooled features
    (``presence``: its presence output instead, softmax kind only)."""
    feats = keras.Input(shape=_own_output(model, FEATURES).shape[1:], name="features")
    x = model.get_layer("feature_norm")(feats)
    i = 0
    while True:
        try:
            dense = model.get_layer(f"head{k}_dense_{i}")
        except ValueError:
            break
        x = model.get_layer(f"head{k}_dropout_{i}")(dense(x))
        i += 1
    if kind_of(model) == "encoder":
        out = model.get_layer(f"head{k}_out")(x)
    else:
        parts = [model.get_layer(f"head{k}_{part}")(x) for part in ("iou", "presence", "dice")]
        out = parts[1] if presence else model.get_layer(f"head{k}_out")([*parts, feats])
    return keras.Model(feats, out, name=f"head{k}")


def model_id_of(model: keras.Model, metadata: dict[str, Any]) -> str:
    """12 hex digits of SHA-256 over every weight and the metadata (less the id itself)."""
    h = hashlib.sha256()
    for w in model.weights:
        h.update(w.path.encode())
        h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    meta = {k: v for k, v in metadata.items() if k != "model_id"}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


def _own_output(model: keras.Model, name: str) -> Any:
    """The output of layer ``name`` in ``model``'s own graph (its first call: later calls by
    ``head_of`` or an inference copy share the layer)."""
    return model.get_layer(name)._inbound_nodes[0].output_tensors[0]


def with_class_outputs(model: keras.Model) -> keras.Model:
    """A softmax regressor with what decides which classes its mIoU counts as outputs too:
    [metrics, presence of head 0 … h-1, softmax statistics]; an encoder regressor as it is."""
    if kind_of(model) != "softmax":
        return model
    presence = [_own_output(model, f"head{k}_presence") for k in range(head_count(model))]
    outputs = [model.output, *presence, _own_output(model, FEATURES)]
    return keras.Model(model.input, outputs, name=model.name)


def resolve_classes(
    metrics: np.ndarray, presence: np.ndarray, predicted_share: np.ndarray
) -> np.ndarray:
    """Metric vectors that say which classes they are about, as true metrics do.

    The softmax regressor's heads give an IoU for every class, but its mIoU counts a class only
    where the segmentation predicts it, or with the chance (``presence``) that the label holds
    it all the same: the IoU of any other class is a number that means nothing, and showing
    it beside the mIoU contradicts it. Here each class is resolved as the metrics define it:

    - predicted on the tile (a share > 0): the head's IoU;
    - not predicted, presence ≥ ``PRESENCE_THRESHOLD``: in the label and missed, IoU 0;
    - otherwise absent from label and prediction: no IoU (NaN);

    and mIoU is the mean over the classes that have an IoU, as for true metrics (the heads'
    own mIoU weighs a missed class by its presence instead of 0 or 1). Dice is the heads'.

    The price of numbers that agree with each other, measured with the demo's regressor: mIoU
    MAE 0.031 for both rules on the storm its segmentation model was trained on, 0.060 against
    the heads' own 0.052 on the other storm (hatteras-val); 98.6-99% of the classes called
    absent are absent from the label too.
    """
    out = np.array(metrics, dtype=np.float32, copy=True)
    nclasses = NMETRICS - 2
    predicted = np.asarray(predicted_share)[:, :nclasses] > 0
    counted = predicted | (np.asarray(presence) >= PRESENCE_THRESHOLD)
    iou = np.where(predicted, out[:, :nclasses], np.where(counted, 0.0, np.nan))
    out[:, :nclasses] = iou
    out[:, nclasses] = np.nan
    some = counted.any(axis=1)
    out[some, nclasses] = np.nanmean(iou[some], axis=1)
    return out


@dataclass
class RegressorOutputs:
    """What the regressor computes for a batch of chips: its metric vectors and, for the
    softmax kind, the mean presence of its heads and the segmentation's predicted shares."""

    metrics: np.ndarray  # (N, 6)
    presence: np.ndarray | None = None  # (N, C)
    predicted_share: np.ndarray | None = None  # (N, C)

    def resolved(self) -> np.ndarray:
        """The metric vectors (``resolve_classes`` where the kind allows it)."""
        if self.presence is None or self.predicted_share is None:
            return self.metrics
        return resolve_classes(self.metrics, self.presence, self.predicted_share)


@dataclass
class Regressor:
    """A loaded metric regressor with a compiled, retrace-free prediction path.

    Predictions run an inference copy of the model (``iou_maps.models.inference_graph``): batch
    norms
    folded into their convolutions, the frozen network on ``branches`` parallel branches
    (default: what ``iou_maps.models.runtime`` chose for this process).
    """

    model: keras.Model
    metadata: dict[str, Any]
    branches: int | None = None

    def __post_init__(self) -> None:
        if self.branches is None:
            self.branches = runtime.inference_branches()
        network = NETWORK[kind_of(self.model)]
        self.inference = InferenceModel(with_class_outputs(self.model), network, self.branches)
        model = self.inference

        # One trace for every batch size: the batch dimension is None in the signature.
        @tf.function(
            input_signature=[tf.TensorSpec([None, CHIP_SIZE, CHIP_SIZE, 3], tf.uint8)],
            reduce_retracing=True,
        )
        def _predict(chips: tf.Tensor) -> Any:
            return model(tf.cast(chips, tf.float32))

        self._predict = _predict

    @property
    def kind(self) -> str:
        """``softmax`` or ``encoder`` (see the module docstring)."""
        return str(self.metadata.get("kind", KINDS[0]))

    @property
    def model_id(self) -> str:
        """The model id (a hash of the weights and metadata; part of every cache key)."""
        return str(self.metadata["model_id"])

    @property
    def analysis_zoom(self) -> int:
        """The zoom of the analysis tiles the regressor was trained on."""
        return int(self.metadata["analysis_zoom"])

    @property
    def input_size(self) -> tuple[int, int]:
        """The segmentation model's input size (height, width)."""
        height, width = self.metadata["input_size"]
        return int(height), int(width)

    def outputs(self, chips: np.ndarray) -> RegressorOutputs:
        """The model's outputs for (N, 256, 256, 3) uint8 chips, before ``resolve_classes``."""
        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(f"expected (N, {CHIP_SIZE}, {CHIP_SIZE}, 3) chips, got {chips.shape}")
        if len(chips) == 0:
            return RegressorOutputs(np.zeros((0, NMETRICS), np.float32))
        # The UNet's full-resolution activations of many chips (four flips each) overflow the
        # CPU caches: on 2 vCPUs 2 chips a call run 36 tiles/s, 32 chips a call 21 tiles/s.
        parts = [
            self._predict(tf.constant(chips[i : i + PREDICT_CHUNK], tf.uint8))
            for i in range(0, len(chips), PREDICT_CHUNK)
        ]
        if not isinstance(parts[0], list | tuple):  # the encoder kind: the metrics alone
            return RegressorOutputs(np.concatenate([p.numpy() for p in parts]))
        joined = [np.concatenate([p[j].numpy() for p in parts]) for j in range(len(parts[0]))]
        metrics, *presence, stats = joined
        return RegressorOutputs(metrics, np.mean(presence, axis=0), stats[:, : NMETRICS - 2])

    def predict(self, chips: np.ndarray) -> np.ndarray:
        """(N, 256, 256, 3) uint8 → (N, 6) float32 metric vectors (``resolve_classes``: NaN
        for the IoU of a class predicted absent, as the metrics define it)."""
        return self.outputs(chips).resolved()

    def trace_count(self) -> int:
        """How many graphs the compiled path holds (1 after any number of batch sizes)."""
        return int(self._predict.experimental_get_tracing_count())


def save_regressor(model: keras.Model, metadata: dict[str, Any], directory: Path) -> Regressor:
    """Write model + metadata (with its model id) atomically; returns the loaded regressor."""
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {
        **metadata,
        "kind": kind_of(model),
        "classes": list(CLASSES),
        "metrics": list(METRICS),
        "chip_size": CHIP_SIZE,
    }
    metadata["model_id"] = model_id_of(model, metadata)
    for name, write in (
        (MODEL_FILE, lambda p: model.save(p)),
        (METADATA_FILE, lambda p: Path(p).write_text(json.dumps(metadata, indent=2) + "\n")),
    ):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=Path(name).suffix, dir=directory)
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, directory / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return Regressor(model, metadata)


def load_regressor(directory: Path, *, nclasses: int | None = None) -> Regressor:
    """Load and check a regressor; RegressorError says what is wrong.

    ``nclasses``: the class count of the segmentation model it must belong to.
    """
    meta_path, model_path = directory / METADATA_FILE, directory / MODEL_FILE
    for p in (meta_path, model_path):
        if not p.is_file():
            raise RegressorError(f"regressor file missing: {p}")
    try:
        metadata = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise RegressorError(f"{meta_path} is not valid JSON: {exc}") from None
    if list(metadata.get("classes", [])) != list(CLASSES):
        raise RegressorError(
            f"regressor {directory} was trained for classes {metadata.get('classes')}, "
            f"this build uses {list(CLASSES)}"
        )
    if nclasses is not None and nclasses != len(metadata["classes"]):
        raise RegressorError(
            f"regressor {directory} has {len(metadata['classes'])} classes but the "
            f"segmentation model has {nclasses}"
        )
    if list(metadata.get("metrics", [])) != list(METRICS):
        raise RegressorError(f"regressor metrics {metadata.get('metrics')} != {list(METRICS)}")
    model = keras.models.load_model(model_path, compile=False)
    if tuple(model.input.shape[1:]) != (CHIP_SIZE, CHIP_SIZE, 3):
        # Regressors before the softmax statistics took the resized image, not the chip.
        raise RegressorError(
            f"regressor {directory} takes {tuple(model.input.shape[1:])} inputs, not "
            f"{CHIP_SIZE}x{CHIP_SIZE} RGB chips: it was saved by an older IoU Maps; "
            "train it again with `iou-maps train-regressor`"
        )
    if metadata.get("kind", KINDS[0]) != kind_of(model):
        raise RegressorError(
            f"regressor {directory}: metadata says kind {metadata.get('kind')!r} but the model "
            f"is a {kind_of(model)!r} regressor"
        )
    expected = model_id_of(model, metadata)
    if metadata.get("model_id") != expected:
        raise RegressorError(
            f"regressor {directory}: files do not match model id {metadata.get('model_id')!r} "
            f"(content hashes to {expected!r}); re-save it"
        )
    return Regressor(model, metadata)


# --------------------------------------------------------------------------- training


def split_by_scene(
    scene_sets: Sequence[frozenset[str]], val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Train/validation masks such that no tile touching a validation scene is in training.

    A tile overlapping a validation scene and a training scene goes to validation; so the
    validation set never shares ground with the training set.
    """
    scenes = sorted(set().union(*scene_sets))
    if len(scenes) < 2:
        raise ValueError("a split by scene needs tiles from at least 2 scenes")
    rng = np.random.default_rng(seed)
    n_val = min(len(scenes) - 1, max(1, round(val_fraction * len(scenes))))
    val_scenes = set(rng.choice(scenes, size=n_val, replace=False).tolist())
    val = np.array([bool(s & val_scenes) for s in scene_sets])
    return ~val, val, sorted(val_scenes)


def encode(model: keras.Model, chips: np.ndarray, batch_size: int = PREDICT_CHUNK) -> np.ndarray:
    """Features (softmax statistics or pooled encoder maps) of uint8 chips (frozen: computed
    once for head training), in the small batches that keep the UNet's activations in cache
    (see ``Regressor.predict``)."""
    features = features_model(model)

    @tf.function(input_signature=[tf.TensorSpec([None, CHIP_SIZE, CHIP_SIZE, 3], tf.uint8)])
    def run(x: tf.Tensor) -> tf.Tensor:
        return features(tf.cast(x, tf.float32), training=False)

    parts = [
        run(tf.constant(chips[i : i + batch_size])).numpy()
        for i in range(0, len(chips), batch_size)
    ]
    width = int(features.output.shape[-1])
    return np.concatenate(parts) if parts else np.zeros((0, width), np.float32)


def evaluation_scores(y_true: np.ndarray, y_pred: np.ndarray, baseline: np.ndarray) -> dict:
    """Per metric: MAE, Pearson r and the MAE of predicting the constant training mean."""
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(METRICS):
        # Where the label has a class the prediction calls absent, its IoU is not scored.
        ok = np.isfinite(y_true[:, i]) & np.isfinite(y_pred[:, i])
        t, p = y_true[ok, i], y_pred[ok, i]
        r = float(np.corrcoef(t, p)[0, 1]) if ok.sum() > 2 and t.std() > 0 and p.std() > 0 else 0.0
        out[name] = {
            "n": int(ok.sum()),
            "mae": float(np.mean(np.abs(t - p))) if ok.any() else float("nan"),
            "pearson_r": r,
            "baseline_mae": float(np.mean(np.abs(t - baseline[i]))) if ok.any() else float("nan"),
        }
    return out


def train_regressor(
    seg: SegmentationModel,
    chips: np.ndarray,
    targets: np.ndarray,
    scene_sets: Sequence[frozenset[str]],
    *,
    epochs: int = 300,
    patience: int = 30,
    val_fraction: float = 0.2,
    seed: int = 0,
    augment: bool = True,
    heads: int = HEADS,
    kind: str = KINDS[0],
) -> tuple[keras.Model, dict[str, Any]]:
    """Fit the heads of a ``kind`` regressor; returns the full model and a report dict.

    The segmentation model is frozen, so the features are computed once and only the heads
    are trained — seconds instead of minutes on two CPU cores. Flips augment the training
    tiles only for a model without test-time flips (the ``encoder`` kind): with them, a
    flipped chip has the same statistics.
    """
    keras.utils.set_random_seed(seed)
    targets = np.asarray(targets, np.float32)
    train, val, val_scenes = split_by_scene(scene_sets, val_fraction, seed)
    if not train.any() or not val.any():
        raise ValueError("the split by scene left no training or no validation tiles")
    model = build_regressor(seg, kind, heads=heads)
    x_train, y_train = chips[train], targets[train]
    if augment and not any(isinstance(layer, FlipAugmented) for layer in model.layers):
        x_train = np.concatenate(
            [x_train, x_train[:, :, ::-1], x_train[:, ::-1], x_train[:, ::-1, ::-1]]
        )
        y_train = np.concatenate([y_train] * 4)
    f_train = encode(model, np.ascontiguousarray(x_train))
    f_val = encode(model, chips[val])
    model.get_layer("feature_norm").adapt(f_train)
    epochs_run, val_losses = [], []
    for k in range(heads):
        keras.utils.set_random_seed(seed + k)
        head = head_of(model, k)
        head.compile(optimizer=keras.optimizers.Adam(1e-3), loss=masked_loss)
        history = head.fit(
            f_train, y_train,
            validation_data=(f_val, targets[val]),
            epochs=epochs, batch_size=64, verbose=0, shuffle=True,
            callbacks=[
                keras.callbacks.EarlyStopping(
                    monitor="val_loss", patience=patience, restore_best_weights=True
                )
            ],
        )  # fmt: skip
        epochs_run.append(len(history.history["loss"]))
        val_losses.append(float(np.min(history.history["val_loss"])))
    # Called, not .predict(): predict traces a new tf.function per head model (TF warns).
    pred_val = np.mean([head_of(model, k)(f_val, training=False).numpy() for k in range(heads)], 0)
    if kind == "softmax":  # scored as served (Regressor.predict)
        presence = [
            head_of(model, k, presence=True)(f_val, training=False).numpy() for k in range(heads)
        ]
        pred_val = resolve_classes(pred_val, np.mean(presence, 0), f_val[:, : NMETRICS - 2])
    baseline = np.nanmean(targets[train], axis=0)
    report = {
        "train_tiles": int(train.sum()),
        "val_tiles": int(val.sum()),
        "val_scenes": val_scenes,
        "heads": heads,
        "kind": kind,
        "epochs_run": epochs_run,
        "best_val_loss": val_losses,
        "scores": evaluation_scores(targets[val], pred_val, baseline),
        "val_true": targets[val],
        "val_pred": pred_val,
    }
    return model, report


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Predicted vs. true scatter for each metric on the validation tiles, with MAE and r."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    for ax, (i, name) in zip(axes.ravel(), enumerate(METRICS), strict=True):
        t, p = report["val_true"][:, i], report["val_pred"][:, i]
        ok = np.isfinite(t)
        s = report["scores"][name]
        ax.scatter(t[ok], p[ok], s=6, alpha=0.5)
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="true", ylabel="predicted")
        ax.set_title(f"{name}: MAE {s['mae']:.3f}, r {s['pearson_r']:.2f} (n={s['n']})")
    fig.suptitle(f"metric regressor, validation scenes: {', '.join(report['val_scenes'])[:90]}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
