"""The metric regressor's network: a frozen part of the segmentation model, then dense heads.

It predicts, from a 256×256 analysis-tile chip alone, the metric vector (per-class IoU, mIoU,
Dice) that the segmentation model would score against a label there. Two kinds:

- ``softmax`` (the default): the whole frozen UNet with its test-time flips, statistics of its
  softmax over the tile's imagery, heads that predict per-class IoU, missed classes and Dice.
- ``encoder`` (the design the project started from): the UNet's encoder alone, cut at its
  bottleneck, its feature maps pooled, heads that predict the six metrics. About 20x cheaper
  per chip and less accurate (docs/inference-speed.md, bench/regressor_accuracy.py).

Layer names are part of saved models and of the model id: keep them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iou_maps.errors import RegressorError
from iou_maps.models.backend import keras
from iou_maps.models.model_layers import (
    ChipPreprocessing,
    FlipAugmented,
    ImageryMask,
    MeanOverCountedClasses,
    SoftmaxStatistics,
)
from iou_maps.models.segmentation.model import SegmentationModel
from iou_maps.models.segmentation.network import bottleneck_layer_name

CHIP_SIZE = 256
#: Name of the layer whose output the heads read (the softmax statistics).
FEATURES = "features"
#: Dense heads averaged on the shared softmax statistics (see build_regressor).
HEADS = 5
#: Regressor kinds (see the module docstring), the default first.
KINDS = ("softmax", "encoder")
#: The frozen network inside each kind's model: ``Regressor`` runs it on parallel branches.
NETWORK = {"softmax": "segmentation", "encoder": "encoder"}
#: Head sizes and dropout of each kind (the encoder's are the seed design's).
HEAD_LAYOUT = {"softmax": ((256, 128), 0.3), "encoder": ((128, 64), 0.2)}


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
        raise RegressorError(f"unknown regressor kind {kind!r}; valid: {', '.join(KINDS)}")
    if heads < 1:
        raise RegressorError(f"heads must be >= 1, got {heads}")
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
    nclasses = seg.cfg.nclasses
    outs = []
    for k in range(heads):
        x = normalized
        for i, units in enumerate(hidden):
            x = keras.layers.Dense(units, activation="relu", name=f"head{k}_dense_{i}")(x)
            x = keras.layers.Dropout(dropout, name=f"head{k}_dropout_{i}")(x)
        if kind == "encoder":
            outs.append(
                keras.layers.Dense(nclasses + 2, activation="sigmoid", name=f"head{k}_out")(x)
            )
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
