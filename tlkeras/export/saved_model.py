"""Versioned, atomic SavedModel writing in TF Serving's layout, and the ops a SavedModel needs.

TF Serving watches `<base>/<name>/` and loads integer-named subfolders. A version is written whole into
`<base>/<name>/.tmp-<random>/` (a name TF Serving ignores) and renamed into place, so the server never
sees a half-written version.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from tlkeras import files
from tlkeras.errors import TlkerasError

TMP_PREFIX = ".tmp-"
LOCK_FILE = ".export.lock"


def existing_versions(model_dir: str | Path) -> list[int]:
    """list of int: The integer versions under `model_dir`, ascending. Temporary folders are skipped."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_dir: str | Path) -> int:
    """int: One more than the largest existing version, or 1 for a new model."""
    versions = existing_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def write_version(model_dir: str | Path, write: Callable[[Path, int], None], version: int | None = None) -> Path:
    """Path: Calls `write(tmp_dir, version)` and moves the result to `model_dir/<version>` in one rename.

    On any failure the temporary folder is removed and nothing appears under `model_dir`.

    Args:
        model_dir: str or Path. `<base_dir>/<name>`; created if missing.
        write: callable. Fills the (empty, existing) folder it is given for the version it is given.
        version: int. The version to write; it must not exist. Defaults to max existing + 1.

    Raises:
        TlkerasError: `version` already exists, or is not a positive int.
    """
    model_dir = Path(model_dir)
    if version is not None and (not isinstance(version, int) or version < 1):
        raise TlkerasError(f"version must be a positive integer. Received: version={version!r}")
    files.writable_dir(model_dir, "model folder", "choose another --base-dir or --name")
    # The lock serialises concurrent exports of one model, so each gets its own version number; the
    # rename is what makes a version appear whole to TF Serving.
    with _exclusive_lock(model_dir / LOCK_FILE):
        version = version if version is not None else next_version(model_dir)
        target = model_dir / str(version)
        if target.exists():
            raise TlkerasError(f"version {version} already exists; omit --version to take the next one or "
                               f"delete it. Received: path={str(target)!r}")
        tmp_dir = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=model_dir))
        try:
            write(tmp_dir, version)
            os.rename(tmp_dir, target)
        finally:
            if tmp_dir.exists():
                shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock, the rename is still atomic
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def save_signatures(path: str | Path, functions: Mapping[str, Callable], tracked=()) -> None:
    """Writes a SavedModel holding `functions` as signatures, via `keras.export.ExportArchive`.

    Args:
        path: str or Path. Output folder.
        functions: dict of signature name -> tf.function with an `input_signature`, returning a dict.
        tracked: list of layers or TF trackables holding non-variable resources the functions use, such
            as a tokenizer's lookup tables. Do not pass the model: the endpoints capture its variables,
            and tracking it too stores every weight twice (keras-team/keras#23553).
    """
    from keras.export import ExportArchive

    archive = ExportArchive()
    for resource in tracked:
        archive.track(resource)
    for name, function in functions.items():
        archive.add_endpoint(name, function)
    archive.write_out(str(path), verbose=False)


def graph_ops(saved_model_dir: str | Path) -> set[str]:
    """set of str: Every op type in a SavedModel's graphs, the function library included."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    ops = set()
    for meta_graph in saved_model.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


def non_core_ops(saved_model_dir: str | Path) -> list[str]:
    """list of str: Op types in a SavedModel that core TensorFlow does not define, sorted.

    These come from add-on libraries (for tokenizers, tensorflow-text: "CaseFoldUTF8",
    "FastWordpieceTokenizeWithOffsets", "RegexSplitWithOffsets", "TFText>RoundRobinTrim") and must be
    linked into whatever server loads the model.
    """
    import tensorflow as tf

    # tf.raw_ops lists the ops compiled into core TensorFlow; ops loaded from add-on .so files are
    # registered at run time but never appear there.
    return sorted(op for op in graph_ops(saved_model_dir) if not hasattr(tf.raw_ops, op))
