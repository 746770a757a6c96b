"""An inference-only copy of a regressor's graph: batch norms folded, the network on branches.

The saved model keeps its training layout (its weights, its model id); ``Regressor`` runs this
copy, which computes the same outputs (up to float rounding) with less work:

- every ``BatchNormalization`` that reads a convolution's output alone (through inference-time
  no-ops such as ``Dropout``) is folded into that convolution's kernel and bias: one pass less
  over the activation maps for 19 of the 28 batch norms of a resunet;
- the work runs on ``branches`` slices of its batch as independent subgraphs, which
  TensorFlow's inter-op pool runs at once, one core each (see ``iou_maps.models.runtime``): slices
  of chips through the whole model, or, for a single chip, slices of its flipped images
  through the network;
- in ``bfloat16`` precision (``iou_maps.models.precision``) the network's layers compute and
  hold their weights in bfloat16 (oneDNN runs such convolutions on AMX / AVX512-BF16 units),
  all but those that give its outputs, which compute in float32 as everything after it does
  (the softmax, its statistics, the heads).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from iou_maps.models.backend import keras, tf

#: Layers that do nothing at inference time (folding looks through them).
_INFERENCE_NO_OPS = (keras.layers.Dropout, keras.layers.SpatialDropout2D)


def _consumers(model: keras.Model) -> dict[str, list[keras.layers.Layer]]:
    """Layer name → the layers of ``model`` that read its output."""
    out: dict[str, list[keras.layers.Layer]] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                out.setdefault(tensor._keras_history.operation.name, []).append(layer)
    return out


def foldable_batch_norms(model: keras.Model) -> dict[str, keras.layers.Conv2D]:
    """Batch-norm layer name → the convolution whose output it alone reads."""
    consumers = _consumers(model)
    pairs: dict[str, keras.layers.Conv2D] = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D) or layer.activation not in (
            keras.activations.linear,
            None,
        ):
            continue
        chain = consumers.get(layer.name, [])
        while len(chain) == 1 and isinstance(chain[0], _INFERENCE_NO_OPS):
            chain = consumers.get(chain[0].name, [])
        if len(chain) == 1 and isinstance(chain[0], keras.layers.BatchNormalization):
            pairs[chain[0].name] = layer
    return pairs


def _scale_shift(bn: keras.layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, ``bn`` at inference as ``x * scale + shift``."""
    gamma = np.asarray(bn.gamma) if bn.scale else 1.0
    beta = np.asarray(bn.beta) if bn.center else 0.0
    mean, var = np.asarray(bn.moving_mean), np.asarray(bn.moving_variance)
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale, beta - mean * scale


def _folded_conv(conv: keras.layers.Conv2D, bn: keras.layers.BatchNormalization, x: Any) -> Any:
    """``bn(conv(x))`` at inference as one convolution: kernel and bias scaled per channel."""
    scale, shift = _scale_shift(bn)
    kernel = np.asarray(conv.kernel) * scale
    bias = np.asarray(conv.bias) if conv.use_bias else np.zeros_like(shift)
    config = {**conv.get_config(), "use_bias": True, "name": f"{conv.name}_folded"}
    folded = keras.layers.Conv2D.from_config(config)
    y = folded(x)
    folded.set_weights([kernel.astype(np.float32), (bias * scale + shift).astype(np.float32)])
    return y


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """A copy of functional ``model`` for inference, with foldable batch norms folded into
    their convolutions and inference-time no-ops left out; other layers are shared."""
    pairs = foldable_batch_norms(model)
    folded_convs = {conv.name: model.get_layer(bn) for bn, conv in pairs.items()}

    def call(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
        if isinstance(layer, _INFERENCE_NO_OPS) or layer.name in pairs:
            return args[0]  # the batch norm is now part of its convolution
        if layer.name in folded_convs:
            return _folded_conv(layer, folded_convs[layer.name], args[0])
        return layer(*args, **kwargs)

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)


def _as_depthwise(bn: keras.layers.BatchNormalization, x: Any, dtype: str) -> Any:
    """``bn(x)`` at inference as a 1×1 depthwise convolution: oneDNN runs it in bfloat16 with
    the ReLU after it fused, where Keras's batch norm computes in float32 between two casts,
    and TensorFlow's bfloat16 ReLU runs at a quarter of its float32 speed."""
    scale, shift = _scale_shift(bn)
    layer = keras.layers.DepthwiseConv2D(1, dtype=dtype, name=f"{bn.name}_depthwise")
    y = layer(x)
    layer.set_weights([scale.reshape(1, 1, -1, 1).astype(np.float32), shift.astype(np.float32)])
    return y


