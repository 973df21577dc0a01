"""Typed mappings: build (nested) dataclasses from YAML dicts, with errors that name the key.

Both the backbone catalog and recipes are plain dataclasses; this module is their shared validator.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

from tlkeras.errors import TlkerasError
from tlkeras.suggest import did_you_mean


class SchemaError(TlkerasError, ValueError):
    """A mapping does not fit its dataclass."""


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def coerce(key: str, value: Any, hint: Any) -> Any:
    """Checks `value` against the type `hint` and returns it in that type (lists become tuples,
    ints become floats where a float is expected, mappings become nested dataclasses)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(key, value, option)
            except SchemaError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        names = " or ".join(_type_name(a) for a in args if a is not type(None))
        raise SchemaError(f"'{key}' must be {names}. Received: {key}={value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise SchemaError(f"'{key}' must be one of {', '.join(map(str, args))}. Received: {key}={value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SchemaError(f"'{key}' must be a list. Received: {key}={value!r}")
        inner = args[0] if args else Any
        return tuple(coerce(key, v, inner) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"'{key}' must be a mapping. Received: {key}={value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where=key)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
        raise SchemaError(f"'{key}' must be {_type_name(hint)}. Received: {key}={value!r}")
    return value


def bounded(default: Any, low: float | None = None, high: float | None = None, *, open_low: bool = False,
            open_high: bool = False):
    """A dataclass field whose numbers (or each number of a tuple) must lie in a range, checked by `from_dict`.

    Example:
    >>> epochs: int = bounded(10, 0)                        # [0, inf)
    >>> fraction: float = bounded(0.0, 0.0, 1.0, open_high=True)   # [0, 1)
    """
    default_kw = {"default_factory": lambda: default} if isinstance(default, (list, dict)) else {"default": default}
    return dataclasses.field(**default_kw, metadata={"range": (low, high, open_low, open_high)})


def range_text(bounds) -> str:
    low, high, open_low, open_high = bounds
    left = "(" if open_low or low is None else "["
    right = ")" if open_high or high is None else "]"
    return f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"


def check_range(key: str, value: Any, bounds) -> None:
    """Raises `SchemaError` naming the key and the range when a number of `value` falls outside `bounds`."""
    low, high, open_low, open_high = bounds
    for number in value if isinstance(value, tuple) else (value,):
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            continue
        below = low is not None and (number <= low if open_low else number < low)
        above = high is not None and (number >= high if open_high else number > high)
        if below or above or number != number:  # NaN is outside every range
            raise SchemaError(f"'{key}' must be in {range_text(bounds)}. Received: {key}={value!r}")


@functools.cache
def _fields(cls: type) -> tuple[dict[str, Any], frozenset[str], dict[str, tuple]]:
    # get_type_hints evaluates every annotation: far too slow to repeat for each catalog entry.
    ranges = {f.name: f.metadata["range"] for f in dataclasses.fields(cls) if "range" in f.metadata}
    return typing.get_type_hints(cls), frozenset(f.name for f in dataclasses.fields(cls)), ranges


def from_dict(cls: type, raw: Any, where: str = ""):
    """Builds dataclass `cls` from a mapping; unknown keys get a "did you mean".

    Example:
    >>> from_dict(HeadConfig, {"dropout": 0.2}).dropout
    0.2
    """
    prefix = f"{where}." if where else ""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SchemaError(f"'{where or cls.__name__}' must be a mapping. Received: {raw!r}")
    hints, fields, ranges = _fields(cls)
    values = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in fields:
            raise SchemaError(f"unknown key '{prefix}{key}'{did_you_mean(str(key), fields)}")
        values[key] = coerce(f"{prefix}{key}", value, hints[key])
        if key in ranges:
            check_range(f"{prefix}{key}", values[key], ranges[key])
    try:
        return cls(**values)
    except TypeError as err:  # a required field is missing
        raise SchemaError(f"'{where or cls.__name__}': {err}") from None


def to_dict(instance) -> dict[str, Any]:
    """A dataclass as plain YAML-ready data (tuples become lists)."""

    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(instance))
