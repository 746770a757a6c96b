"""The UNets of segmentation_gym, built from a config (same graph as doodleverse_utils).

The architectures reproduce doodleverse_utils.model_imports (``custom_resunet``, ``custom_unet``,
``simple_resunet``, ``simple_unet``) layer for layer: same layer types, shapes, bias usage and
graph topology, so Keras orders the weighted layers identically and a segmentation_gym weights
file (tf.keras 2 ``model.save_weights('x.h5')``) loads here by layer order.
"""

from __future__ import annotations

from typing import Any

from iou_maps.errors import ConfigError
from iou_maps.models.backend import keras
from iou_maps.models.segmentation.config import SegmentationConfig

layers = keras.layers

#: Name of the encoder's deepest layer in every model built here.
BOTTLENECK_LAYER = "encoder_bottleneck"


def _dropout(x: Any, rate: float, kind: str) -> Any:
    if rate > 0.0:
        x = (layers.SpatialDropout2D if kind == "spatial" else layers.Dropout)(rate)(x)
    return x


def _bn_relu(x: Any, name: str | None = None) -> Any:
    x = layers.BatchNormalization()(x)
    return layers.Activation("relu", name=name)(x)


def _preact_conv(
    x: Any, filters: int, kernel: int | tuple[int, int], strides: int = 1,
    dropout: float = 0.0, kind: str = "standard", name: str | None = None,
) -> Any:  # fmt: skip
    """gym conv_block: [dropout] -> BN -> ReLU -> conv (pre-activation)."""
    x = _bn_relu(_dropout(x, dropout, kind))
    return layers.Conv2D(filters, kernel, strides=strides, padding="same", name=name)(x)


def _stem(x: Any, filters: int) -> Any:
    """gym bottleneck_block: 2x2 conv path plus a 1x1 shortcut, at full resolution."""
    conv = layers.Conv2D(filters, (2, 2), padding="same")(x)
    conv = _preact_conv(conv, filters, (2, 2))
    short = _bn_relu(layers.Conv2D(filters, (1, 1), padding="same")(x))
    return layers.Add()([conv, short])  # operand order fixes the layer order: keep it


def _res_block(
    x: Any, filters: int, kernel: int, strides: int = 1, dropout: float = 0.0,
    kind: str = "standard",
) -> Any:  # fmt: skip
    """gym res_block: two pre-activation convs plus a strided 1x1 shortcut."""
    res = _preact_conv(x, filters, kernel, strides, dropout, kind)
    res = _preact_conv(res, filters, kernel, 1, dropout, kind)
    short = _bn_relu(layers.Conv2D(filters, (1, 1), strides=strides, padding="same")(x))
    return layers.Add()([short, res])


def _plain_block(
    x: Any, filters: int, kernel: int, strides: int = 1, dropout: float = 0.0,
    kind: str = "standard",
) -> Any:  # fmt: skip
    return _preact_conv(x, filters, kernel, strides, dropout, kind)


def _up_concat(x: Any, skip: Any) -> Any:
    return layers.Concatenate()([layers.UpSampling2D((2, 2))(x), skip])


def _custom_unet(cfg: SegmentationConfig, inputs: Any, residual: bool) -> Any:
    """gym custom_resunet / custom_unet: strided encoder, KERNEL-sized pre-activation convs."""
    block = _res_block if residual else _plain_block
    k, kind, change = cfg.kernel, cfg.dropout_type, cfg.dropout_change_per_layer
    f, dropout = cfg.filters, cfg.dropout
    x = _stem(inputs, f)
    skips = [x]
    for level in range(4):
        f *= 2
        if level:
            dropout += change
        x = block(x, f, k, cfg.stride, dropout, kind)
        if level < 3:
            skips.append(x)
    x = _preact_conv(x, f, k, 1, dropout, kind)
    x = _preact_conv(x, f, k, 1, dropout, kind, name=BOTTLENECK_LAYER)
    if not cfg.use_dropout_on_upsampling:
        dropout, change = 0.0, 0.0
    for skip in reversed(skips):
        x = block(_up_concat(x, skip), f, k, 1, dropout, kind)
        f //= 2
        dropout -= change
    return x


def _conv2d_block(x: Any, filters: int, dropout: float, kind: str, name: str | None = None) -> Any:
    """gym conv2d_block: two bias-free 2x2 relu convs (he_normal), each followed by BN."""

    def conv() -> keras.layers.Conv2D:
        return layers.Conv2D(
            filters, (2, 2), activation="relu", kernel_initializer="he_normal",
            padding="same", use_bias=False,
        )  # fmt: skip

    x = layers.BatchNormalization()(conv()(x))
    x = _dropout(x, dropout, kind)
    return layers.BatchNormalization(name=name)(conv()(x))


def _res_conv2d_block(x: Any, filters: int, dropout: float, kind: str) -> Any:
    res = _conv2d_block(x, filters, dropout, kind)
    res = _conv2d_block(res, filters, dropout, kind)
    short = _bn_relu(layers.Conv2D(filters, (1, 1), padding="same")(x))
    return layers.Add()([short, res])


def _simple_unet(cfg: SegmentationConfig, inputs: Any, residual: bool) -> Any:
    """gym simple_resunet / simple_unet: max-pooling encoder; KERNEL and STRIDE are unused."""
    block = _res_conv2d_block if residual else _conv2d_block
    kind, change = cfg.dropout_type, cfg.dropout_change_per_layer
    f, dropout = cfg.filters, cfg.dropout
    x, skips = inputs, []
    for _ in range(4):
        x = block(x, f, dropout, kind)
        skips.append(x)
        x = layers.MaxPooling2D((2, 2))(x)
        dropout += change
        f *= 2
    x = _conv2d_block(x, f, dropout, kind, name=BOTTLENECK_LAYER)
    if not cfg.use_dropout_on_upsampling:
        dropout, change = 0.0, 0.0
    for skip in reversed(skips):
        f //= 2
        dropout -= change
        x = block(_up_concat(x, skip), f, dropout, kind)
    return x


def build_model(cfg: SegmentationConfig) -> keras.Model:
    """The Keras model segmentation_gym's get_model() builds for this config (softmax output)."""
    inputs = keras.Input((*cfg.target_size, cfg.n_data_bands))
    if cfg.model in ("resunet", "unet"):
        x = _custom_unet(cfg, inputs, residual=cfg.model == "resunet")
    elif cfg.model in ("simple_resunet", "simple_unet"):
        x = _simple_unet(cfg, inputs, residual=cfg.model == "simple_resunet")
    else:  # from_dict already rejects these; kept for hand-made configs
        raise ConfigError(f"MODEL {cfg.model!r} is not supported")
    outputs = layers.Conv2D(cfg.nclasses, (1, 1), padding="same", activation="softmax")(x)
    return keras.Model(inputs=inputs, outputs=outputs, name=cfg.model)


def bottleneck_layer_name(model: keras.Model, cfg: SegmentationConfig | None = None) -> str:
    """Name of the encoder's deepest layer (smallest spatial size, just before the decoder)."""
    try:
        model.get_layer(BOTTLENECK_LAYER)
    except ValueError:
        kind = cfg.model if cfg is not None else model.name
        raise ValueError(
            f"model {model.name!r} ({kind}) has no layer {BOTTLENECK_LAYER!r}: "
            "build it with iou_maps.models.segmentation.network.build_model"
        ) from None
    return BOTTLENECK_LAYER
