"""Ensembles: `backbone: [a, b]` in a recipe concatenates the frozen features of several backbones of one
input kind. Each member sees the input at its own size (images are resized inside the model), so the
ensemble trains, caches, evaluates and exports like one backbone. Members stay frozen: an ensemble is a
feature extractor, not something to fine-tune."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from tlkeras import inputs, registry
from tlkeras.errors import TlkerasError

SEPARATOR = "+"


def ensemble_entry(names: Sequence[str], extra_dirs=()):
    """BackboneEntry: a catalog-like entry describing the concatenation of `names`' features."""
    members = [registry.get(name, extra_dirs) for name in names]
    if len(members) < 2:
        raise TlkerasError(f"an ensemble needs at least two backbones. Received: backbone={list(names)}")
    domains = {m.domain for m in members}
    if len(domains) != 1:
        raise TlkerasError(f"an ensemble's backbones must take one input kind; these take {sorted(domains)}. "
                           f"Received: backbone={list(names)}")
    kind = inputs.for_entry(members[0])
    if kind.preprocessor_files:  # each member would need its own tokenizer on the one canonical input
        raise TlkerasError(f"{kind.name} backbones preprocess with files of their own (tokenizers), so tlkeras does "
                           f"not ensemble them; pick one. Received: backbone={list(names)}")
    missing = [m.name for m in members if "feature_extraction" not in m.supports]
    if missing:
        raise TlkerasError(f"{missing} cannot extract features in tlkeras yet; drop them from the ensemble")
    dims = [m.feature_dim for m in members]
    first = members[0]
    return dataclasses.replace(
        first, name=SEPARATOR.join(m.name for m in members), family="ensemble",
        description="concatenated frozen features of " + ", ".join(m.name for m in members),
        handle=SEPARATOR.join(f"{m.name}:{m.package_sha256 or m.weights_sha256 or m.handle}" for m in members),
        feature_dim=sum(dims) if all(dims) else None, params=sum(m.params or 0 for m in members) or None,
        layer_groups=(), supports=("feature_extraction",),
        unsupported="an ensemble's members stay frozen: fine-tune one backbone instead",
        license="; ".join(dict.fromkeys(f"{m.name}: {m.license or 'not declared'}" for m in members)),
        caveats=tuple(c for m in members for c in m.caveats))


def build_ensemble(names: Sequence[str], weights: bool, data, extra_dirs=()):
    """Backbone: the members built and joined into one extractor that takes the first member's input."""
    import keras

    from tlkeras import backbones, inputs

    entry = ensemble_entry(names, extra_dirs)
    kind = inputs.for_entry(entry)
    built = [backbones.build(name, weights, data if i == 0 else None, extra_dirs) for i, name in enumerate(names)]
    spec = built[0].spec
    source = kind.network_input(spec)
    features = []
    for member in built:
        adapted = kind.adapt(source, spec, member.spec)
        features.append(member.extractor(adapted))
    extractor = keras.Model(source, keras.layers.Concatenate(name="ensemble")(features), name="ensemble")
    return backbones.Backbone(entry, kind, spec, extractor, None)
