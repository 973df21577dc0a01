"""Layer groups: the units freezing schedules unfreeze, from a catalog entry's `layer_groups`.

A group is named by a layer-name prefix (`block3`) or by a numbered pattern (`transformer_layer_*`), which
stands for one group per number found among the backbone's layer names, in order. An entry without groups
has one group: the whole backbone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import keras


def flat_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """All leaf layers of a model, nested models opened, in order."""
    return [layer for layer in _walk(model) if not _is_container(layer)]


def expand_patterns(prefixes: Sequence[str], names: Sequence[str]) -> list[str]:
    """list of str: the prefixes with each `name_*` pattern replaced by `name_0`, `name_1`, ... as found in
    `names` (numeric order).

    Example:
    >>> expand_patterns(["embeddings", "layer_*"], ["embeddings", "layer_0_attn", "layer_1_ffn", "layer_10"])
    ['embeddings', 'layer_0', 'layer_1', 'layer_10']
    """
    expanded = []
    for prefix in prefixes:
        if not prefix.endswith("*"):
            expanded.append(prefix)
            continue
        stem = prefix[:-1]
        pattern = re.compile(re.escape(stem) + r"(\d+)(?!\d)")
        numbers = sorted({int(m.group(1)) for name in names if (m := pattern.match(name))})
        expanded += [f"{stem}{n}" for n in numbers]
    return expanded


def group_layers(model: keras.Model, prefixes: Sequence[str]) -> list[list[keras.layers.Layer]]:
    """Splits a backbone's weighted layers into groups by name prefix, from input to output.

    Prefixes are boundaries: a group starts at the first layer whose name starts with its prefix (the
    longest matching prefix wins), and groups never go back down, so each group is a contiguous run of
    layers. Layers matching no prefix, or an earlier one, stay in the current group, so nothing is lost.
    Numbered patterns (`block_*`) are expanded first. With no prefixes, the whole backbone is one group.

    Example:
    >>> groups = group_layers(backbone, ["stem", "block1", "block2", "top"])
    >>> [len(g) for g in groups]
    """
    layers = list(_walk(model))  # containers too: a group may start at a nested block's name
    weighted = [layer for layer in layers if layer.weights and not _is_container(layer)]
    prefixes = expand_patterns(prefixes, [layer.name for layer in layers])
    if not prefixes:
        return [weighted]
    groups: list[list] = [[] for _ in prefixes]
    current = 0
    # Boundaries are matched on every layer (a group may start at a padding or concatenation layer);
    # only weighted layers are grouped.
    for layer in layers:
        matches = [i for i, prefix in enumerate(prefixes) if _matches(layer.name, prefix)]
        if matches:
            current = max(current, max(matches, key=lambda i: len(prefixes[i])))
        if layer.weights and not _is_container(layer):
            groups[current].append(layer)
    return groups


def _is_container(layer) -> bool:
    return isinstance(layer, keras.Model) or bool(getattr(layer, "layers", None))


def _walk(model):
    for layer in model.layers:
        yield layer
        if _is_container(layer):
            yield from _walk(layer)


def _matches(name: str, prefix: str) -> bool:
    # "layer_1" must not claim "layer_10": a numbered prefix ends where its digits end.
    if not name.startswith(prefix):
        return False
    return not (prefix[-1:].isdigit() and name[len(prefix):len(prefix) + 1].isdigit())
