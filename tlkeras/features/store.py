"""A per-example store of frozen-backbone features, keyed by each example's content.

Layout, under `$TLKERAS_HOME/features/<extractor key>/`:

    chunks/<keys digest>-<data digest>.npy        up to `chunk_rows` feature rows, (rows, dim), memory-mappable
    chunks/<keys digest>-<data digest>.keys.json  the example keys of those rows, in order, and the digests
    index.json                                    every chunk's keys and the file stats it was verified at
    views/<keys digest>.npy (+ .json)             row-ordered copies that `view` assembles for one key list

A chunk is written as its `.npy` first, then its `.keys.json`, each to a temporary name and renamed, so a
chunk exists (is listed) only once both are whole. Its name holds the digests of its keys and of its
`.npy` bytes, so a sidecar can be checked against its own name and two runs that compute the same rows
write the same names. Nothing is ever rewritten in place: concurrent writers at worst both write a chunk.

The chunk files are the truth; `index.json` is a cache of them. It is rebuilt from the sidecars when lost
or stale, and it is never trusted beyond them: a chunk is checked in full (header, size, key count and
order, sha256 of its bytes) the first time this store sees it and again whenever either file's size,
modification time or inode changes; a chunk that fails is deleted and its rows count as missing. Changes
that keep a file's stat are found by `verify()`, which rereads everything.

Example:
>>> store = FeatureStore(extractor_key(backbone="efficientnet_lite0_imagenet", image_size=[224, 224]))
>>> keys = [content_key_of_file(p) for p in paths]
>>> store.lookup(keys).mean()  # the fraction already extracted
>>> store.write(keys[:2], features[:2])
>>> store.read(keys[:2]).shape
(2, 1280)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlkeras import files, paths
from tlkeras.errors import TlkerasError

CHUNK_ROWS = 4096
FORMAT = 1
# Views (row-ordered copies for one key list) kept per extractor, newest first; older ones are deleted.
MAX_VIEWS = 4
_EXTRACTOR_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SIDECAR = ".keys.json"
_HASH_BLOCK = 1 << 22
_READ_BLOCK = 1 << 20
_VIEW_BLOCK_ROWS = 1024
# Temporary files and half-written chunks (a `.npy` without its sidecar) older than this are debris of a
# killed run; younger ones may belong to a writer that is still at work.
_DEBRIS_SECONDS = 3600


class MissingFeaturesError(TlkerasError, KeyError):
    """Some requested keys have no features in the store (never written, or their chunk was damaged)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def content_key_of_file(path: str | os.PathLike) -> str:
    """str: The sha256 hex digest of a file's bytes, read in blocks: the same bytes under any path or name
    give the same key, and any change to them gives another.

    Unbuffered reads (`os.read`) make this ~3.5x faster than a buffered `open` for small files, whose
    cost is the system calls, not the hashing: 20,000 Fashion-MNIST PNGs hash in 0.27 s here.

    Example:
    >>> content_key_of_file("photos/cat.jpg")
    '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'
    """
    digest = hashlib.sha256()
    handle = os.open(path, os.O_RDONLY)
    try:
        while block := os.read(handle, _READ_BLOCK):
            digest.update(block)
    finally:
        os.close(handle)
    return digest.hexdigest()


