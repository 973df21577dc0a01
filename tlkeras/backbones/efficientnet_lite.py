"""EfficientNet-Lite0..Lite4 in plain Keras layers, and conversion of lukemelas-style PyTorch weights onto them.

Lite differs from EfficientNet-B0..B4 by having no squeeze-excite, ReLU6 instead of swish, and a stem
(32 filters) and head (1280 filters) that stay fixed while the variants scale width and depth; the first
and last stages keep their single block. The ImageNet weights were trained in TensorFlow, so padding is
TF-style "same" (what Keras uses), not symmetric: symmetric padding shifts logits enough to change the top-1.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import numpy as np

from tlkeras.errors import TlkerasError

_BN_EPSILON = 1e-3
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
_WIDTH_DIVISOR = 8


class _Stage(NamedTuple):
    repeats: int
    kernel_size: int
    strides: int
    expand_ratio: int
    filters_in: int
    filters_out: int


class LiteVariant(NamedTuple):
    """Scaling of one EfficientNet-Lite variant, as in the TF reference (`efficientnet_lite_builder.py`)."""

    width: float
    depth: float
    resolution: int
    dropout: float


LITE_VARIANTS = {
    "lite0": LiteVariant(1.0, 1.0, 224, 0.2),
    "lite1": LiteVariant(1.0, 1.1, 240, 0.2),
    "lite2": LiteVariant(1.1, 1.2, 260, 0.3),
    "lite3": LiteVariant(1.2, 1.4, 280, 0.3),
    "lite4": LiteVariant(1.4, 1.8, 300, 0.3),
}

# EfficientNet-B0 stages, which Lite0 uses unscaled.
_BASE_STAGES = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)
_BLOCK_PREFIX = re.compile(r"^(block\d+[a-z]+)_")


def _round_filters(filters: int, width: float) -> int:
    """Scale `filters` by `width` to a multiple of 8, never more than 10% below the exact product."""
    scaled = filters * width
    rounded = max(_WIDTH_DIVISOR, int(scaled + _WIDTH_DIVISOR / 2) // _WIDTH_DIVISOR * _WIDTH_DIVISOR)
    if rounded < 0.9 * scaled:
        rounded += _WIDTH_DIVISOR
    return int(rounded)


def lite_stages(variant: str) -> tuple[_Stage, ...]:
    """lite_stages: tuple. The seven MBConv stages of an EfficientNet-Lite variant, scaled.

    Args:
        variant: str. One of `LITE_VARIANTS`, e.g. "lite2".

    Example:
    ```python
    [s.repeats for s in lite_stages("lite2")]  # [1, 3, 3, 4, 4, 5, 1]
    ```
    """
    if variant not in LITE_VARIANTS:
        raise TlkerasError(f"variant must be one of {', '.join(LITE_VARIANTS)}. Received: variant={variant!r}")
    scale = LITE_VARIANTS[variant]
    last = len(_BASE_STAGES) - 1
    return tuple(
        stage._replace(
            repeats=stage.repeats if index in (0, last) else math.ceil(scale.depth * stage.repeats),
            filters_in=_round_filters(stage.filters_in, scale.width),
            filters_out=_round_filters(stage.filters_out, scale.width),
        )
        for index, stage in enumerate(_BASE_STAGES)
    )


def _block_names(stages):
    """Yield (keras block prefix, stage, repeat index) in the order of lukemelas' `_blocks.{i}`."""
    for stage_index, stage in enumerate(stages):
        for repeat in range(stage.repeats):
            yield f"block{stage_index + 1}{chr(ord('a') + repeat)}", stage, repeat


