"""The backbone registry: a validated YAML catalog, queried as a pandas DataFrame.

Example:
>>> from tlkeras import registry
>>> registry.list_backbones(domain="image", offline=True)[["name", "params", "accuracy"]]
>>> registry.get("minilm_l6_v2").feature_dim
384
"""

from tlkeras.registry.catalog import (
    Catalog,
    UnknownBackboneError,
    catalog_files,
    find_backbones,
    get,
    list_backbones,
    load_catalog,
    read_catalog_file,
)
from tlkeras.registry.entry import BackboneEntry, CatalogError, validate_entry
from tlkeras.registry.user import add_local

__all__ = [
    "BackboneEntry",
    "Catalog",
    "CatalogError",
    "UnknownBackboneError",
    "add_local",
    "catalog_files",
    "find_backbones",
    "get",
    "list_backbones",
    "load_catalog",
    "read_catalog_file",
    "validate_entry",
]
