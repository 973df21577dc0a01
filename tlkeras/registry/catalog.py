"""Loading the YAML catalog and querying it as a pandas DataFrame.

A catalog file holds one backbone family:

    family: resnet
    defaults:        # merged under every entry of the file
      source: keras_applications
      license: Apache-2.0
    entries:
      - name: resnet50_imagenet
        architecture: ResNet50
        params: 25636712

Files come from the catalog shipped with tlkeras, then from each directory in `$TLKERAS_REGISTRY_PATH`
(os.pathsep-separated), then from `extra_dirs`, then from the user registry that
`tlkeras registry add` writes. A later file may not redefine a name: that is an error, not a shadow.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.resources
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml

from tlkeras import paths
from tlkeras.errors import TlkerasError
from tlkeras.registry.entry import BackboneEntry, CatalogError, field_names, validate_entry
from tlkeras.suggest import did_you_mean

ENV_PATH = "TLKERAS_REGISTRY_PATH"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class UnknownBackboneError(TlkerasError, KeyError):
    """No catalog entry has this name."""

    def __str__(self) -> str:
        return str(self.args[0])


def read_catalog_file(path: Path) -> list[BackboneEntry]:
    """Reads and validates one catalog YAML file.

    Raises:
        CatalogError: naming the file, the entry and the field at fault.
    """
    try:
        doc = yaml.load(Path(path).read_text(), Loader=_Loader)
    except yaml.YAMLError as err:
        raise CatalogError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise CatalogError(f"{path}: a catalog file is a mapping with an 'entries' list")
    unknown = set(doc) - {"family", "defaults", "entries"}
    if unknown:
        raise CatalogError(f"{path}: unknown top-level keys {sorted(unknown)}")
    defaults = dict(doc.get("defaults") or {})
    if "family" in doc:
        defaults.setdefault("family", doc["family"])
    entries = []
    for index, raw in enumerate(doc["entries"]):
        label = raw.get("name", f"#{index}") if isinstance(raw, dict) else f"#{index}"
        try:
            entries.append(validate_entry({**defaults, **raw}))
        except CatalogError as err:
            raise CatalogError(f"{path}: entry '{label}': {err}") from None
    return entries


def catalog_files(extra_dirs: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """The catalog files in load order: shipped, `$TLKERAS_REGISTRY_PATH`, `extra_dirs`, user."""
    shipped = importlib.resources.files("tlkeras.catalog")
    dirs = [Path(str(shipped))]
    dirs += [Path(p) for p in os.environ.get(ENV_PATH, "").split(os.pathsep) if p]
    dirs += [Path(d) for d in extra_dirs]
    dirs.append(paths.user_registry_dir())
    files = []
    for directory in dirs:
        if directory.is_file():
            files.append(directory)
        elif directory.is_dir():
            files += sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))
        elif directory != paths.user_registry_dir():
            raise CatalogError(f"registry directory {directory} does not exist")
    return files


class Catalog:
    """All known backbones, by name.

    Args:
        entries: iterable of `BackboneEntry`. Names must be unique.
    """

    def __init__(self, entries: Iterable[BackboneEntry]):
        self.entries: dict[str, BackboneEntry] = {}
        for entry in entries:
            if entry.name in self.entries:
                raise CatalogError(f"backbone '{entry.name}' is defined twice")
            self.entries[entry.name] = entry

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def get(self, name: str) -> BackboneEntry:
        """Returns the entry called `name`, or raises with the closest known name."""
        try:
            return self.entries[name]
        except KeyError:
            hint = did_you_mean(name, self.entries)
            raise UnknownBackboneError(f"unknown backbone '{name}'{hint}") from None

    def frame(self):
        """Returns every entry as a row of a pandas DataFrame indexed by position."""
        return _frame(self.entries.values())


@functools.lru_cache(maxsize=8)
def _load(stamped: tuple[tuple[Path, int, int], ...]) -> Catalog:
    entries: list[BackboneEntry] = []
    for path, _, _ in stamped:
        entries += read_catalog_file(path)
    return Catalog(entries)


def _stamp(path: Path) -> tuple[Path, int, int]:
    # The cache is keyed on each file's modification time and size too, so an edited or replaced catalog
    # file is read again without anyone clearing the cache.
    info = path.stat()
    return path, info.st_mtime_ns, info.st_size


def load_catalog(extra_dirs: Sequence[str | os.PathLike] = ()) -> Catalog:
    """Loads and validates the catalog.

    Args:
        extra_dirs: list of directories (or YAML files) holding more entries. Defaults to none.

    Example:
    >>> len(load_catalog()) > 150
    True
    """
    return _load(tuple(_stamp(path) for path in catalog_files(extra_dirs)))


def get(name: str, extra_dirs: Sequence[str | os.PathLike] = ()) -> BackboneEntry:
    """Returns one catalog entry.

    Example:
    >>> get("efficientnet_lite0_imagenet").feature_dim
    1280
    """
    return load_catalog(extra_dirs).get(name)


def find_backbones(
    domain: str | None = None,
    task: str | None = None,
    max_params: float | None = None,
    min_accuracy: float | None = None,
    license: str | None = None,
    offline: bool | None = None,
    source: str | None = None,
    search: str | None = None,
    name: str | None = None,
    supports: str | None = None,
    sort: str | None = None,
    ascending: bool | None = None,
    extra_dirs: Sequence[str | os.PathLike] = (),
) -> list[BackboneEntry]:
    """Filters and sorts the catalog; plain Python, so the CLI needs no pandas.

    Args:
        domain: str. "image", "text" or "audio". Defaults to all.
        task: str. Keep entries listing this task. Defaults to all.
        max_params: number. Keep entries with at most this many parameters.
        min_accuracy: float. Keep entries whose reported accuracy (a fraction) is at least this.
        license: str. Case-insensitive substring of the license, e.g. "apache".
        offline: bool. True keeps entries whose weights install from a package registry.
        source: str. One of the source kinds, e.g. "keras_hub".
        search: str. Case-insensitive text searched in name, family, description and pretrain data.
        name: str. An fnmatch pattern on the name, e.g. "resnet*".
        supports: str. Keep entries tlkeras can use for this: "feature_extraction" or "fine_tuning".
        sort: str. A field to sort by. Numbers sort descending, text ascending, unless `ascending`;
            entries without a value come last.
        ascending: bool. Overrides the sort direction.
        extra_dirs: list of extra catalog directories.

    Example:
    >>> [e.name for e in find_backbones(domain="text", offline=True)]
    ['minilm_l6_v2']
    """
    checks = [
        (domain, lambda e: e.domain == domain),
        (task, lambda e: task in e.tasks),
        (max_params, lambda e: e.params is not None and e.params <= max_params),
        (min_accuracy, lambda e: e.accuracy is not None and e.accuracy >= min_accuracy),
        (license, lambda e: license.lower() in e.license.lower()),
        (offline, lambda e: e.offline == offline),
        (source, lambda e: e.source == source),
        (search, lambda e: search.lower() in f"{e.name} {e.family} {e.description} {e.pretrain_data}".lower()),
        (name, lambda e: fnmatch.fnmatch(e.name, name)),
        (supports, lambda e: supports in e.supports),
    ]
    active = [check for value, check in checks if value is not None and value != ""]
    entries = [e for e in load_catalog(extra_dirs).entries.values() if all(check(e) for check in active)]
    if not sort:
        return entries
    if sort not in field_names():
        raise CatalogError(f"cannot sort by '{sort}'{did_you_mean(sort, field_names())}")
    present = [e for e in entries if getattr(e, sort) is not None]
    numeric = all(isinstance(getattr(e, sort), (int, float)) for e in present)
    present.sort(key=lambda e: getattr(e, sort), reverse=not (ascending if ascending is not None else not numeric))
    return present + [e for e in entries if getattr(e, sort) is None]


def list_backbones(**filters):
    """The catalog as a pandas DataFrame, filtered and sorted: one row per entry, one column per
    `BackboneEntry` field. Takes the arguments of `find_backbones`.

    Example:
    >>> df = list_backbones(domain="image", max_params=5e6, sort="accuracy")
    >>> df[["name", "params", "accuracy"]].head()
    """
    return _frame(find_backbones(**filters))


def _frame(entries):
    import pandas as pd

    return pd.DataFrame([e.to_dict() for e in entries], columns=list(field_names()))