def efficientnet_lite(variant="lite0", input_shape=None, include_top=False, classes=1000, pooling="avg",
                      classifier_activation="softmax"):
    """efficientnet_lite: keras.Model. An EfficientNet-Lite variant built from plain Keras layers.

    The model expects already-normalised input, `(pixels - 127) / 128`. Layer names group by prefix for
    freezing: `stem_*`, `block1*` ... `block7*` (one per stage, e.g. `block2b_dwconv`), `top_*` and
    `predictions`. Only built-in layers are used, so saved `.keras` files reload without custom objects.

    Args:
        variant: str. One of `LITE_VARIANTS`: "lite0" ... "lite4". Defaults to `"lite0"`.
        input_shape: tuple. Input shape (H, W, 3). Defaults to the variant's resolution, e.g.
            `(260, 260, 3)` for Lite2.
        include_top: bool. Whether to add dropout and the `predictions` classifier. Defaults to `False`.
        classes: int. Number of classes when `include_top`. Defaults to `1000`.
        pooling: str or None. `"avg"`, `"max"` or `None` (4D feature map) when not `include_top`;
            `include_top` always average-pools. Defaults to `"avg"`.
        classifier_activation: str or None. Activation of `predictions`; `None` gives logits.
            Defaults to `"softmax"`.

    Returns:
        A functional `keras.Model` named `efficientnet_<variant>`; with `include_top=False,
        pooling="avg"` its output is (B, 1280) for every variant.

    Example:
    ```python
    model = efficientnet_lite("lite2", input_shape=(64, 64, 3))
    model.output_shape  # (None, 1280)
    ```
    """
    import keras
    from keras import layers

    stages = lite_stages(variant)
    if pooling not in ("avg", "max", None):
        raise TlkerasError(f"pooling must be 'avg', 'max' or None. Received: pooling={pooling!r}")
    if input_shape is None:
        side = LITE_VARIANTS[variant].resolution
        input_shape = (side, side, 3)

    def conv_bn_act(x, filters, kernel_size, strides, name, activation=True):
        x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                          name=f"{name}_conv")(x)
        x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_bn")(x)
        if activation:
            x = layers.ReLU(6.0, name=f"{name}_activation")(x)
        return x

    inputs = keras.Input(shape=input_shape, name="stem_input")
    x = conv_bn_act(inputs, _STEM_FILTERS, 3, 2, "stem")

    for name, stage, repeat in _block_names(stages):
        # The real channel count, not the stage's: with a fixed stem, block1 of Lite3/4 gets 32 channels.
        filters_in = x.shape[-1]
        strides = stage.strides if repeat == 0 else 1
        shortcut = x
        if stage.expand_ratio != 1:
            x = conv_bn_act(x, filters_in * stage.expand_ratio, 1, 1, f"{name}_expand")
        x = layers.DepthwiseConv2D(stage.kernel_size, strides=strides, padding="same", use_bias=False,
                                   name=f"{name}_dwconv")(x)
        x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_bn")(x)
        x = layers.ReLU(6.0, name=f"{name}_activation")(x)
        x = conv_bn_act(x, stage.filters_out, 1, 1, f"{name}_project", activation=False)
        if strides == 1 and filters_in == stage.filters_out:
            x = layers.Add(name=f"{name}_add")([x, shortcut])

    x = conv_bn_act(x, _HEAD_FILTERS, 1, 1, "top")

    if include_top:
        x = layers.GlobalAveragePooling2D(name="top_avg_pool")(x)
        x = layers.Dropout(LITE_VARIANTS[variant].dropout, name="top_dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="top_avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="top_max_pool")(x)
    return keras.Model(inputs, x, name=f"efficientnet_{variant}")


def efficientnet_lite0(input_shape=(224, 224, 3), include_top=False, classes=1000, pooling="avg",
                       classifier_activation="softmax"):
    """efficientnet_lite0: keras.Model. EfficientNet-Lite0: `efficientnet_lite("lite0", ...)`.

    Args:
        input_shape: tuple. Input shape (H, W, 3). Defaults to `(224, 224, 3)`.
        include_top: bool. Whether to add dropout and the `predictions` classifier. Defaults to `False`.
        classes: int. Number of classes when `include_top`. Defaults to `1000`.
        pooling: str or None. `"avg"`, `"max"` or `None`. Defaults to `"avg"`.
        classifier_activation: str or None. Activation of `predictions`. Defaults to `"softmax"`.

    Example:
    ```python
    model = efficientnet_lite0(input_shape=(64, 64, 3))
    model.output_shape  # (None, 1280)
    ```
    """
    return efficientnet_lite("lite0", input_shape, include_top, classes, pooling, classifier_activation)


def _weight_map(model):
    """List (keras layer name, kind, torch key prefix) for `model`; kind is conv, dwconv, bn or dense.

    Blocks are read off the model's own layer names in order, so one map serves every variant: the i-th
    `block*` prefix is lukemelas' `_blocks.{i}`.
    """
    names = [layer.name for layer in model.layers]
    blocks = list(dict.fromkeys(m.group(1) for m in map(_BLOCK_PREFIX.match, names) if m))
    entries = [("stem_conv", "conv", "_conv_stem"), ("stem_bn", "bn", "_bn0")]
    for index, name in enumerate(blocks):
        torch_block = f"_blocks.{index}"
        if f"{name}_expand_conv" in names:
            entries += [(f"{name}_expand_conv", "conv", f"{torch_block}._expand_conv"),
                        (f"{name}_expand_bn", "bn", f"{torch_block}._bn0")]
        entries += [(f"{name}_dwconv", "dwconv", f"{torch_block}._depthwise_conv"),
                    (f"{name}_bn", "bn", f"{torch_block}._bn1"),
                    (f"{name}_project_conv", "conv", f"{torch_block}._project_conv"),
                    (f"{name}_project_bn", "bn", f"{torch_block}._bn2")]
    entries += [("top_conv", "conv", "_conv_head"), ("top_bn", "bn", "_bn1")]
    if "predictions" in names:
        entries.append(("predictions", "dense", "_fc"))
    return entries


