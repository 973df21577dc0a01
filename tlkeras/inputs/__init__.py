"""Input kinds: one object per kind of input (image, text, audio), owning everything that differs between them:
its input spec, reading checks, decoding (one implementation for training and serving), datasets, the
feature extractor around a backbone, augmentation, serving signatures, warm-up requests and its part of
the feature-cache key. The rest of tlkeras asks the kind instead of branching on it.

Example:
>>> from tlkeras import inputs
>>> kind = inputs.for_entry(registry.get("minilm_l6_v2"))
>>> kind.name, kind.table_column
('text', 'text')
"""

from __future__ import annotations

from tlkeras.errors import TlkerasError
from tlkeras.inputs.audio import AudioKind
from tlkeras.inputs.base import InputKind, InputSpec
from tlkeras.inputs.image import ImageKind
from tlkeras.inputs.text import TextKind
from tlkeras.suggest import did_you_mean

KINDS: dict[str, InputKind] = {kind.name: kind for kind in (ImageKind(), TextKind(), AudioKind())}


def get(name: str) -> InputKind:
    """InputKind: the kind called `name` ("image", "text"), or an error with a "did you mean"."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise TlkerasError(f"unknown input kind{did_you_mean(str(name), KINDS)}: use one of {', '.join(KINDS)}. "
                           f"Received: kind={name!r}") from None


def for_entry(entry) -> InputKind:
    """InputKind: the kind a catalog entry's backbone takes (its `domain`)."""
    if entry.domain not in KINDS:
        raise TlkerasError(f"'{entry.name}' is an {entry.domain} backbone; tlkeras trains {', '.join(KINDS)} "
                           f"recipes today")
    return KINDS[entry.domain]


def parse_spec(raw) -> InputSpec:
    """InputSpec: a run's `input:` mapping, checked by its kind."""
    if not isinstance(raw, dict) or raw.get("kind") not in KINDS:
        raise TlkerasError(f"config.yaml 'input' must be a mapping with 'kind' one of {', '.join(KINDS)}. "
                           f"Received: input={raw!r}")
    return KINDS[raw["kind"]].parse_spec(raw)


__all__ = ["KINDS", "InputKind", "InputSpec", "for_entry", "get", "parse_spec"]
