"""Architectures that converted weights load onto: name -> how to build the bare network at an input size,
and how to assign the named arrays a converter wrote (`arrays.safetensors`, see
`tlkeras.weights.converters`).

A catalog entry names its architecture (`architecture: efficientnet_lite2`); adding weights for a network
already in the table is one catalog entry, and a new network is one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import keras

from tlkeras.backbones import efficientnet_lite
from tlkeras.errors import TlkerasError
from tlkeras.suggest import did_you_mean
from tlkeras.weights.converters import ARRAYS_FILE
from tlkeras.weights.converters.keras_archive import canonical_layer_names


@dataclass(frozen=True)
class Architecture:
    """How to build one network and put converted weights into it.

    Args:
        build: callable. `build(image_size, pooling)` -> the bare `keras.Model`, random weights; `image_size`
            is (height, width), `pooling` "avg", "max" or None.
        assign: callable. `assign(arrays, model)` puts the named arrays into `model` and raises unless every
            model weight got a value and every array was used.
    """

    build: Callable[[tuple[int, int], str | None], keras.Model]
    assign: Callable[[dict, keras.Model], keras.Model]


def assign_by_layer_name(arrays: dict, model: keras.Model) -> keras.Model:
    """assign_by_layer_name: keras.Model. Assigns arrays keyed `<layer name>/<index>` to the model's layers.

    The index is the variable's position in `layer.weights`, the order Keras saves a layer's variables in.
    Layers Keras named itself are matched as `canonical_layer_names` gives them (`conv2d@0`), since their
    names depend on what else the process built. Every weight of the model must get an array of its shape
    and every array must be used.

    Args:
        arrays: dict. "<layer name>/<index>" -> numpy array.
        model: keras.Model. A flat model (no nested models) whose layer names the keys use.

    Returns:
        `model`, with its weights assigned in place.

    Raises:
        TlkerasError: naming the first missing, misshapen or unused array.

    Example:
    ```python
    model = keras.applications.Xception(weights=None, include_top=False)
    assign_by_layer_name({"block1_conv1/0": kernel, ...}, model)
    ```
    """
    used = set()
    names = canonical_layer_names((layer.name, type(layer).__name__) for layer in model.layers)
    for layer, name in zip(model.layers, names, strict=True):
        if isinstance(layer, keras.Model):
            raise TlkerasError(f"assign_by_layer_name reads flat models; '{layer.name}' is a nested model. "
                               f"Received: model={model.name}")
        for index, variable in enumerate(layer.weights):
            key = f"{name}/{index}"
            if key not in arrays:
                raise TlkerasError(f"The converted weights have no '{key}' for {variable.path}; they are not "
                                   f"for this architecture. Received: {len(arrays)} arrays")
            value = arrays[key]
            if tuple(value.shape) != tuple(variable.shape):
                raise TlkerasError(f"Shape mismatch for '{key}': the model expects {tuple(variable.shape)}. "
                                   f"Received: shape={tuple(value.shape)}")
            variable.assign(value)
            used.add(key)
    unused = sorted(set(arrays) - used)
    if unused:
        raise TlkerasError(f"{len(unused)} converted arrays have no place in the model (first: '{unused[0]}'); "
                           f"the weights are not for this architecture. Received: model={model.name}")
    return model


def _lite(variant: str, image_size, pooling) -> keras.Model:
    return efficientnet_lite.efficientnet_lite(variant, input_shape=(*image_size, 3), pooling=pooling)


def _xception(image_size, pooling) -> keras.Model:
    return keras.applications.Xception(include_top=False, weights=None, input_shape=(*image_size, 3),
                                       pooling=pooling)


ARCHITECTURES: dict[str, Architecture] = {
    **{f"efficientnet_{variant}": Architecture(partial(_lite, variant), efficientnet_lite.convert_lite_weights)
       for variant in efficientnet_lite.LITE_VARIANTS},
    "Xception": Architecture(_xception, assign_by_layer_name),
}


def get(name: str) -> Architecture:
    """Returns the architecture called `name`, or raises naming the closest one."""
    if name not in ARCHITECTURES:
        raise TlkerasError(f"no architecture '{name}' for converted weights{did_you_mean(name, ARCHITECTURES)}; "
                           f"known: {', '.join(ARCHITECTURES)}. Received: architecture={name!r}")
    return ARCHITECTURES[name]


def load_arrays(folder: Path) -> dict:
    """dict: The named numpy arrays a converter wrote into `folder` (`arrays.safetensors`)."""
    from safetensors.numpy import load_file

    path = Path(folder) / ARRAYS_FILE
    if not path.is_file():
        raise TlkerasError(f"{path} is missing; re-fetch the weights with `tlkeras fetch NAME --force`. "
                           f"Received: folder={folder}")
    return load_file(path)


def build(name: str, image_size, pooling: str | None = "avg", arrays: dict | None = None) -> keras.Model:
    """build: keras.Model. The bare network `name` at `image_size`, with `arrays` assigned when given.

    Args:
        name: str. A key of `ARCHITECTURES`, e.g. "efficientnet_lite2".
        image_size: (height, width). Input size.
        pooling: str or None. "avg", "max" or None (4D feature map). Defaults to "avg".
        arrays: dict. Converted arrays to assign; None keeps random weights. Defaults to None.

    Example:
    ```python
    network = build("Xception", (299, 299), arrays=load_arrays(weights_location(entry)))
    ```
    """
    architecture = get(name)
    model = architecture.build(tuple(image_size), pooling)
    if arrays is not None:
        architecture.assign(arrays, model)
    return model
