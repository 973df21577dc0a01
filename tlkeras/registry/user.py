"""`registry add`: catalog entries for the user's own weight files."""

from __future__ import annotations

from pathlib import Path

import yaml

from tlkeras import files, paths
from tlkeras.files import sha256_file
from tlkeras.registry.catalog import load_catalog
from tlkeras.registry.entry import BackboneEntry, CatalogError, validate_entry

_FORMATS = {".keras": "keras", ".h5": "keras_h5"}


def weights_format(path: Path) -> str:
    """Names the format of a local weights file or folder, or raises `CatalogError`."""
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "saved_model"
        raise CatalogError(f"{path} is a folder without saved_model.pb; expected a SavedModel")
    if path.name.endswith(".weights.h5"):
        return "keras_h5"
    if path.suffix in _FORMATS:
        return _FORMATS[path.suffix]
    raise CatalogError(
        f"cannot tell the format of {path}: use a .keras, .weights.h5 file or a SavedModel folder"
    )


def add_local(
    path: str | Path,
    name: str,
    domain: str = "image",
    architecture: str = "",
    registry_dir: str | Path | None = None,
    **fields,
) -> BackboneEntry:
    """Catalogs a local weights file so that `backbones.load(name)` finds it.

    Args:
        path: str. A `.keras` model, a `.weights.h5` file (then `architecture` names the
            keras.applications builder it fits) or a SavedModel folder.
        name: str. The new entry's name; must not exist yet.
        domain: str. "image", "text" or "audio". Defaults to "image".
        architecture: str. Needed for `.weights.h5`, e.g. "MobileNetV3Small".
        registry_dir: str. Where to write the entry. Defaults to `$TLKERAS_HOME/registry`.
        **fields: any other `BackboneEntry` field, e.g. `input_size=(224, 224)`.

    Example:
    >>> add_local("my_model.keras", name="my_model", input_size=(160, 160))
    """
    if not files.is_plain_name(name):
        raise CatalogError(f"--name must be a plain name (no '/', not starting with '.', not a number), e.g. my_net; "
                           f"it names the entry's file. Received: name={name!r}")
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise CatalogError(f"no such file or folder: {path}")
    fmt = weights_format(path)
    if fmt == "keras_h5" and not architecture:
        raise CatalogError("a .weights.h5 file needs --architecture, e.g. MobileNetV3Small")
    if name in load_catalog():
        raise CatalogError(f"backbone '{name}' already exists; pick another --name")
    raw = {
        "name": name, "family": "local", "source": "local", "domain": domain, "offline": True,
        "architecture": architecture, "handle": str(path), "weights_format": fmt,
        "weights_sha256": "" if path.is_dir() else sha256_file(path),
        "size_mb": round(_size(path) / 1e6, 1), **fields,
    }
    raw = {key: list(v) if isinstance(v, tuple) else v for key, v in raw.items()}
    entry = validate_entry(raw)
    target = Path(registry_dir) if registry_dir else paths.user_registry_dir()
    entry_file = target / f"{name}.yaml"
    if entry_file.exists():  # a catalog file outside the search path, or one that does not load: keep it
        raise CatalogError(f"{entry_file} already exists and would be overwritten: pick another --name or "
                           f"--registry-dir. Received: name={name!r}")
    files.writable_dir(target, "registry folder", "pass another --registry-dir")
    files.write_text(entry_file, yaml.safe_dump({"entries": [raw]}, sort_keys=False))
    return entry


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