def convert_lite_weights(state_dict, model):
    """convert_lite_weights: keras.Model. Copy lukemelas-style EfficientNet-Lite weights into `model`.

    Works for every variant: the blocks are matched by position. Transposes torch layouts to Keras (conv
    OIHW -> HWIO, depthwise (C,1,k,k) -> (k,k,C,1), dense (out,in) -> (in,out)). Every model weight must
    be assigned and every state-dict key used (except `num_batches_tracked`, and `_fc.*` when the model
    has no `predictions` layer); otherwise it raises, so weights of another variant never load silently.

    Args:
        state_dict: dict. Parameter name -> numpy array, e.g. from `torch_legacy.load_state_dict` or the
            `arrays.safetensors` its converter writes.
        model: keras.Model. A model from `efficientnet_lite(...)`.

    Returns:
        `model`, with its weights assigned in place.

    Example:
    ```python
    model = efficientnet_lite("lite2", include_top=True)
    convert_lite_weights(load_state_dict("efficientnet-lite2-9656183e.pth"), model)
    ```
    """
    entries = _weight_map(model)
    include_top = entries[-1][0] == "predictions"
    used_keys = set()
    assigned = set()

    def take(key, expected_shape, transpose=None):
        if key not in state_dict:
            raise TlkerasError(
                f"Weights are missing key '{key}'; pass the state dict of the same EfficientNet-Lite variant "
                f"in lukemelas naming. Received: {len(state_dict)} keys"
            )
        value = np.asarray(state_dict[key], dtype="float32")
        if transpose is not None:
            value = value.transpose(transpose)
        if tuple(value.shape) != tuple(expected_shape):
            raise TlkerasError(
                f"Shape mismatch for '{key}': the model expects {tuple(expected_shape)} after transposing; "
                f"check the variant and `classes`. Received: shape={tuple(np.shape(state_dict[key]))}"
            )
        used_keys.add(key)
        return value

    def assign(variable, value):
        variable.assign(value)
        assigned.add(variable.path)

    for layer_name, kind, prefix in entries:
        try:
            layer = model.get_layer(layer_name)
        except ValueError:
            raise TlkerasError(
                f"Model has no layer '{layer_name}'; build it with efficientnet_lite(). "
                f"Received: model={model.name}"
            ) from None
        if kind == "conv":
            assign(layer.kernel, take(f"{prefix}.weight", layer.kernel.shape, (2, 3, 1, 0)))
        elif kind == "dwconv":
            assign(layer.kernel, take(f"{prefix}.weight", layer.kernel.shape, (2, 3, 0, 1)))
        elif kind == "dense":
            assign(layer.kernel, take(f"{prefix}.weight", layer.kernel.shape, (1, 0)))
            assign(layer.bias, take(f"{prefix}.bias", layer.bias.shape))
        else:
            assign(layer.gamma, take(f"{prefix}.weight", layer.gamma.shape))
            assign(layer.beta, take(f"{prefix}.bias", layer.beta.shape))
            assign(layer.moving_mean, take(f"{prefix}.running_mean", layer.moving_mean.shape))
            assign(layer.moving_variance, take(f"{prefix}.running_var", layer.moving_variance.shape))

    unassigned = [w.path for w in model.weights if w.path not in assigned]
    if unassigned:
        raise TlkerasError(
            f"{len(unassigned)} model weights got no value (first: {unassigned[0]}); the model is not a "
            f"plain EfficientNet-Lite. Received: model={model.name}"
        )
    unused = [k for k in state_dict if k not in used_keys and not k.endswith("num_batches_tracked")
              and not (not include_top and k.startswith("_fc."))]
    if unused:
        raise TlkerasError(
            f"{len(unused)} state-dict keys have no place in the model (first: '{unused[0]}'); the weights "
            f"are of another EfficientNet-Lite variant or another network. Received: {len(state_dict)} keys"
        )
    return model


# The name the Lite0-only version had; the converter never depended on the variant.
convert_lite0_weights = convert_lite_weights
