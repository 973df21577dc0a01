"""Every schema field does something: a catalog or recipe field is read by name somewhere in tlkeras, or it
is descriptive metadata shown to users (registry list/show, model cards) and declared so."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from tlkeras.recipes import config as recipe_config
from tlkeras.registry.entry import DESCRIPTIVE_FIELDS, BackboneEntry

PACKAGE = Path(__file__).resolve().parents[2] / "tlkeras"


def _source_outside(*excluded: str) -> str:
    return "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p.name not in excluded)


def _read_by_name(field: str, source: str) -> bool:
    return bool(re.search(rf"\.{field}\b|[\"']{field}[\"']", source))


def test_every_catalog_field_is_read_or_declared_descriptive():
    source = _source_outside("entry.py")
    fields = [f.name for f in dataclasses.fields(BackboneEntry)]
    assert set(DESCRIPTIVE_FIELDS) <= set(fields)
    unread = [f for f in fields if f not in DESCRIPTIVE_FIELDS and not _read_by_name(f, source)]
    assert not unread, f"catalog fields no code reads: {unread}"


RECIPE_SECTIONS = [cls for _, cls in vars(recipe_config).items()
                   if dataclasses.is_dataclass(cls) and cls.__module__ == recipe_config.__name__]


@pytest.mark.parametrize("section", RECIPE_SECTIONS, ids=lambda cls: cls.__name__)
def test_every_recipe_field_is_read(section):
    source = _source_outside("config.py")
    unread = [f.name for f in dataclasses.fields(section) if not _read_by_name(f.name, source)]
    assert not unread, f"{section.__name__} fields no code reads: {unread}"
