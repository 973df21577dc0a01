"""Where tlkeras keeps things on disk. Everything lives under `$TLKERAS_HOME` (default
`~/.cache/tlkeras`), so one variable moves it all."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("TLKERAS_HOME", Path.home() / ".cache" / "tlkeras")).expanduser()


def weights_dir() -> Path:
    """Unpacked and converted weight packages, one folder per catalog entry."""
    return home() / "weights"


def features_dir() -> Path:
    """The frozen-feature cache."""
    return home() / "features"


def converted_dir() -> Path:
    """Images converted to PNG because TensorFlow cannot decode their format, keyed by content hash."""
    return home() / "converted"


def data_dir() -> Path:
    """Datasets fetched from package registries (`tlkeras.datasets`)."""
    return home() / "data"


def user_registry_dir() -> Path:
    """Where `tlkeras registry add` writes its entries."""
    return home() / "registry"
