"""Extracting only what the store lacks, in chunk-sized pieces, with bounded memory.

`cached_features` looks the keys up, hands the missing examples to the caller's `compute` one piece of at
most `store.chunk_rows` examples at a time, writes each piece as a chunk as soon as it is full, and
returns the features of every key. A kill loses at most the piece in progress; a rerun resumes.

Two processes extracting overlapping data at once split the work: before a piece is computed its keys
are claimed with a small file (`claims/<digest>.claim`, created exclusively, refreshed while computing).
A process that finds a piece claimed by a live process moves on and comes back to it at the end, when it
is usually done; if it is not (the other process is slower, or died without a trace), it is computed
again, so at worst both compute a chunk.

Example:
>>> def compute(indices):  # the caller's pipeline over just those examples
...     ds = tf.data.Dataset.from_tensor_slices([paths[i] for i in indices]).map(load).batch(64)
...     for batch in ds:
...         yield backbone(batch, training=False).numpy()
>>> features = cached_features(store, keys, compute)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from tlkeras.errors import TlkerasError
from tlkeras.features.store import FeatureStore, MissingFeaturesError, keys_digest

# A claim untouched for this long is abandoned (its process hangs, or runs on another host and died).
CLAIM_STALE_SECONDS = 120.0
_ATTEMPTS = 3


def cached_features(
    store: FeatureStore,
    keys: Sequence[str],
    compute: Callable[[np.ndarray], Iterable[np.ndarray]],
    progress: bool = True,
    mmap: bool = True,
) -> np.ndarray:
    """Returns the features of `keys`, computing only those the store lacks.

    Args:
        store: FeatureStore. Where features live, for one extractor.
        keys: sequence of str. One content key per example (`content_key_of_file`, `content_key_of_text`);
            a key repeated (the same image twice) is computed once.
        compute: callable. `compute(indices)` gets an int64 array of positions into `keys` (at most
            `store.chunk_rows` of them, increasing) and yields np.ndarray batches of shape (b, dim) for
            those examples, in that order. It is called once per piece of missing examples, so it must
            not assume it sees them all at once.
        progress: bool. Show a progress bar of the examples extracted. Defaults to True.
        mmap: bool. Return a read-only memory map of a row-ordered file the store keeps
            (`FeatureStore.view`), so memory stays bounded however many keys; False returns an
            in-memory array. Defaults to True.

    Returns:
        np.ndarray of shape (len(keys), dim): row i holds the features of keys[i].

    Raises:
        TlkerasError: when `compute` yields more or fewer rows than it was asked for, or not 2-D arrays.
    """
    keys = list(keys)
    store.refresh()
    for attempt in range(_ATTEMPTS):
        missing = _missing_positions(store, keys)
        if missing.size:
            _extract(store, keys, missing, compute, progress)
        try:
            return store.view(keys) if mmap else store.read(keys)
        except MissingFeaturesError:
            if attempt == _ATTEMPTS - 1:
                raise  # a chunk was damaged while we read, again and again: a failing disk
    raise AssertionError("unreachable")


def _missing_positions(store: FeatureStore, keys: list[str]) -> np.ndarray:
    """Positions of the first occurrence of each key the store lacks, in order."""
    seen: set[str] = set()
    positions = []
    for i, key in enumerate(keys):
        if key not in store and key not in seen:
            seen.add(key)
            positions.append(i)
    return np.asarray(positions, dtype=np.int64)


def _extract(store, keys, missing: np.ndarray, compute, progress: bool) -> None:
    pieces = [missing[i:i + store.chunk_rows] for i in range(0, len(missing), store.chunk_rows)]
    with _progress(progress, len(missing)) as advance:
        deferred = []
        for piece in pieces:
            if not _extract_piece(store, keys, piece, compute, advance, defer=True):
                deferred.append(piece)
        for piece in deferred:
            _extract_piece(store, keys, piece, compute, advance, defer=False)
    store.save_index()


def _extract_piece(store, keys, piece: np.ndarray, compute, advance, defer: bool) -> bool:
    """Computes and writes the rows of `piece` the store still lacks; False if deferred to a claimant."""
    store.refresh(save_index=False)  # another process may have written some meanwhile
    todo = piece[~store.lookup([keys[i] for i in piece])]
    advance(len(piece) - len(todo))
    if not len(todo):
        return True
    piece_keys = [keys[i] for i in todo]
    claim = _Claim(store, keys_digest(piece_keys))
    if not claim.acquire() and defer:
        advance(-(len(piece) - len(todo)))  # counted again when the piece comes back
        return False
    try:
        rows = None
        filled = 0
        for batch in compute(todo):
            batch = np.asarray(batch)
            if batch.ndim != 2 or filled + len(batch) > len(todo):
                raise TlkerasError(f"compute must yield 2-D batches, {len(todo)} rows in all for the "
                                   f"{len(todo)} indices it was given. Received: a batch of shape "
                                   f"{batch.shape} after {filled} rows")
            if rows is None:
                rows = np.empty((len(todo), batch.shape[1]), batch.dtype)
            rows[filled:filled + len(batch)] = batch
            filled += len(batch)
            advance(len(batch))
            claim.touch()
        if filled != len(todo):
            raise TlkerasError(f"compute yielded {filled} rows for {len(todo)} indices: it must yield one row "
                               f"per index. Received: indices {todo[:5].tolist()}...")
        store.write(piece_keys, rows)
    finally:
        claim.release()
    return True


class _Claim:
    """An exclusive, expiring claim on a piece of work, as a file in the store's `claims/` folder."""

    def __init__(self, store: FeatureStore, digest: str):
        self.path = store.directory / "claims" / f"{digest[:32]}.claim"
        self.owned = False
        self._last_touch = 0.0

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}).encode()
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._abandoned():
                    return False
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)  # two processes may both take it over: both compute, no harm
                continue
            with os.fdopen(handle, "wb") as stream:
                stream.write(body)
            self.owned = True
            self._last_touch = time.monotonic()
            return True
        return False

    def _abandoned(self) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
            owner = json.loads(self.path.read_bytes() or b"{}")
        except (OSError, ValueError):
            return False  # just released, or being written: treat as held
        if age > CLAIM_STALE_SECONDS:
            return True
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            try:
                os.kill(owner["pid"], 0)
            except ProcessLookupError:
                return True  # its process is gone (killed mid-piece)
            except PermissionError:
                return False
        return False

    def touch(self) -> None:
        if self.owned and time.monotonic() - self._last_touch > 5:
            with contextlib.suppress(OSError):
                os.utime(self.path)
            self._last_touch = time.monotonic()

    def release(self) -> None:
        if self.owned:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.owned = False


@contextlib.contextmanager
def _progress(enabled: bool, total: int):
    """Yields `advance(n)`; draws a rich progress bar of examples extracted when `enabled`."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:,.0f} examples/s" if task.speed else "")

    with Progress(TextColumn("extracting features"), BarColumn(), MofNCompleteColumn(), Rate(),
                  TimeRemainingColumn()) as bar:
        task = bar.add_task("extract", total=total)
        yield lambda n: bar.advance(task, n)
