"""Extracting only what the store lacks, in chunk-sized pieces, with bounded memory.

`cached_features` looks the keys up and hands the missing examples to the caller's `compute` in one
call, whose batches it cuts into pieces of `store.chunk_rows` rows; each piece is written as a chunk as
soon as it is full, from one reused buffer, so memory does not grow with N. A kill loses at most the piece
in progress; a rerun resumes.

Two processes extracting overlapping data at once split the work: before a piece is filled its keys are
claimed with a small file (`claims/<digest>.claim`, created exclusively, refreshed while computing). At a
piece boundary, a piece that another live process has claimed, or already written, is skipped: the
stream is closed and `compute` is called again on the pieces after it. Skipped claimed pieces are
revisited at the end, when they are usually done; if one is not (the other process is slower, or died
without a trace), it is computed again, so at worst both compute a chunk. Without contention `compute`
is called exactly once.

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
import sys
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
        compute: callable. `compute(indices)` gets an increasing int64 array of positions into `keys`
            (the missing examples, each key once) and yields np.ndarray batches of shape (b, dim) for those
            examples, in that order, any b. It is called once; again on the remaining examples when
            another process is extracting the same ones (its generator is then closed early), or on the
            rows of a chunk found damaged while reading.
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
            features = store.view(keys) if mmap else store.read(keys)
            release_free_heap()
            return features
        except MissingFeaturesError:
            if attempt == _ATTEMPTS - 1:
                raise  # a chunk was damaged while we read, again and again: a failing disk
    raise AssertionError("unreachable")


def release_free_heap() -> None:
    """Hands memory the C heap holds but no longer uses back to the OS (glibc's `malloc_trim`; a no-op
    elsewhere). Measured on the cache scaling bench: without it, freed chunk-sized and batch-sized buffers
    interleaved with TensorFlow's threads' allocations stay resident, and peak RSS crept up by ~50 MiB
    from 10,000 to 60,000 images although nothing was held."""
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


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
    buffer = _Buffer(store.chunk_rows)
    with _progress(progress, len(missing)) as advance:
        deferred = _extract_pieces(store, keys, pieces, compute, advance, buffer, defer=True)
        _extract_pieces(store, keys, deferred, compute, advance, buffer, defer=False)
    store.save_index()


def _extract_pieces(store, keys, pieces: list[np.ndarray], compute, advance, buffer, defer: bool) -> list:
    """Computes and writes `pieces` (position arrays of at most chunk_rows each), in one stream of
    `compute` while nothing interferes. At each piece boundary the store is refreshed: a piece another
    process finished, or (when `defer`) one it claimed, is skipped by closing the stream and starting a
    new one after it. Returns the deferred pieces."""
    deferred = []
    start = 0
    while start < len(pieces):
        store.refresh(save_index=False)
        first = None
        while start < len(pieces) and first is None:  # the first piece to do that no one else holds
            todo = _todo(store, keys, pieces[start])
            if not len(todo):
                advance(len(pieces[start]))
                start += 1
                continue
            first = _Claim(store, keys_digest([keys[i] for i in todo]))
            if not first.acquire() and defer:
                deferred.append(pieces[start])
                start += 1
                first = None
            elif first.owned and _written_meanwhile(store, [keys[i] for i in todo]):
                first.release()
                advance(len(pieces[start]))
                start += 1
                first = None
        if first is None:
            break
        todos = [todo] + [_todo(store, keys, piece) for piece in pieces[start + 1:]]
        stream = _Rows(compute(np.concatenate(todos)), int(sum(len(t) for t in todos)), buffer)
        try:
            restart = None
            for offset, todo in enumerate(todos):
                piece = pieces[start + offset]
                todo_keys = [keys[i] for i in todo]
                if offset:
                    store.refresh(save_index=False)
                    if not len(todo) or store.lookup(todo_keys).all():
                        advance(len(piece))
                        if len(todo):
                            restart = start + offset + 1  # its rows are next in the stream: skip them
                            break
                        continue
                    claim = _Claim(store, keys_digest(todo_keys))
                    if not claim.acquire() and defer:
                        deferred.append(piece)
                        restart = start + offset + 1
                        break
                    if claim.owned and _written_meanwhile(store, todo_keys):
                        claim.release()
                        advance(len(piece))
                        restart = start + offset + 1
                        break
                else:
                    claim = first
                try:
                    rows = stream.take(len(todo), claim.touch, advance)
                    advance(len(piece) - len(todo))
                    store.write(todo_keys, rows)
                    release_free_heap()
                finally:
                    claim.release()
            if restart is None:
                stream.finish()
                break
            start = restart
        finally:
            first.release()
            stream.close()
    return deferred


def _written_meanwhile(store, todo_keys: list[str]) -> bool:
    """After taking a claim: whether its previous holder wrote the piece and let go just before."""
    store.refresh(save_index=False)
    return bool(store.lookup(todo_keys).all())


def _todo(store, keys, piece: np.ndarray) -> np.ndarray:
    return piece[~store.lookup([keys[i] for i in piece])]


class _Buffer:
    """One chunk-sized row buffer, reused for every piece (allocating 20 MB per piece makes glibc's heap
    grow in steps that it does not give back)."""

    def __init__(self, rows: int):
        self.rows = rows
        self.array: np.ndarray | None = None

    def get(self, dim: int, dtype) -> np.ndarray:
        if self.array is None or self.array.shape[1] != dim or self.array.dtype != dtype:
            self.array = np.empty((self.rows, dim), dtype)
        return self.array


class _Rows:
    """Takes exactly n rows at a time from the batches `compute` yields, whose sizes need not line up with
    the pieces."""

    def __init__(self, batches, total: int, buffer: _Buffer):
        self._batches = iter(batches)
        self._source = batches
        self._left: np.ndarray | None = None
        self._total, self._taken = total, 0
        self._buffer = buffer

    def _next_batch(self) -> np.ndarray:
        try:
            batch = np.asarray(next(self._batches))
        except StopIteration:
            raise TlkerasError(f"compute yielded {self._taken} rows for {self._total} indices: it must yield one "
                               f"row per index, in order. Received: {self._taken} rows") from None
        if batch.ndim != 2:
            raise TlkerasError(f"compute must yield 2-D batches (rows, dim). Received: a batch of shape "
                               f"{batch.shape}")
        return batch

    def take(self, n: int, touch, advance) -> np.ndarray:
        out = None
        filled = 0
        while filled < n:
            if self._left is None or not len(self._left):
                self._left = self._next_batch()
            if out is None:
                out = self._buffer.get(self._left.shape[1], self._left.dtype)[:n]
            elif self._left.shape[1] != out.shape[1]:
                raise TlkerasError(f"compute yielded batches of different widths. Received: {out.shape[1]} "
                                   f"then {self._left.shape[1]}")
            k = min(n - filled, len(self._left))
            out[filled:filled + k] = self._left[:k]
            self._left = self._left[k:]
            filled += k
            self._taken += k
            advance(k)
            touch()
        return out

    def finish(self) -> None:
        """Checks that the stream holds no more rows than it was asked for."""
        extra = len(self._left) if self._left is not None else 0
        for batch in self._batches:
            extra += len(np.asarray(batch))
        if extra:
            raise TlkerasError(f"compute yielded {self._taken + extra} rows for {self._total} indices: it must "
                               f"yield one row per index. Received: {extra} rows too many")

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


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