def content_key_of_text(text: str) -> str:
    """str: The sha256 hex digest of a text's UTF-8 bytes (lone surrogates kept as they are)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def content_keys_of_files(file_paths: Iterable[str | os.PathLike], threads: int | None = None) -> list[str]:
    """list[str]: `content_key_of_file` of each path, in order.

    Args:
        file_paths: iterable of paths.
        threads: int. Reader threads. Hashing large files releases the GIL, so 4 threads hash a folder of
            1 MB photos about 1.6x faster here; for small files (Fashion-MNIST's 300-byte PNGs, 30 KB
            JPEGs) threads only add overhead. Defaults to None: 4 when the first files average 256 KiB
            or more, else 1.
    """
    file_paths = list(file_paths)
    if threads is None:
        sample = file_paths[:16]
        mean_size = sum(os.path.getsize(p) for p in sample) / max(1, len(sample))
        threads = 4 if mean_size >= 256 * 1024 else 1
    if threads <= 1 or len(file_paths) < 8:
        return [content_key_of_file(p) for p in file_paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(content_key_of_file, file_paths, chunksize=16))


def extractor_key(**parts) -> str:
    """str: A stable 32-hex-digit hash of everything that determines the features (backbone name,
    weights digest, preprocessing, input size or sequence length): the `extractor_key` of a store.

    Example:
    >>> extractor_key(backbone="efficientnet_lite0_imagenet", weights_sha256="57934424...", image_size=[64, 64])
    '5d0c...'
    """
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def keys_digest(keys: Sequence[str]) -> str:
    """str: The sha256 hex digest of a key list (order matters): of the keys, each followed by a line break."""
    if not keys:
        return hashlib.sha256(b"").hexdigest()
    return hashlib.sha256(("\n".join(keys) + "\n").encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class _Chunk:
    name: str
    keys: tuple[str, ...]
    dim: int
    dtype: str
    sha256: str
    npy_stat: tuple[int, int, int]
    sidecar_stat: tuple[int, int, int]

    def record(self) -> dict:
        return {"keys": list(self.keys), "dim": self.dim, "dtype": self.dtype, "sha256": self.sha256,
                "npy_stat": list(self.npy_stat), "sidecar_stat": list(self.sidecar_stat)}


class FeatureStore:
    """Feature rows of examples, keyed by content, for one extractor (backbone + weights + preprocessing).

    Args:
        extractor_key: str. The caller's hash of whatever determines the features (see `extractor_key()`):
            letters, digits, `.`, `_`, `-`, at most 128 characters. A new key is a new, empty store.
        root: str. Folder of all stores. Defaults to `$TLKERAS_HOME/features`.
        chunk_rows: int. Rows per chunk file that `write` makes. Defaults to 4096.

    Example:
    >>> store = FeatureStore("5d0c9a...")
    >>> missing = ~store.lookup(keys)
    """

    def __init__(self, extractor_key: str, root: str | os.PathLike | None = None, chunk_rows: int = CHUNK_ROWS):
        if not isinstance(extractor_key, str) or not _EXTRACTOR_KEY.fullmatch(extractor_key):
            raise TlkerasError("extractor_key must be 1-128 letters, digits, '.', '_' or '-' starting with a "
                               f"letter or digit: hash the extractor's parts with extractor_key(...). "
                               f"Received: extractor_key={extractor_key!r}")
        if int(chunk_rows) < 1:
            raise TlkerasError(f"chunk_rows must be at least 1. Received: chunk_rows={chunk_rows}")
        self.extractor_key = extractor_key
        self.directory = Path(root if root is not None else paths.features_dir()) / extractor_key
        self.chunk_rows = int(chunk_rows)
        self.dim: int | None = None
        self.dtype: np.dtype | None = None
        self._chunks: dict[str, _Chunk] = {}
        # key -> chunk number << 32 | row: one int per key, not a tuple (this map is most of the memory the
        # store needs per example).
        self._where: dict[str, int] = {}
        self._names: list[str] = []  # chunk number -> name
        self._index_dirty = False
        self.damaged: list[str] = []  # names of the chunks this store found damaged and deleted
        self.refresh()

    # -- paths -----------------------------------------------------------------------------------------
    @property
    def chunks_dir(self) -> Path:
        return self.directory / "chunks"

    @property
    def views_dir(self) -> Path:
        return self.directory / "views"

    @property
    def index_path(self) -> Path:
        return self.directory / "index.json"

    def _npy(self, name: str) -> Path:
        return self.chunks_dir / f"{name}.npy"

    def _sidecar(self, name: str) -> Path:
        return self.chunks_dir / f"{name}{_SIDECAR}"

    # -- queries ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """int: Distinct keys with features."""
        return len(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def keys(self) -> list[str]:
        """list[str]: Every key with features, in no particular order."""
        return list(self._where)

    @property
    def chunk_names(self) -> list[str]:
        return sorted(self._chunks)

    def lookup(self, keys: Sequence[str]) -> np.ndarray:
        """np.ndarray: A bool mask, True where the key has features in the store."""
        where = self._where
        return np.fromiter((key in where for key in keys), dtype=bool, count=len(keys))

    def read(self, keys: Sequence[str], out: np.ndarray | None = None) -> np.ndarray:
        """Returns the features of `keys`, one row per key in their order (repeats allowed).

        Rows are gathered chunk by chunk from memory maps, so the memory this takes is `out` itself.

        Args:
            keys: sequence of str.
            out: np.ndarray. An array of shape (len(keys), dim) to fill. Defaults to a new one.

        Raises:
            MissingFeaturesError: when a key has no features, or its chunk turns out damaged (it is then
                deleted, so computing the missing rows and reading again succeeds).
        """
        keys = list(keys)
        where = self._where
        located = np.fromiter((where.get(key, -1) for key in keys), dtype=np.int64, count=len(keys))
        absent = np.flatnonzero(located < 0)
        if len(absent):
            raise MissingFeaturesError(f"{len(absent)} of {len(keys)} keys have no features in {self.directory}; "
                                       f"compute them first (cached_features does). Received: first missing "
                                       f"key {keys[absent[0]]!r}")
        if self.dim is None:  # no keys at all
            return out if out is not None else np.empty((0, 0), np.float32)
        if out is None:
            out = np.empty((len(keys), self.dim), self.dtype)
        elif out.shape != (len(keys), self.dim):
            raise TlkerasError(f"out must have shape {(len(keys), self.dim)}. Received: out.shape={out.shape}")
        numbers, all_rows = located >> 32, located & 0xFFFFFFFF
        order = np.argsort(numbers, kind="stable")
        bounds = np.flatnonzero(np.diff(numbers[order])) + 1
        for group in np.split(order, bounds):
            name = self._names[int(numbers[group[0]])]
            positions, rows = group, all_rows[group]
            chunk = self._open(name)
            p0, r0, n = positions[0], rows[0], len(rows)
            if positions[-1] - p0 == n - 1 and rows[-1] - r0 == n - 1 and \
                    np.all(np.diff(positions) == 1) and np.all(np.diff(rows) == 1):
                out[p0:p0 + n] = chunk[r0:r0 + n]  # a run of rows in order: one copy, no temporary
            else:
                out[positions] = chunk[rows]
            del chunk  # unmap now: the pages it touched leave this process's resident set
        return out

    # -- writing ---------------------------------------------------------------------------------------
    def write(self, keys: Sequence[str], features: np.ndarray) -> list[str]:
        """Stores `features[i]` as the features of `keys[i]`, in chunks of at most `chunk_rows` rows.

        A repeated key keeps its first row. Keys already in the store are written again (the caller
        decides what to compute; `cached_features` computes only what is missing).

        Args:
            keys: sequence of str. Content keys: non-empty, without line breaks.
            features: np.ndarray. Shape (len(keys), dim); stored in the store's dtype (the first write's).

        Returns:
            The names of the chunks written.
        """
        keys = list(keys)
        _check_keys(keys)
        features = np.asarray(features)
        if features.ndim != 2 or len(features) != len(keys):
            raise TlkerasError(f"features must be a 2-D array with one row per key ({len(keys)}). "
                               f"Received: features.shape={features.shape}")
        if self.dim is not None and features.shape[1] != self.dim:
            raise TlkerasError(f"this store holds {self.dim}-d features: a different extractor needs a different "
                               f"extractor_key. Received: features.shape={features.shape}")
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        if len(first) < len(keys):
            keys = list(first)
            features = features[np.fromiter(first.values(), dtype=np.int64, count=len(first))]
        dtype = self.dtype if self.dtype is not None else features.dtype
        names = []
        for start in range(0, len(keys), self.chunk_rows):
            rows = np.ascontiguousarray(features[start:start + self.chunk_rows], dtype=dtype)
            names.append(self._write_chunk(keys[start:start + self.chunk_rows], rows))
        return names

    def _write_chunk(self, keys: list[str], rows: np.ndarray) -> str:
        header = _npy_header(rows)
        data_digest = hashlib.sha256(header)
        data_digest.update(memoryview(rows).cast("B"))
        sha256 = data_digest.hexdigest()
        digest_of_keys = keys_digest(keys)
        name = f"{digest_of_keys[:16]}-{sha256[:16]}"
        self.chunks_dir.mkdir(parents=True, exist_ok=True)
        _write_npy(self._npy(name), header, rows)
        files.write_json(self._sidecar(name), {"format": FORMAT, "keys_sha256": digest_of_keys, "sha256": sha256,
                                               "rows": len(keys), "dim": int(rows.shape[1]),
                                               "dtype": rows.dtype.str, "keys": keys}, indent=None)
        chunk = _Chunk(name, tuple(keys), int(rows.shape[1]), rows.dtype.str, sha256,
                       _stat(self._npy(name)), _stat(self._sidecar(name)))
        self._add(chunk)
        self._index_dirty = True
        return name

    # -- consistency -----------------------------------------------------------------------------------
    def refresh(self, save_index: bool = True) -> int:
        """Brings this store up to date with the folder: adds chunks other processes wrote, drops chunks
        that disappeared, checks in full any chunk not seen before or whose files changed (a damaged one
        is deleted), and rebuilds `index.json` if it was missing or stale.

        Args:
            save_index: bool. Rewrite `index.json` when it changed. Defaults to True.

        Returns:
            The number of chunks added.
        """
        if not self.chunks_dir.is_dir():
            self._reset({})
            return 0
        known = self._chunks or self._load_index()
        names, debris = set(), []
        for entry in os.scandir(self.chunks_dir):
            if entry.name.endswith(_SIDECAR) and not entry.name.startswith("."):
                names.add(entry.name[: -len(_SIDECAR)])
            elif entry.name.startswith(".") or entry.name.endswith(".npy"):
                debris.append(entry)
        accepted: dict[str, _Chunk] = {}
        verified = 0
        for name in sorted(names):
            chunk = known.get(name)
            try:
                if chunk is None or _stat(self._npy(name)) != chunk.npy_stat or \
                        _stat(self._sidecar(name)) != chunk.sidecar_stat:
                    chunk = self._verify(name)
                    verified += 1
            except FileNotFoundError:
                continue  # deleted meanwhile (by another process that found it damaged)
            if chunk is not None:
                accepted[name] = chunk
        added = len(accepted.keys() - self._chunks.keys())
        if verified or accepted.keys() != self._chunks.keys():
            self._reset(accepted)
        if verified or accepted.keys() != known.keys():
            self._index_dirty = True
        if self._index_dirty and save_index:
            self.save_index()
        self._sweep(debris, names)
        return added

    def _reset(self, chunks: dict[str, _Chunk]) -> None:
        """Rebuilds the key map from `chunks`. The store's dim and dtype are kept if known, else they are
        those of most rows; chunks of another dim or dtype (another extractor under the same key, a
        caller's bug) are ignored, not deleted."""
        if self.dim is None and chunks:
            votes: dict[tuple[int, str], int] = {}
            for chunk in chunks.values():
                votes[chunk.dim, chunk.dtype] = votes.get((chunk.dim, chunk.dtype), 0) + len(chunk.keys)
            dim, dtype = max(votes, key=votes.get)
            self.dim, self.dtype = dim, np.dtype(dtype)
        self._chunks, self._where, self._names = {}, {}, []
        for name in sorted(chunks):
            if self._fits(chunks[name]):
                self._add(chunks[name])

    def verify(self) -> list[str]:
        """Rereads and checks every chunk in full (sha256 of its bytes too), deleting damaged ones.

        Returns:
            The names of the chunks found damaged.
        """
        before = len(self.damaged)
        for name in list(self._chunks):
            try:
                chunk = self._verify(name)
            except FileNotFoundError:
                chunk = None
            if chunk is None:
                self._forget(name)
        self.refresh()
        return self.damaged[before:]

    def save_index(self) -> None:
        """Writes `index.json` (atomically) from the chunks this store knows, streamed to the file so that
        no copy of it is held in memory."""
        if not self._chunks and not self.index_path.exists():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        index = {"format": FORMAT, "chunks": {name: chunk.record() for name, chunk in sorted(self._chunks.items())}}
        with files.atomic_path(self.index_path) as tmp:
            with open(tmp, "w", encoding="utf-8") as stream:
                json.dump(index, stream)
                stream.flush()
                os.fsync(stream.fileno())
        self._index_dirty = False

    def _load_index(self) -> dict[str, _Chunk]:
        try:
            index = json.loads(self.index_path.read_text())
            if index.get("format") != FORMAT:
                return {}
            return {name: _Chunk(name, tuple(r["keys"]), int(r["dim"]), str(r["dtype"]), str(r["sha256"]),
                                 tuple(r["npy_stat"]), tuple(r["sidecar_stat"]))
                    for name, r in index["chunks"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}  # lost or damaged: every chunk is checked from its own files instead

    def _verify(self, name: str) -> _Chunk | None:
        """The chunk `name` checked in full against its sidecar and its name; None (and deleted) if damaged.

        Raises FileNotFoundError when its sidecar vanished (a concurrent delete), so it is skipped.
        """
        sidecar_path, npy_path = self._sidecar(name), self._npy(name)
        sidecar_stat = _stat(sidecar_path)
        try:
            meta = json.loads(sidecar_path.read_text())
            keys = meta["keys"]
            ok = (meta.get("format") == FORMAT and isinstance(keys, list) and len(keys) == meta["rows"]
                  and all(isinstance(k, str) for k in keys) and keys_digest(keys) == meta["keys_sha256"]
                  and name == f"{meta['keys_sha256'][:16]}-{meta['sha256'][:16]}")
            if ok:
                npy_stat = _stat(npy_path)
                shape, dtype, offset = _read_npy_header(npy_path)
                ok = (shape == (len(keys), meta["dim"]) and dtype.str == meta["dtype"]
                      and npy_stat[0] == offset + dtype.itemsize * int(np.prod(shape))
                      and files.sha256_file(npy_path, _HASH_BLOCK) == meta["sha256"])
        except FileNotFoundError:
            if not sidecar_path.exists():
                raise
            ok = False  # a sidecar without its .npy
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            self._delete(name)
            return None
        return _Chunk(name, tuple(keys), int(meta["dim"]), str(meta["dtype"]), str(meta["sha256"]),
                      npy_stat, sidecar_stat)

    def _fits(self, chunk: _Chunk) -> bool:
        return self.dim is None or (chunk.dim == self.dim and chunk.dtype == self.dtype.str)

    def _open(self, name: str) -> np.ndarray:
        """A read-only memory map of chunk `name`, after checking its files did not change since they were
        verified (else they are verified again); a damaged chunk is deleted and forgotten, and
        MissingFeaturesError raised."""
        chunk = self._chunks[name]
        deleted = False
        try:
            if _stat(self._npy(name)) != chunk.npy_stat or _stat(self._sidecar(name)) != chunk.sidecar_stat:
                fresh = self._verify(name)
                deleted = fresh is None
                if fresh is None or fresh.keys != chunk.keys:
                    raise ValueError("changed")
                self._chunks[name] = fresh
                self._index_dirty = True
            array = np.load(self._npy(name), mmap_mode="r", allow_pickle=False)
            if array.shape != (len(chunk.keys), self.dim) or array.dtype != self.dtype:
                raise ValueError("shape")
            return array
        except (OSError, ValueError):
            self._forget(name)
            if not deleted:
                self._delete(name)
            raise MissingFeaturesError(f"chunk {name} of {self.directory} was damaged and has been deleted; "
                                       "its rows must be computed again. Received: "
                                       f"{len(chunk.keys)} rows lost") from None

    def _add(self, chunk: _Chunk) -> None:
        if self.dim is None:
            self.dim, self.dtype = chunk.dim, np.dtype(chunk.dtype)
        self._chunks[chunk.name] = chunk
        base = len(self._names) << 32
        self._names.append(chunk.name)
        setdefault = self._where.setdefault
        for row, key in enumerate(chunk.keys):
            setdefault(key, base | row)

    def _forget(self, name: str) -> None:
        if self._chunks.pop(name, None) is None:
            return
        # Rebuilt, because the same keys may sit in another chunk (two runs computed them).
        self._reset(dict(self._chunks))
        self._index_dirty = True

    def _delete(self, name: str) -> None:
        self.damaged.append(name)
        # The sidecar first: a chunk without it is invisible, so no one reads the .npy meanwhile.
        for path in (self._sidecar(name), self._npy(name)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _sweep(self, debris, names: set[str]) -> None:
        import time

        now = time.time()
        for entry in debris:
            stem = entry.name[:-4] if entry.name.endswith(".npy") else None
            if stem in names:
                continue
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > _DEBRIS_SECONDS:
                    os.unlink(entry.path)

    # -- views -----------------------------------------------------------------------------------------
    def view(self, keys: Sequence[str], block_rows: int | None = None) -> np.ndarray:
        """Returns the features of `keys` as a read-only memory map of one file, rows in the order of keys.

        The file, `views/<digest of the key list>.npy`, is assembled `block_rows` rows at a time
        (default: 1024 or `chunk_rows` if smaller, so memory stays bounded whatever len(keys)) and kept for the next call with the same keys; the
        `MAX_VIEWS` most recently used views are kept. A view is a copy of verified chunks, flushed to disk
        before it is renamed into place; it is reused while its size, modification time and inode are
        those it was written with, and assembled again otherwise. Reading the map pages rows in from disk
        as they are touched; `np.array(view)` copies it all into memory.

        Raises:
            MissingFeaturesError: as `read`.
        """
        keys = list(keys)
        block_rows = int(block_rows or min(self.chunk_rows, _VIEW_BLOCK_ROWS))
        digest = keys_digest(keys)
        path, meta_path = self.views_dir / f"{digest[:32]}.npy", self.views_dir / f"{digest[:32]}.json"
        reused = self._open_view(path, meta_path, digest, len(keys))
        if reused is not None:
            return reused
        if len(keys) and self.dim is None:
            self.read(keys[:1])  # raises MissingFeaturesError
        dim, dtype = (self.dim, self.dtype) if self.dim is not None else (0, np.dtype(np.float32))
        header = _npy_header_for((len(keys), dim), dtype)
        self.views_dir.mkdir(parents=True, exist_ok=True)
        with files.atomic_path(path) as tmp:
            with open(tmp, "wb") as stream:
                stream.write(header)
                block = np.empty((min(block_rows, len(keys)), dim), dtype)
                for start in range(0, len(keys), block_rows):
                    part = block[: len(keys[start:start + block_rows])]
                    self.read(keys[start:start + block_rows], out=part)
                    stream.write(memoryview(part).cast("B"))
                stream.flush()
                os.fsync(stream.fileno())
        files.write_json(meta_path, {"format": FORMAT, "keys_sha256": digest, "rows": len(keys), "dim": dim,
                                     "stat": list(_stat(path))})
        self._evict_views(keep=path)
        return np.load(path, mmap_mode="r", allow_pickle=False)

    def _open_view(self, path: Path, meta_path: Path, digest: str, rows: int) -> np.ndarray | None:
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("keys_sha256") != digest or meta.get("rows") != rows:
                return None
            if tuple(meta["stat"]) != _stat(path):
                return None  # changed since it was written: assemble it again from the verified chunks
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if array.shape != (rows, meta["dim"]) or (rows and array.dtype != self.dtype):
                return None
            os.utime(meta_path)  # most recently used
            return array
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _evict_views(self, keep: Path) -> None:
        metas = sorted(self.views_dir.glob("*.json"), key=lambda p: _mtime(p), reverse=True)
        for meta in metas[MAX_VIEWS:]:
            if meta.with_suffix(".npy") == keep:
                continue
            for path in (meta, meta.with_suffix(".npy")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _check_keys(keys: list[str]) -> None:
    for key in keys:
        if not isinstance(key, str) or not key or "\n" in key:
            raise TlkerasError("keys must be non-empty strings without line breaks (content_key_of_file / "
                               f"content_key_of_text make them). Received: key={key!r}")


def _stat(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _npy_header(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, np.lib.format.header_data_from_array_1_0(array))
    return buffer.getvalue()


def _npy_header_for(shape: tuple[int, int], dtype: np.dtype) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue()


def _read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    with open(path, "rb") as stream:
        version = np.lib.format.read_magic(stream)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(stream)
        if fortran:
            raise ValueError("fortran order")
        return tuple(shape), dtype, stream.tell()


def _write_npy(path: Path, header: bytes, rows: np.ndarray) -> None:
    with files.atomic_path(path) as tmp:
        with open(tmp, "wb") as stream:
            stream.write(header)
            stream.write(memoryview(rows).cast("B"))
            stream.flush()
            os.fsync(stream.fileno())
