"""Server-side batching, as TF Serving's `--enable_batching` does it, with its `batching_parameters.txt`.

Predict requests for the same model version and signature whose inputs agree in everything but the
batch size wait in a queue; a batch thread concatenates them along axis 0 into one signature call and
splits the outputs back. A batch starts when it holds `max_batch_size` rows, or when its oldest request
has waited `batch_timeout_micros` and a batch thread is free. Departures from TF Serving, chosen so
that every reply is exactly what the request alone would get:
- requests whose input shapes (past axis 0) or dtypes differ never share a batch: they queue apart
  (TF Serving fails them unless it pads);
- a request larger than `max_batch_size`, or whose signature has no batch axis, runs alone (TF Serving
  fails it);
- when a batched call fails (one bad image, say), each request of the batch is rerun alone, so only
  the bad request gets the error.
A queue holding `max_enqueued_batches` full batches answers 503 with `Retry-After`.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlkeras.errors import TlkerasError
from tlkeras.export.deploy import (
    DEFAULT_BATCH_TIMEOUT_MICROS,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_ENQUEUED_BATCHES,
    batching_parameters_class,
)
from tlkeras.serve.errors import UNAVAILABLE, ServingError
from tlkeras.serve.limits import busy_error

logger = logging.getLogger("tlkeras.serve")



@dataclass(frozen=True)
class BatchingOptions:
    """The fields of TF Serving's `BatchingParameters` that `tlkeras serve` honours; the defaults are
    those `tlkeras deploy-config` writes.

    Args:
        max_batch_size: int. Most rows (summed over requests) in one signature call. Defaults to 32.
        batch_timeout_micros: int. How long the oldest request of a partial batch waits for more.
            Defaults to 1000.
        max_enqueued_batches: int. Full batches a queue may hold before it answers 503. Defaults to 100.
        num_batch_threads: int. Batches run at once. Defaults to the number of CPU cores.
        allowed_batch_sizes: tuple[int, ...]. If set, a batch is padded (with copies of its first row,
            dropped from the reply) up to the next of these sizes; the last must be `max_batch_size`.
            Defaults to no padding.
    """

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = DEFAULT_BATCH_TIMEOUT_MICROS
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self):
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise TlkerasError(f"batching {name} must be at least 1. Received: {name}={getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise TlkerasError(f"batching batch_timeout_micros must be >= 0. "
                               f"Received: batch_timeout_micros={self.batch_timeout_micros}")
        sizes = list(self.allowed_batch_sizes)
        if sizes and (sizes != sorted(set(sizes)) or sizes[0] < 1 or sizes[-1] != self.max_batch_size):
            raise TlkerasError("allowed_batch_sizes must increase and end at max_batch_size (as in TF Serving). "
                               f"Received: allowed_batch_sizes={sizes}, max_batch_size={self.max_batch_size}")


def read_batching_parameters(path: str | Path) -> BatchingOptions:
    """BatchingOptions: The settings in a text-format `BatchingParameters` file.

    Fields left out keep `BatchingOptions`' defaults; fields this server has no use for
    (`thread_pool_name`, `pad_variable_length_inputs`, large-batch splitting) are ignored.

    Args:
        path: str | Path. E.g. the `batching_parameters.txt` that `tlkeras deploy-config` writes.

    Example:
    >>> read_batching_parameters("models/batching_parameters.txt").max_batch_size
    32
    """
    from google.protobuf import text_format

    message = batching_parameters_class()()
    try:
        # allow_unknown_field: TF Serving's newer fields (large-batch splitting) are not in that class.
        text_format.Parse(Path(path).read_text(encoding="utf-8"), message, allow_unknown_field=True)
    except (OSError, UnicodeDecodeError, text_format.ParseError) as err:
        raise TlkerasError(f"cannot read the batching parameters (a text BatchingParameters, as `tlkeras "
                           f"deploy-config` writes): {err}. Received: path={str(path)!r}") from err
    given = {name: getattr(message, name).value for name in
             ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
             if message.HasField(name)}
    return BatchingOptions(**given, allowed_batch_sizes=tuple(message.allowed_batch_sizes))


@dataclass
class Prediction:
    """A signature call's outputs for one request, and how many requests shared that call.

    Args:
        outputs: dict[str, np.ndarray]. The outputs the request asked for.
        batched_requests: int. Requests in the signature call that produced them (1: alone).
            Defaults to 1.
    """

    outputs: dict
    batched_requests: int = 1


def predict_alone(servable, inputs: Mapping[str, np.ndarray], signature_name: str | None = None,
                  output_filter: list[str] | None = None) -> Prediction:
    """Prediction: Runs one request's signature call on the calling thread (batching off).

    Args:
        servable: ServableVersion. The model version.
        inputs: Mapping[str, np.ndarray]. The request's inputs.
        signature_name: str, optional. Defaults to "serving_default".
        output_filter: list[str], optional. Defaults to all outputs.
    """
    return Prediction(servable.predict(inputs, signature_name, output_filter))


class _Task:
    __slots__ = ("arrays", "rows", "enqueued", "done", "outputs", "error", "batched_requests")

    def __init__(self, arrays: dict, rows: int):
        self.arrays, self.rows = arrays, rows
        self.enqueued = time.monotonic()
        self.done = threading.Event()
        self.outputs: dict | None = None
        self.error: BaseException | None = None
        self.batched_requests = 1


class _Queue:
    def __init__(self, servable, signature, solo: bool):
        self.servable, self.signature, self.solo = servable, signature, solo
        self.tasks: collections.deque[_Task] = collections.deque()
        self.rows = 0


def _batch_rows(signature, arrays: Mapping[str, np.ndarray]) -> int | None:
    """The request's batch size, or None when its inputs cannot be stacked with others'."""
    sizes = set()
    for name, spec in signature.inputs.items():
        array = arrays[name]
        if array.ndim == 0 or spec.shape.rank in (None, 0) or spec.shape[0] is not None:
            return None
        sizes.add(array.shape[0])
    return sizes.pop() if len(sizes) == 1 else None


def _shape_key(arrays: Mapping[str, np.ndarray]) -> tuple:
    return tuple((name, arrays[name].dtype.str, arrays[name].shape[1:]) for name in sorted(arrays))


class BatchScheduler:
    """Batches concurrent predict calls per model version, signature and input shape.

    Args:
        options: BatchingOptions. Batch size, window, queue length and batch threads.

    Example:
    >>> scheduler = BatchScheduler(read_batching_parameters("models/batching_parameters.txt"))
    >>> scheduler.predict(repository.get("fashion"), {"image_bytes": images}).outputs["label"]
    >>> scheduler.close()
    """

    def __init__(self, options: BatchingOptions):
        self.options = options
        self._capacity = options.max_enqueued_batches * options.max_batch_size
        self._timeout = options.batch_timeout_micros / 1e6
        self._cond = threading.Condition()
        self._queues: dict[tuple, _Queue] = {}
        # servable -> signatures whose outputs lack a batch axis, so their requests run alone
        self._unsplittable: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"tlkeras-batch-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def predict(self, servable, inputs: Mapping[str, np.ndarray], signature_name: str | None = None,
                output_filter: list[str] | None = None) -> Prediction:
        """Prediction: Queues one request, waits for the batch it joins, and returns its own outputs.

        Args:
            servable: ServableVersion. The model version.
            inputs: Mapping[str, np.ndarray]. The request's inputs.
            signature_name: str, optional. Defaults to "serving_default".
            output_filter: list[str], optional. Defaults to all outputs.

        Raises:
            ServingError: 400 for bad inputs (checked before queueing), 503 when the queue is full or the
                server is shutting down, or the signature call's own error.
        """
        signature, arrays = servable.check_inputs(inputs, signature_name)
        wanted = servable.select_outputs(signature, output_filter)
        rows = _batch_rows(signature, arrays)
        solo = (rows is None or rows > self.options.max_batch_size
                or signature.name in self._unsplittable.get(servable, ()))
        task = _Task(arrays, rows or 0)
        key = (id(task),) if solo else (id(servable), signature.name, _shape_key(arrays))
        with self._cond:
            if self._closed:
                raise ServingError("the server is shutting down; retry on another replica", UNAVAILABLE,
                                   {"Retry-After": "1"})
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(servable, signature, solo)
            elif queue.rows + task.rows > self._capacity:
                raise busy_error(f"the batch queue of model '{servable.name}' holds "
                                 f"{self.options.max_enqueued_batches} full batches")
            queue.tasks.append(task)
            queue.rows += task.rows
            self._cond.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return Prediction({name: task.outputs[name] for name in wanted}, task.batched_requests)

    def close(self, timeout: float = 30.0) -> None:
        """Runs what is queued, then stops the batch threads (new requests get 503).

        Args:
            timeout: float. Seconds to wait for the threads. Defaults to 30.
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
            if batch is None:
                return
            self._run(*batch)

    def _next_batch(self):
        """Waits (holding the condition) for a queue that is ready, and takes one batch from it."""
        while True:
            now = time.monotonic()
            chosen, wake = None, None
            for key, queue in self._queues.items():
                head = queue.tasks[0]
                due = head.enqueued + self._timeout
                if queue.solo or self._closed or queue.rows >= self.options.max_batch_size or now >= due:
                    if chosen is None or head.enqueued < self._queues[chosen].tasks[0].enqueued:
                        chosen = key
                elif wake is None or due < wake:
                    wake = due
            if chosen is not None:
                queue = self._queues[chosen]
                tasks = [queue.tasks.popleft()]
                rows = tasks[0].rows
                while queue.tasks and rows + queue.tasks[0].rows <= self.options.max_batch_size:
                    rows += queue.tasks[0].rows
                    tasks.append(queue.tasks.popleft())
                queue.rows -= rows
                if not queue.tasks:
                    del self._queues[chosen]
                return queue, tasks
            if self._closed:
                return None
            self._cond.wait(None if wake is None else max(0.0, wake - now))

    def _run(self, queue: _Queue, tasks: list[_Task]) -> None:
        try:
            if len(tasks) == 1 and not self.options.allowed_batch_sizes:
                self._run_alone(queue, tasks[0])
            else:
                self._run_batched(queue, tasks)
        finally:
            for task in tasks:
                task.done.set()

    @staticmethod
    def _run_alone(queue: _Queue, task: _Task) -> None:
        try:
            task.outputs = queue.servable.run(queue.signature, task.arrays)
        except BaseException as err:  # handed to the request's thread, which answers or logs it
            task.error = err

    def _run_batched(self, queue: _Queue, tasks: list[_Task]) -> None:
        rows = sum(task.rows for task in tasks)
        merged = {name: np.concatenate([task.arrays[name] for task in tasks]) for name in tasks[0].arrays}
        padded = next((size for size in self.options.allowed_batch_sizes if size >= rows), rows)
        if padded > rows:
            merged = {name: np.concatenate([array, np.repeat(array[:1], padded - rows, axis=0)])
                      for name, array in merged.items()}
        try:
            outputs = queue.servable.run(queue.signature, merged)
        except ServingError:
            # One request's bad input fails the whole call; rerun each alone so only it gets the error.
            for task in tasks:
                self._run_alone(queue, task)
            return
        except BaseException as err:
            for task in tasks:
                task.error = err
            return
        if any(np.ndim(value) == 0 or np.shape(value)[0] != padded for value in outputs.values()):
            logger.warning("model %s version %d signature %s: outputs have no batch axis, so its requests "
                           "run unbatched from now on", queue.servable.name, queue.servable.version,
                           queue.signature.name)
            self._unsplittable.setdefault(queue.servable, set()).add(queue.signature.name)
            for task in tasks:
                self._run_alone(queue, task)
            return
        start = 0
        for task in tasks:
            task.outputs = {name: value[start:start + task.rows] for name, value in outputs.items()}
            task.batched_requests = len(tasks)
            start += task.rows
