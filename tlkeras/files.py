"""Writing files so that a kill at any moment leaves the old file or the new one, never half of either,
and hashing them. Every file tlkeras writes goes through here."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """str: The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes `data` to a temporary file beside `path`, flushes it to disk and renames it onto `path`.

    Example:
    >>> write_bytes("runs/a/labels.json", b"[]")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o644)  # mkstemp makes 0600 files; what tlkeras writes is for the user's other tools too
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically writes UTF-8 text (see `write_bytes`)."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 1) -> Path:
    """Atomically writes `value` as JSON, with a final newline."""
    return write_text(path, json.dumps(value, indent=indent, default=str) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path beside `path` for a library that writes files itself (Keras, h5py,
    matplotlib); on success the file is renamed onto `path`, on failure it is removed.

    Example:
    >>> with atomic_path("runs/a/model.keras") as tmp:
    ...     model.save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the suffix: Keras picks the format from it (.keras, .weights.h5).
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".weights.h5") else path.suffix
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        if tmp.is_file():  # libraries close their files but rarely sync them
            with open(tmp, "rb") as stream:
                os.fsync(stream.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def is_temporary(path: str | os.PathLike) -> bool:
    """True for the temporary files `write_bytes` and `atomic_path` leave behind when a process is killed
    mid-write (a leading dot and `.tmp` in the name): stale once no writer runs."""
    name = Path(path).name
    return name.startswith(".") and ".tmp" in name


def writable_dir(path: str | os.PathLike, what: str, fix: str) -> Path:
    """Path: `path` as a folder that exists (created if missing) and can be written to.

    Args:
        path: str. The folder.
        what: str. What the folder is for, for the message (e.g. "output folder").
        fix: str. How to choose another, for the message (e.g. "--set output_dir=runs/new").

    Raises:
        TlkerasError: it cannot be created or written (a file in the way, no permission, read-only disk).
    """
    from tlkeras.errors import TlkerasError

    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise TlkerasError(f"cannot create the {what} {path}: a file of that name is in the way; {fix}. "
                           f"Received: {path}") from None
    except OSError as err:
        raise TlkerasError(f"cannot create the {what} {path} ({err.strerror}); {fix}. Received: {path}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise TlkerasError(f"cannot write into the {what} {path} (permission denied); {fix}. Received: {path}")
    return path


def is_plain_name(name: str) -> bool:
    """bool: whether `name` is a single folder name that stays inside its parent: not empty, no path
    separator, no leading dot (so neither "." nor ".."), not a number (numbers name versions and runs)."""
    return bool(name) and not ("/" in name or "\\" in name or "\0" in name or name.startswith(".")
                               or name.isdigit() or name != name.strip())
