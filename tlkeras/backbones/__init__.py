"""Backbones: a catalog entry built into a Keras feature extractor, with the preprocessor its inputs need.

The entry's source kind builds the bare pre-trained network (`sources.py`); the entry's input kind wraps
it (`tlkeras.inputs`): image extractors take float32 RGB pixels in [0, 255] and normalise inside; text
extractors take the token dict of their tokenizer, which is the backbone's `preprocessor`. Every
extractor returns pooled features (B, feature_dim).

Example:
>>> from tlkeras import backbones
>>> backbone = backbones.build("efficientnet_lite0_imagenet")
>>> backbone.extractor(np.zeros((1, 224, 224, 3))).shape
(1, 1280)
>>> backbones.load("minilm_l6_v2")          # the extractor alone
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from tlkeras import inputs, registry
from tlkeras.backbones.groups import flat_layers, group_layers
from tlkeras.backbones.sources import SOURCE_BUILDERS, weights_handle
from tlkeras.errors import TlkerasError
from tlkeras.inputs import InputSpec
from tlkeras.weights import fetch, is_fetched, weights_location

__all__ = ["Backbone", "build", "entry_for", "fetch", "flat_layers", "group_layers", "is_fetched", "load", "load_preprocessor",
           "weights_location"]


@dataclass
class Backbone:
    """A built backbone: what a recipe needs to train on it and export it.

    Attributes:
        entry: BackboneEntry. Its catalog entry.
        kind: InputKind. The kind of input it takes.
        spec: InputSpec. The input size / length it was built for.
        extractor: keras.Model. Canonical inputs -> pooled features (B, feature_dim).
        preprocessor: the layer mapping raw inputs to the extractor's inputs (a tokenizer), or None.
    """

    entry: Any
    kind: inputs.InputKind
    spec: InputSpec
    extractor: Any
    preprocessor: Any = None

    @property
    def feature_dim(self) -> int:
        return int(self.extractor.output.shape[-1])


def check_supported(entry, need: str = "feature_extraction") -> None:
    """Raises naming the reason when tlkeras cannot use `entry` for `need` ("feature_extraction" or
    "fine_tuning")."""
    if need not in entry.supports:
        reason = entry.unsupported or "its catalog entry does not list it"
        raise TlkerasError(f"'{entry.name}' does not support {need.replace('_', ' ')} in tlkeras yet: {reason}. "
                           f"Pick another backbone: `tlkeras registry list --supports {need}`")


def entry_for(name, extra_dirs: Sequence[str | os.PathLike] = ()):
    """BackboneEntry: the catalog entry of `name`, or the ensemble entry of a list of names."""
    if isinstance(name, (list, tuple)):
        from tlkeras.backbones.ensemble import ensemble_entry

        return ensemble_entry(name, extra_dirs)
    return registry.get(name, extra_dirs)


def build(name, weights: bool = True, data=None, extra_dirs: Sequence[str | os.PathLike] = ()) -> Backbone:
    """Builds the backbone `name` for the input a recipe's `data` section asks for.

    Args:
        name: str, or a list of names: their frozen features concatenated (`ensemble.py`).
        weights: bool. Load the pre-trained weights; False builds the architecture with random weights
            (for "weight initialization" baselines and tests). Defaults to True.
        data: the recipe's `data` section (or anything with `image_size` / `sequence_length`). Defaults to
            the entry's own input size and length.
        extra_dirs: list of extra catalog directories.

    Raises:
        UnknownBackboneError: for an unknown name, with the closest known one.
        WeightsUnavailableError: when the weights are missing offline, naming the fix.
    """
    if isinstance(name, (list, tuple)):
        from tlkeras.backbones.ensemble import build_ensemble

        return build_ensemble(name, weights, data, extra_dirs)
    entry = registry.get(name, extra_dirs)
    check_supported(entry)
    kind = inputs.for_entry(entry)
    spec = kind.spec(entry, data)
    network = SOURCE_BUILDERS[entry.source](entry, weights, spec)
    extractor = kind.feature_extractor(entry, network, spec)
    preprocessor = kind.preprocessor(entry, weights_handle(entry), spec) if kind.preprocessor_files else None
    return Backbone(entry, kind, spec, extractor, preprocessor)


def load(name: str, weights: bool = True, image_size: Sequence[int] | None = None,
         extra_dirs: Sequence[str | os.PathLike] = ()):
    """keras.Model: the feature extractor of backbone `name` (see `build`).

    Args:
        image_size: (height, width). Image input size. Defaults to the entry's `input_size`.
    """
    data = SimpleNamespace(image_size=tuple(image_size or ()), sequence_length=None)
    return build(name, weights, data, extra_dirs).extractor


def load_preprocessor(name: str, sequence_length: int | None = None, extra_dirs=()):
    """The preprocessor of backbone `name` (for texts, the keras-hub tokenizer mapping a batch of strings
    to the extractor's inputs), without building the network; None when the kind needs none.

    Example:
    >>> tokenize = load_preprocessor("minilm_l6_v2", sequence_length=64)
    >>> tokenize(tf.constant(["a cat sits on the mat"]))["token_ids"].shape
    TensorShape([1, 64])
    """
    if isinstance(name, (list, tuple)):
        return None  # ensembles are of kinds that need no preprocessor (text is refused)
    entry = registry.get(name, extra_dirs)
    kind = inputs.for_entry(entry)
    if not kind.preprocessor_files:
        return None
    spec = kind.spec(entry, SimpleNamespace(image_size=(), sequence_length=sequence_length))
    return kind.preprocessor(entry, weights_handle(entry), spec)