def in_precision(model: keras.Model, precision: str) -> keras.Model:
    """A copy of functional ``model`` (batch norms folded) whose layers compute in
    ``precision``, their weights rounded to it once, its batch norms left as 1×1 depthwise
    convolutions (``_as_depthwise``); the layers that give its outputs compute in float32 (the
    softmax of a segmentation network), reading their inputs cast up. ``model`` itself if
    float32."""
    if precision == "float32":
        return model
    outputs = {tensor._keras_history.operation.name for tensor in model.outputs}

    def call(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
        dtype = "float32" if layer.name in outputs else precision
        if isinstance(layer, keras.layers.BatchNormalization):
            return _as_depthwise(layer, args[0], dtype)
        copy = layer.__class__.from_config({**layer.get_config(), "dtype": dtype})
        y = copy(*args, **kwargs)
        if layer.weights:
            copy.set_weights(layer.get_weights())
        return y

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)


class Branches(keras.layers.Layer):
    """``network`` on ``branches`` slices of the batch, as independent subgraphs.

    With one core per op (``iou_maps.models.runtime.inference_process``) TensorFlow's inter-op pool
    runs the slices at once; a batch of one chip is four flipped images, so it splits too.
    """

    def __init__(self, network: keras.Model, branches: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.network = network
        self.branches = max(1, int(branches))

    def call(self, x: tf.Tensor) -> tf.Tensor:
        """The network on the batch's parts, joined again in order."""
        if self.branches == 1:
            return self.network(x, training=False)
        # Equal parts, none empty (oneDNN's convolutions fail on an empty batch): a batch that
        # does not divide evenly is padded with copies of its last item, which the idle cores
        # compute at no cost in time, and the copies' results are dropped.
        n = tf.shape(x)[0]
        pad = (-n) % self.branches
        x = tf.concat([x, tf.repeat(x[-1:], pad, axis=0)], axis=0)
        parts = [self.network(part, training=False) for part in tf.split(x, self.branches, axis=0)]
        # The network may return several maps (the encoder's levels): join each across parts.
        return tf.nest.map_structure(lambda *xs: tf.concat(xs, axis=0)[:n], *parts)

    def compute_output_shape(self, input_shape: Any) -> Any:
        """The network's output shape (the batch is split and joined)."""
        return self.network.compute_output_shape(input_shape)


def _with_network(model: keras.Model, network: str, replacement: keras.layers.Layer) -> keras.Model:
    """``model`` with its nested ``network`` layer replaced (other layers shared)."""

    def call(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
        if layer.name == network:
            return replacement(args[0])
        return layer(*args, **kwargs)

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)


class InferenceModel:
    """``model`` for inference: its frozen ``network`` with batch norms folded, on
    ``branches`` parallel branches.

    A batch of at least ``branches`` chips is split by chips: each branch runs the whole
    model (preprocessing, flips, network, softmax statistics, heads) on its share, so nothing
    runs on one core alone. A smaller batch (a single tile) is split inside the network: the
    four flipped images of a chip go two and two, and what follows the network runs once.
    The network computes in ``precision`` (see ``in_precision``), the rest in float32.
    """

    def __init__(
        self, model: keras.Model, network: str, branches: int = 1, precision: str = "float32"
    ) -> None:
        self.branches = max(1, int(branches))
        folded = in_precision(fold_batch_norms(model.get_layer(network)), precision)
        self.whole = _with_network(model, network, folded)
        self.by_chips = Branches(self.whole, self.branches, name="chip_branches")
        self.by_network = _with_network(
            model, network, Branches(folded, self.branches, name=f"{network}_branches")
        )

    def __call__(self, chips: tf.Tensor) -> tf.Tensor:
        """(N, 256, 256, 3) float32 chips → (N, 6) metric vectors."""
        if self.branches == 1:
            return self.whole(chips, training=False)
        return tf.cond(
            tf.shape(chips)[0] >= self.branches,
            lambda: self.by_chips(chips),
            lambda: self.by_network(chips, training=False),
        )
