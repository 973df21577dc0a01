"""Every numeric recipe field declares its range with `schema.bounded`, and the schema refuses a value outside
it, or of the wrong type, with the key and the range in the message."""

from __future__ import annotations

import dataclasses
import math
import types
import typing

import pytest

from tlkeras.recipes import config as recipe_config
from tlkeras.recipes import parse_recipe
from tlkeras.schema import SchemaError, range_text

# Where each section sits in a recipe, and what a valid recipe needs besides it.
SECTION_PATHS = {
    "Recipe": "", "DataConfig": "data", "HeadConfig": "head", "ScheduleConfig": "schedule",
    "AugmentConfig": "augment", "CallbacksConfig": "callbacks", "ExportConfig": "export",
    "EarlyStoppingConfig": "callbacks.early_stopping", "ReduceOnPlateauConfig": "callbacks.reduce_on_plateau",
    "StageConfig": "schedule.stages[0]", "RecommendConfig": "recommend",
}
BASE = {"backbone": "test_tiny_cnn", "data": {"train": "images"}}


def _numeric(hint) -> bool:
    if hint in (int, float):
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType, tuple):
        return any(_numeric(arg) for arg in typing.get_args(hint) if arg is not type(None))
    return False


def _sections():
    return [cls for cls in vars(recipe_config).values()
            if dataclasses.is_dataclass(cls) and cls.__module__ == recipe_config.__name__]


NUMERIC_FIELDS = [(cls, f) for cls in _sections() for f in dataclasses.fields(cls)
                  if _numeric(typing.get_type_hints(cls)[f.name])]


def test_every_section_has_a_place_in_a_recipe():
    assert {cls.__name__ for cls in _sections()} <= set(SECTION_PATHS)


@pytest.mark.parametrize("cls, f", NUMERIC_FIELDS, ids=lambda x: getattr(x, "name", getattr(x, "__name__", "")))
def test_every_numeric_field_declares_a_range(cls, f):
    assert "range" in f.metadata, f"{cls.__name__}.{f.name} is numeric but has no bounded(...) range"
    low, high, _, _ = f.metadata["range"]
    assert low is not None or high is not None


def _set(raw: dict, path: str, key: str, value):
    node = raw
    for part in [p for p in path.split(".") if p]:
        if part.endswith("[0]"):
            node = node.setdefault(part[:-3], [{}])[0]
        else:
            node = node.setdefault(part, {})
    node[key] = value
    return raw


def _outside(bounds, hint):
    low, high, open_low, open_high = bounds
    integer = int in (typing.get_args(hint) or (hint,))
    if low is not None:
        return low - (0 if open_low else (1 if integer else 0.5))
    return high + (0 if open_high else (1 if integer else 0.5))


@pytest.mark.parametrize("cls, f", NUMERIC_FIELDS, ids=lambda x: getattr(x, "name", getattr(x, "__name__", "")))
def test_out_of_range_and_wrong_type_are_refused_with_key_and_range(cls, f):
    hint = typing.get_type_hints(cls)[f.name]
    bounds = f.metadata["range"]
    path = SECTION_PATHS[cls.__name__]
    key = f"{path.replace('[0]', '')}.{f.name}".lstrip(".")
    is_tuple = typing.get_origin(hint) is tuple or any(typing.get_origin(a) is tuple for a in typing.get_args(hint))
    wrong = _outside(bounds, hint)
    value = [wrong, wrong] if is_tuple and f.name == "image_size" else [wrong] if f.name == "hidden_units" else wrong
    raw = _set({**BASE, "data": dict(BASE["data"])}, path, f.name, value)
    with pytest.raises(SchemaError) as caught:
        parse_recipe(raw)
    message = str(caught.value)
    assert f"'{key}" in message and range_text(bounds) in message, message
    if not is_tuple:
        raw = _set({**BASE, "data": dict(BASE["data"])}, path, f.name, "three")
        with pytest.raises(SchemaError, match=f"'{key}'"):
            parse_recipe(raw)
        raw = _set({**BASE, "data": dict(BASE["data"])}, path, f.name, math.nan)
        if float in (typing.get_args(hint) or (hint,)):
            with pytest.raises(SchemaError, match=f"'{key}' must be in"):
                parse_recipe(raw)
