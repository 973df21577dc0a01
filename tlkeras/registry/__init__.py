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


def __getattr__(name: str):
    # `registry.recommend` ranks backbones on data: it needs the backbones and the probe, so it lives above
    # them (tlkeras.recommend) and is imported only when asked for, keeping `registry` free of TensorFlow.
    if name == "recommend":
        from tlkeras.recommend import recommend

        return recommend
    raise AttributeError(f"module 'tlkeras.registry' has no attribute {name!r}")
