"""Server-side batching: concurrent requests share one signature call and each gets exactly its own rows."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tlkeras.errors import TlkerasError
from tlkeras.serve.batching import BatchingOptions, BatchScheduler, read_batching_parameters
from tlkeras.serve.errors import ServingError
from tlkeras.serve.repository import ServableVersion, Signature
from tlkeras.serve.server import batching_options


class CountingServable(ServableVersion):
    """A servable whose signature is numpy (`y = 2 * x.sum(axis=1) + 1`), recording every call's rows.

    A negative input fails the whole call, the way one undecodable image fails a TF batch.
    """

    def __init__(self, tf, width=None, scalar_output=False, gate=None):
        self.name, self.version = "fake", 1
        specs = {"x": tf.TensorSpec([None, width], tf.float32, name="x")}
        self.signatures = {"serving_default": Signature("serving_default", None, specs, {"y": None, "n": None})}
        self.calls: list[int] = []
        self.scalar_output = scalar_output
        self.gate = gate
        self.lock = threading.Lock()

    def run(self, signature, arrays):
        x = arrays["x"]
        with self.lock:
            self.calls.append(len(x))
        if self.gate is not None:
            self.gate.wait(10)
        if (x < 0).any():
            raise ServingError("negative input")
        y = 2 * x.sum(axis=1) + 1
        return {"y": y, "n": np.int64(len(x)) if self.scalar_output else np.full(len(x), 7)}


@pytest.fixture(scope="module")
def tf():
    import tensorflow as tf

    return tf


def _concurrently(function, arguments):
    with ThreadPoolExecutor(len(arguments)) as pool:
        futures = [pool.submit(function, argument) for argument in arguments]
        return [future.exception() or future.result() for future in futures]


def test_concurrent_requests_share_one_call_and_each_gets_its_own_rows(tf):
    servable = CountingServable(tf, width=3)
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, batch_timeout_micros=2_000_000,
                                               num_batch_threads=1))
    rng = np.random.default_rng(0)
    requests = [rng.uniform(size=(rows, 3)).astype(np.float32) for rows in (1, 2, 3, 2)]  # 8 rows: a full batch
    try:
        results = _concurrently(lambda x: scheduler.predict(servable, {"x": x}), requests)
    finally:
        scheduler.close()
    assert servable.calls == [8]
    for x, result in zip(requests, results, strict=True):
        assert result.batched_requests == 4
        np.testing.assert_array_equal(result.outputs["y"], 2 * x.sum(axis=1) + 1)
        np.testing.assert_array_equal(result.outputs["n"], [7] * len(x))


def test_inputs_of_different_shapes_never_share_a_call(tf):
    servable = CountingServable(tf)  # the signature takes any width
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, batch_timeout_micros=200_000, num_batch_threads=1))
    requests = [np.ones((1, 3), np.float32), np.ones((1, 4), np.float32), 2 * np.ones((1, 3), np.float32)]
    try:
        results = _concurrently(lambda x: scheduler.predict(servable, {"x": x}), requests)
    finally:
        scheduler.close()
    assert sorted(servable.calls) == [1, 2]  # the two width-3 requests together, the width-4 one alone
    assert [r.outputs["y"].tolist() for r in results] == [[7.0], [9.0], [13.0]]


def test_a_bad_request_in_a_batch_fails_alone(tf):
    servable = CountingServable(tf, width=2)
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=3, batch_timeout_micros=2_000_000, num_batch_threads=1))
    requests = [np.ones((1, 2), np.float32), -np.ones((1, 2), np.float32), np.zeros((1, 2), np.float32)]
    try:
        results = _concurrently(lambda x: scheduler.predict(servable, {"x": x}), requests)
    finally:
        scheduler.close()
    assert servable.calls == [3, 1, 1, 1]  # the batch failed, then each request ran alone
    assert results[0].outputs["y"].tolist() == [5.0] and results[2].outputs["y"].tolist() == [1.0]
    assert isinstance(results[1], ServingError) and str(results[1]) == "negative input"


def test_a_full_queue_answers_503_with_retry_after_and_recovers(tf):
    gate = threading.Event()
    servable = CountingServable(tf, width=1, gate=gate)
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=1, batch_timeout_micros=0, max_enqueued_batches=1,
                                               num_batch_threads=1))
    x = np.ones((1, 1), np.float32)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(scheduler.predict, servable, {"x": x})
        _wait(lambda: servable.calls == [1])
        queued = pool.submit(scheduler.predict, servable, {"x": x})
        _wait(lambda: scheduler._queues)
        with pytest.raises(ServingError) as error:
            scheduler.predict(servable, {"x": x})
        gate.set()
        assert running.result().outputs["y"].tolist() == queued.result().outputs["y"].tolist() == [3.0]
    assert error.value.status == 503 and error.value.headers == {"Retry-After": "1"}
    assert scheduler.predict(servable, {"x": x}).outputs["y"].tolist() == [3.0]
    scheduler.close()
    with pytest.raises(ServingError, match="shutting down"):
        scheduler.predict(servable, {"x": x})


def test_outputs_without_a_batch_axis_make_the_signature_run_unbatched(tf):
    servable = CountingServable(tf, width=1, scalar_output=True)
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=4, batch_timeout_micros=2_000_000, num_batch_threads=1))
    requests = [np.full((1, 1), float(i), np.float32) for i in range(4)]
    try:
        results = _concurrently(lambda x: scheduler.predict(servable, {"x": x}), requests)
        assert servable.calls == [4, 1, 1, 1, 1]
        assert [r.outputs["y"].tolist() for r in results] == [[1.0], [3.0], [5.0], [7.0]]
        assert [int(r.outputs["n"]) for r in results] == [1, 1, 1, 1]  # what each request alone gets
        servable.calls.clear()
        _concurrently(lambda x: scheduler.predict(servable, {"x": x}), requests[:2])
        assert servable.calls == [1, 1]  # learnt: no more batching for this signature
    finally:
        scheduler.close()


def test_allowed_batch_sizes_pad_with_the_first_row_and_drop_the_padding(tf):
    servable = CountingServable(tf, width=1)
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=4, allowed_batch_sizes=(2, 4),
                                               batch_timeout_micros=0, num_batch_threads=1))
    try:
        result = scheduler.predict(servable, {"x": np.array([[1.0], [2.0], [3.0]], np.float32)})
    finally:
        scheduler.close()
    assert servable.calls == [4]
    assert result.outputs["y"].tolist() == [3.0, 5.0, 7.0]


def test_requests_larger_than_a_batch_run_alone(tf):
    servable = CountingServable(tf, width=1)
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=2, batch_timeout_micros=0, num_batch_threads=1))
    try:
        result = scheduler.predict(servable, {"x": np.ones((5, 1), np.float32)})
    finally:
        scheduler.close()
    assert servable.calls == [5] and result.outputs["y"].tolist() == [3.0] * 5


def test_batching_parameters_file_round_trip_with_deploy_config(tmp_path):
    from google.protobuf import text_format

    from tlkeras.export.deploy import batching_parameters

    path = tmp_path / "batching_parameters.txt"
    path.write_text(text_format.MessageToString(batching_parameters(num_batch_threads=3)))
    assert read_batching_parameters(path) == BatchingOptions(32, 1000, 100, 3)

    path.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\nallowed_batch_sizes: 8\n"
                    "enable_large_batch_splitting { value: true }\n")  # a newer TF Serving field: ignored
    options = read_batching_parameters(path)
    assert (options.max_batch_size, options.allowed_batch_sizes, options.batch_timeout_micros) == (8, (4, 8), 1000)

    path.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n")
    with pytest.raises(TlkerasError, match="end at max_batch_size"):
        read_batching_parameters(path)
    path.write_text("max_batch_size: 8")  # a wrapper field written bare
    with pytest.raises(TlkerasError, match="cannot read the batching parameters"):
        read_batching_parameters(path)


def test_batching_options_follow_tf_serving_flags(tmp_path):
    assert batching_options(tmp_path, enable_batching=False) is None
    with pytest.raises(TlkerasError, match="needs --enable-batching"):
        batching_options(tmp_path, False, tmp_path / "b.txt")
    assert batching_options(tmp_path, True) == BatchingOptions()
    (tmp_path / "batching_parameters.txt").write_text("max_batch_size { value: 4 }")
    assert batching_options(tmp_path, True).max_batch_size == 4  # the file deploy-config writes beside the models


def _wait(condition, seconds=10):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
