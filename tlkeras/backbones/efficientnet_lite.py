"""EfficientNet-Lite0 in plain Keras layers, and conversion of lukemelas-style PyTorch weights onto it.

Lite differs from EfficientNet-B0 by having no squeeze-excite, ReLU6 instead of swish, and a fixed stem
and head. The ImageNet weights were trained in TensorFlow, so padding is TF-style "same" (what Keras uses),
not symmetric: symmetric padding shifts logits enough to change the top-1.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from tlkeras.errors import TlkerasError

_BN_EPSILON = 1e-3
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
_DROPOUT_RATE = 0.2


class _Stage(NamedTuple):
    repeats: int
    kernel_size: int
    strides: int
    expand_ratio: int
    filters_in: int
    filters_out: int


# EfficientNet-B0 / Lite0 stages (width and depth multipliers are 1.0).
_LITE0_STAGES = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)


def _block_names(stages):
    """Yield (keras block prefix, stage, repeat index) in the order of lukemelas' `_blocks.{i}`."""
    for stage_index, stage in enumerate(stages):
        for repeat in range(stage.repeats):
            yield f"block{stage_index + 1}{chr(ord('a') + repeat)}", stage, repeat


def efficientnet_lite0(input_shape=(224, 224, 3), include_top=False, classes=1000, pooling="avg",
                       classifier_activation="softmax"):
    """efficientnet_lite0: keras.Model. EfficientNet-Lite0 built from plain Keras layers.

    The model expects already-normalised input, `(pixels - 127) / 128`. Layer names group by prefix for
    freezing: `stem_*`, `block1*` ... `block7*` (one per stage, e.g. `block2b_dwconv`), `top_*` and
    `predictions`. Only built-in layers are used, so saved `.keras` files reload without custom objects.

    Args:
        input_shape: tuple. Input shape (H, W, 3). Defaults to `(224, 224, 3)`.
        include_top: bool. Whether to add dropout and the `predictions` classifier. Defaults to `False`.
        classes: int. Number of classes when `include_top`. Defaults to `1000`.
        pooling: str or None. `"avg"`, `"max"` or `None` (4D feature map) when not `include_top`;
            `include_top` always average-pools. Defaults to `"avg"`.
        classifier_activation: str or None. Activation of `predictions`; `None` gives logits.
            Defaults to `"softmax"`.

    Returns:
        A functional `keras.Model`; with `include_top=False, pooling="avg"` its output is (B, 1280).

    Example:
    ```python
    model = efficientnet_lite0(input_shape=(64, 64, 3))
    model.output_shape  # (None, 1280)
    ```
    """
    import keras
    from keras import layers

    if pooling not in ("avg", "max", None):
        raise TlkerasError(f"pooling must be 'avg', 'max' or None. Received: pooling={pooling!r}")

    def conv_bn_act(x, filters, kernel_size, strides, name, activation=True):
        x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                          name=f"{name}_conv")(x)
        x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_bn")(x)
        if activation:
            x = layers.ReLU(6.0, name=f"{name}_activation")(x)
        return x

    inputs = keras.Input(shape=input_shape, name="stem_input")
    x = conv_bn_act(inputs, _STEM_FILTERS, 3, 2, "stem")

    for name, stage, repeat in _block_names(_LITE0_STAGES):
        filters_in = stage.filters_in if repeat == 0 else stage.filters_out
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
        x = layers.Dropout(_DROPOUT_RATE, name="top_dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="top_avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="top_max_pool")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def _lite0_weight_map(include_top):
    """List (keras layer name, kind, torch key prefix); kind is conv, dwconv, bn or dense."""
    entries = [("stem_conv", "conv", "_conv_stem"), ("stem_bn", "bn", "_bn0")]
    for index, (name, stage, _) in enumerate(_block_names(_LITE0_STAGES)):
        torch_block = f"_blocks.{index}"
        if stage.expand_ratio != 1:
            entries += [(f"{name}_expand_conv", "conv", f"{torch_block}._expand_conv"),
                        (f"{name}_expand_bn", "bn", f"{torch_block}._bn0")]
        entries += [(f"{name}_dwconv", "dwconv", f"{torch_block}._depthwise_conv"),
                    (f"{name}_bn", "bn", f"{torch_block}._bn1"),
                    (f"{name}_project_conv", "conv", f"{torch_block}._project_conv"),
                    (f"{name}_project_bn", "bn", f"{torch_block}._bn2")]
    entries += [("top_conv", "conv", "_conv_head"), ("top_bn", "bn", "_bn1")]
    if include_top:
        entries.append(("predictions", "dense", "_fc"))
    return entries


def convert_lite0_weights(state_dict, model):
    """convert_lite0_weights: keras.Model. Copy lukemelas-style EfficientNet-Lite0 weights into `model`.

    Transposes torch layouts to Keras (conv OIHW -> HWIO, depthwise (C,1,k,k) -> (k,k,C,1), dense
    (out,in) -> (in,out)). Every model weight must be assigned and every state-dict key used (except
    `num_batches_tracked`, and `_fc.*` when the model has no `predictions` layer); otherwise it raises.

    Args:
        state_dict: dict. Parameter name -> numpy array, e.g. from `torch_legacy.load_state_dict`.
        model: keras.Model. A model from `efficientnet_lite0(...)`.

    Returns:
        `model`, with its weights assigned in place.

    Example:
    ```python
    model = efficientnet_lite0(include_top=True)
    convert_lite0_weights(load_state_dict("efficientnet-lite0-57934424.pth"), model)
    ```
    """
    include_top = any(layer.name == "predictions" for layer in model.layers)
    used_keys = set()
    assigned = set()

    def take(key, expected_shape, transpose=None):
        if key not in state_dict:
            raise TlkerasError(
                f"Weights are missing key '{key}'; pass an EfficientNet-Lite0 state dict in lukemelas "
                f"naming. Received: {len(state_dict)} keys"
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

    for layer_name, kind, prefix in _lite0_weight_map(include_top):
        try:
            layer = model.get_layer(layer_name)
        except ValueError:
            raise TlkerasError(
                f"Model has no layer '{layer_name}'; build it with efficientnet_lite0(). "
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
            f"plain EfficientNet-Lite0. Received: model={model.name}"
        )
    unused = [k for k in state_dict if k not in used_keys and not k.endswith("num_batches_tracked")
              and not (not include_top and k.startswith("_fc."))]
    if unused:
        raise TlkerasError(
            f"{len(unused)} state-dict keys have no place in the model (first: '{unused[0]}'); the weights "
            f"are not EfficientNet-Lite0. Received: {len(state_dict)} keys"
        )
    return model
