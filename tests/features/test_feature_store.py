"""The per-example feature store and `cached_features`: content keys, incremental extraction, damaged
chunks, concurrent writers, bounded memory and memory-mapped reads."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import time
import tracemalloc

import numpy as np
import pytest

from tlkeras.errors import TlkerasError
from tlkeras.features import (
    FeatureStore,
    MissingFeaturesError,
    cached_features,
    content_key_of_file,
    content_key_of_text,
    content_keys_of_files,
    extractor_key,
)

DIM = 8


def fake_features(keys, dim=DIM) -> np.ndarray:
    """A deterministic feature row per (hex digest) key, made of its bytes, so any row can be checked."""
    digests = np.frombuffer(b"".join(bytes.fromhex(k) for k in keys), np.uint8).reshape(len(keys), 32)
    return np.tile(digests.astype(np.float32) / 255, (1, -(-dim // 32)))[:, :dim]


class CountingCompute:
    """A `compute` that yields fake features in batches and records the keys it was asked for."""

    def __init__(self, keys, batch=7, dim=DIM, delay=0.0, fail_after_rows=None):
        self.keys, self.batch, self.dim, self.delay = keys, batch, dim, delay
        self.computed: list[str] = []
        self.calls = 0
        self.fail_after_rows = fail_after_rows

    def __call__(self, indices):
        self.calls += 1
        assert len(indices) and np.all(np.diff(indices) > 0)
        for start in range(0, len(indices), self.batch):
            part = [self.keys[i] for i in indices[start:start + self.batch]]
            if self.fail_after_rows is not None and len(self.computed) + len(part) > self.fail_after_rows:
                raise KeyboardInterrupt("killed")
            if self.delay:
                time.sleep(self.delay)
            self.computed.extend(part)
            yield fake_features(part, self.dim)


def text_keys(n, start=0):
    return [content_key_of_text(f"example {i}") for i in range(start, start + n)]


# -- content keys --------------------------------------------------------------------------------------
def test_content_key_of_file_is_the_sha256_of_the_bytes_wherever_the_file_is(tmp_path):
    a = tmp_path / "a" / "cat.png"
    a.parent.mkdir()
    a.write_bytes(b"\x89PNG" + bytes(range(256)) * 5000)
    b = tmp_path / "elsewhere" / "renamed.png"
    b.parent.mkdir()
    shutil.copy(a, b)
    assert content_key_of_file(a) == content_key_of_file(b) == hashlib.sha256(a.read_bytes()).hexdigest()
    b.write_bytes(b.read_bytes()[:-1] + b"\x00")
    assert content_key_of_file(b) != content_key_of_file(a)
    assert content_key_of_text("a cat") == hashlib.sha256(b"a cat").hexdigest() != content_key_of_text("a cat ")


def test_content_keys_of_files_threaded_matches_one_by_one(tmp_path):
    paths = []
    for i in range(300):
        path = tmp_path / f"{i}.bin"
        path.write_bytes(os.urandom(100 + i * 37))
        paths.append(path)
    assert content_keys_of_files(paths, threads=4) == [content_key_of_file(p) for p in paths]


def test_extractor_key_changes_with_any_part_and_is_a_valid_store_name(tmp_path):
    a = extractor_key(backbone="lite0", image_size=[64, 64])
    assert a == extractor_key(image_size=[64, 64], backbone="lite0")
    assert a != extractor_key(backbone="lite0", image_size=[96, 96])
    FeatureStore(a, root=tmp_path)
    with pytest.raises(TlkerasError, match="Received: extractor_key='../x'"):
        FeatureStore("../x", root=tmp_path)


# -- incremental extraction ----------------------------------------------------------------------------
def test_growing_the_set_by_ten_percent_computes_exactly_the_new_examples(tmp_path):
    keys = text_keys(500)
    first = CountingCompute(keys)
    features = cached_features(FeatureStore("e", root=tmp_path, chunk_rows=64), keys, first, progress=False)
    assert sorted(first.computed) == sorted(keys) and first.calls == 1  # one stream, cut into 8 chunks
    np.testing.assert_array_equal(features, fake_features(keys))

    new = text_keys(50, start=500)
    grown = keys + new
    order = np.random.default_rng(0).permutation(len(grown))  # the new ones spread among the old
    grown = [grown[i] for i in order]
    second = CountingCompute(grown)
    features = cached_features(FeatureStore("e", root=tmp_path, chunk_rows=64), grown, second, progress=False)
    assert sorted(second.computed) == sorted(new) and second.calls == 1
    np.testing.assert_array_equal(features, fake_features(grown))

    third = CountingCompute(grown)  # a rerun computes nothing and reuses the assembled view
    again = cached_features(FeatureStore("e", root=tmp_path, chunk_rows=64), grown, third, progress=False)
    assert third.calls == 0 and again.filename == features.filename


def test_files_keyed_by_content_hit_under_another_path_and_miss_when_changed_or_extractor_changes(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(30):
        (folder / f"{i}.png").write_bytes(os.urandom(500))
    paths = sorted(folder.iterdir())
    keys = content_keys_of_files(paths)
    cached_features(FeatureStore("lite0-64", root=tmp_path / "home"), keys, CountingCompute(keys), progress=False)

    moved = tmp_path / "copied"
    shutil.copytree(folder, moved)
    (moved / "3.png").rename(moved / "renamed.png")
    moved_keys = content_keys_of_files(sorted(moved.iterdir()))
    hit = CountingCompute(moved_keys)
    cached_features(FeatureStore("lite0-64", root=tmp_path / "home"), moved_keys, hit, progress=False)
    assert hit.calls == 0

    (moved / "7.png").write_bytes(os.urandom(500))
    changed_keys = content_keys_of_files(sorted(moved.iterdir()))
    miss = CountingCompute(changed_keys)
    cached_features(FeatureStore("lite0-64", root=tmp_path / "home"), changed_keys, miss, progress=False)
    assert miss.computed == [content_key_of_file(moved / "7.png")]

    other = CountingCompute(changed_keys)
    cached_features(FeatureStore("lite0-96", root=tmp_path / "home"), changed_keys, other, progress=False)
    assert sorted(other.computed) == sorted(changed_keys)


def test_a_repeated_key_is_computed_once_and_returned_at_each_position(tmp_path):
    keys = text_keys(20)
    with_repeats = keys + keys[:5] + [keys[3]]
    compute = CountingCompute(with_repeats)
    features = cached_features(FeatureStore("e", root=tmp_path), with_repeats, compute, progress=False, mmap=False)
    assert sorted(compute.computed) == sorted(keys)
    np.testing.assert_array_equal(features, fake_features(with_repeats))


def test_an_interrupted_run_keeps_its_finished_chunks_and_the_rerun_resumes(tmp_path):
    keys = text_keys(300)
    interrupted = CountingCompute(keys, fail_after_rows=150)  # killed in the third chunk
    with pytest.raises(KeyboardInterrupt):
        cached_features(FeatureStore("e", root=tmp_path, chunk_rows=64), keys, interrupted, progress=False)
    assert len(FeatureStore("e", root=tmp_path).chunk_names) == 2
    rerun = CountingCompute(keys)
    features = cached_features(FeatureStore("e", root=tmp_path, chunk_rows=64), keys, rerun, progress=False)
    assert sorted(rerun.computed) == sorted(keys[128:])
    np.testing.assert_array_equal(features, fake_features(keys))


def _extract_slowly(root, keys, chunk_rows, delay):
    cached_features(FeatureStore("e", root=root, chunk_rows=chunk_rows), keys,
                    CountingCompute(keys, batch=8, delay=delay), progress=False)


def test_a_killed_process_loses_at_most_its_current_chunk_and_leaves_no_claim_in_the_way(tmp_path):
    keys = text_keys(400)
    process = multiprocessing.get_context("spawn").Process(target=_extract_slowly, args=(tmp_path, keys, 32, 0.02))
    process.start()
    chunks = tmp_path / "e" / "chunks"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(chunks.glob("*.keys.json"))) < 3:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    written = len(list(chunks.glob("*.keys.json")))
    assert written >= 3 and list((tmp_path / "e" / "claims").glob("*.claim"))  # killed mid-piece
    rerun = CountingCompute(keys)
    start = time.monotonic()
    features = cached_features(FeatureStore("e", root=tmp_path, chunk_rows=32), keys, rerun, progress=False)
    assert time.monotonic() - start < 10  # the dead process's claim is taken over at once
    assert len(rerun.computed) <= len(keys) - 32 * written
    np.testing.assert_array_equal(features, fake_features(keys))


def test_compute_yielding_the_wrong_number_of_rows_is_an_error(tmp_path):
    keys = text_keys(10)

    def short(indices):
        yield fake_features([keys[i] for i in indices[:-1]])

    with pytest.raises(TlkerasError, match="yielded 9 rows for 10 indices"):
        cached_features(FeatureStore("e", root=tmp_path), keys, short, progress=False)
    with pytest.raises(TlkerasError, match="holds 8-d features"):
        store = FeatureStore("e", root=tmp_path)
        store.write(keys[:2], np.zeros((2, DIM)))
        store.write(keys[2:4], np.zeros((2, DIM + 1)))


# -- damaged chunks ------------------------------------------------------------------------------------
def _truncate(npy, sidecar):
    with open(npy, "r+b") as stream:
        stream.truncate(os.path.getsize(npy) - 5)


def _corrupt_header(npy, sidecar):
    with open(npy, "r+b") as stream:
        stream.write(b"\x93NUMPY\x01\x00garbage")


def _flip_data_byte(npy, sidecar):
    data = bytearray(npy.read_bytes())
    data[-3] ^= 0xFF
    npy.write_bytes(bytes(data))


def _drop_a_key(npy, sidecar):
    meta = json.loads(sidecar.read_text())
    meta["keys"] = meta["keys"][:-1]
    sidecar.write_text(json.dumps(meta))


def _swap_two_keys(npy, sidecar):
    meta = json.loads(sidecar.read_text())
    meta["keys"][0], meta["keys"][1] = meta["keys"][1], meta["keys"][0]
    sidecar.write_text(json.dumps(meta))


def _delete_data(npy, sidecar):
    npy.unlink()


DAMAGE = [_truncate, _corrupt_header, _flip_data_byte, _drop_a_key, _swap_two_keys, _delete_data]


@pytest.mark.parametrize("reopen", [True, False], ids=["new store", "open store"])
@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__.strip("_"))
def test_a_damaged_chunk_is_detected_and_recomputed_and_the_answer_stays_right(tmp_path, damage, reopen):
    keys = text_keys(200)
    store = FeatureStore("e", root=tmp_path, chunk_rows=64)
    cached_features(store, keys, CountingCompute(keys), progress=False)
    victim = sorted(store.chunk_names)[1]
    victim_keys = json.loads((store.chunks_dir / f"{victim}.keys.json").read_text())["keys"]
    time.sleep(0.01)  # a different modification time, as any later write has
    damage(store.chunks_dir / f"{victim}.npy", store.chunks_dir / f"{victim}.keys.json")
    shuffled = [keys[i] for i in np.random.default_rng(1).permutation(len(keys))]  # not the cached view
    rerun = CountingCompute(shuffled)
    store = FeatureStore("e", root=tmp_path, chunk_rows=64) if reopen else store
    features = cached_features(store, shuffled, rerun, progress=False)
    assert sorted(rerun.computed) == sorted(victim_keys)
    assert victim in store.damaged
    np.testing.assert_array_equal(features, fake_features(shuffled))
    assert FeatureStore("e", root=tmp_path).verify() == []


def test_a_lost_or_garbled_index_is_rebuilt_from_the_chunks_without_recomputing(tmp_path):
    keys = text_keys(150)
    store = FeatureStore("e", root=tmp_path, chunk_rows=64)
    cached_features(store, keys, CountingCompute(keys), progress=False)
    for damage in (lambda p: p.unlink(), lambda p: p.write_text("{not json")):
        damage(store.index_path)
        rerun = CountingCompute(keys[::-1])
        features = cached_features(FeatureStore("e", root=tmp_path, chunk_rows=64), keys[::-1], rerun,
                                   progress=False)
        assert rerun.calls == 0
        np.testing.assert_array_equal(features, fake_features(keys[::-1]))
        assert set(json.loads(store.index_path.read_text())["chunks"]) == set(store.chunk_names)


def test_a_damaged_view_is_rebuilt(tmp_path):
    keys = text_keys(100)
    store = FeatureStore("e", root=tmp_path)
    view = cached_features(store, keys, CountingCompute(keys), progress=False)
    path = view.filename
    del view
    time.sleep(0.01)
    with open(path, "r+b") as stream:
        stream.seek(-4, os.SEEK_END)
        stream.write(b"\xff\xff\xff\xff")
    again = cached_features(FeatureStore("e", root=tmp_path), keys, CountingCompute(keys), progress=False)
    np.testing.assert_array_equal(again, fake_features(keys))


# -- concurrent writers --------------------------------------------------------------------------------
def _writer(root, keys, barrier, results):
    compute = CountingCompute(keys, batch=16, delay=0.002)
    barrier.wait()
    features = cached_features(FeatureStore("e", root=root, chunk_rows=128), keys, compute, progress=False)
    results.put((len(compute.computed), bool(np.array_equal(features, fake_features(keys)))))


def _run_writers(root, key_sets):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(key_sets)), context.Queue()
    processes = [context.Process(target=_writer, args=(root, keys, barrier, results)) for keys in key_sets]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return outcomes


def test_two_processes_writing_overlapping_sets_at_once_leave_every_key_readable(tmp_path):
    keys = text_keys(3000)
    outcomes = _run_writers(tmp_path, [keys[:2000], keys[1000:]])
    assert all(correct for _, correct in outcomes)
    store = FeatureStore("e", root=tmp_path)
    assert store.verify() == [] and len(store) == 3000
    np.testing.assert_array_equal(store.read(keys), fake_features(keys))
    assert not list((tmp_path / "e" / "claims").glob("*.claim"))


def test_two_processes_extracting_the_same_set_split_the_work(tmp_path):
    keys = text_keys(2048)
    outcomes = _run_writers(tmp_path, [keys, keys])
    assert all(correct for _, correct in outcomes)
    computed = sum(n for n, _ in outcomes)
    # Claims let each take pieces the other has not; at worst both compute the piece left at the end.
    assert len(keys) <= computed <= len(keys) + 2 * 128
    np.testing.assert_array_equal(FeatureStore("e", root=tmp_path).read(keys), fake_features(keys))


# -- memory and memory maps ----------------------------------------------------------------------------
def _peak_traced_bytes(root, n, dim, chunk_rows):
    keys = text_keys(n)
    store = FeatureStore("e", root=root, chunk_rows=chunk_rows)
    compute = CountingCompute(keys, batch=64, dim=dim)
    tracemalloc.start()
    try:
        features = cached_features(store, keys, compute, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert features.shape == (n, dim) and isinstance(features, np.memmap)
    rows = np.random.default_rng(0).choice(n, 50, replace=False)
    np.testing.assert_array_equal(features[np.sort(rows)], fake_features([keys[i] for i in np.sort(rows)], dim))
    return peak


def test_extraction_memory_is_bounded_by_the_chunk_size_not_by_the_number_of_rows(tmp_path):
    dim, chunk_rows = 512, 256
    chunk_bytes = chunk_rows * dim * 4
    small = _peak_traced_bytes(tmp_path / "small", 2_000, dim, chunk_rows)
    large = _peak_traced_bytes(tmp_path / "large", 12_000, dim, chunk_rows)
    all_features_bytes = 12_000 * dim * 4  # 24 MiB: what holding the features would take
    # A few chunk-sized buffers, plus the key map (a few hundred bytes a key), never the features.
    assert large < 6 * chunk_bytes + 400 * 12_000 < all_features_bytes / 2, (small, large)
    assert large - small < 400 * (12_000 - 2_000), (small, large)


def test_the_memory_mapped_read_returns_exactly_what_was_written(tmp_path):
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float16, np.float64):
        keys = text_keys(1000)
        features = rng.standard_normal((1000, 33)).astype(dtype)
        store = FeatureStore(f"e-{np.dtype(dtype).name}", root=tmp_path, chunk_rows=300)
        assert len(store.write(keys, features)) == 4
        asked = [keys[i] for i in rng.integers(0, 1000, 1500)]  # shuffled, with repeats
        expected = features[[keys.index(k) for k in asked]]
        view = FeatureStore(f"e-{np.dtype(dtype).name}", root=tmp_path).view(asked)
        assert isinstance(view, np.memmap) and not view.flags.writeable and view.dtype == dtype
        np.testing.assert_array_equal(view, expected)
        np.testing.assert_array_equal(store.read(asked), expected)
        assert store.lookup(asked + ["absent"]).tolist() == [True] * 1500 + [False]
        with pytest.raises(MissingFeaturesError, match="1 of 2 keys"):
            store.read([keys[0], "absent"])
