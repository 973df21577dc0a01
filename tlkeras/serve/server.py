"""`run_server`: the repository, its poller, batching, the REST server and optionally gRPC, run together.

SIGTERM (or Ctrl-C) stops new connections, lets the requests in flight finish (up to
`limits.drain_seconds`), then returns, so `tlkeras serve` exits 0 as Kubernetes expects.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from tlkeras.errors import TlkerasError
from tlkeras.export.deploy import BATCHING_FILE, CONFIG_FILE
from tlkeras.serve.batching import BatchingOptions, BatchScheduler, predict_alone, read_batching_parameters
from tlkeras.serve.labels import VersionLabels
from tlkeras.serve.limits import AdmissionGate, ServerLimits
from tlkeras.serve.repository import ModelRepository
from tlkeras.serve.rest import RestServer

logger = logging.getLogger("tlkeras.serve")



def batching_options(model_base_path, enable_batching: bool,
                     batching_parameters_file: str | Path | None = None) -> BatchingOptions | None:
    """BatchingOptions | None: The batching settings `tlkeras serve` runs with; None when batching is off.

    As in TF Serving, a parameters file needs batching enabled. With batching on and no file named,
    `<model_base_path>/batching_parameters.txt` is read if it exists, else the defaults apply.

    Args:
        model_base_path: str | Path. The models folder.
        enable_batching: bool. `--enable-batching`.
        batching_parameters_file: str | Path, optional. `--batching-parameters-file`. Defaults to none.
    """
    if not enable_batching:
        if batching_parameters_file is not None:
            raise TlkerasError("--batching-parameters-file needs --enable-batching (as in TF Serving). "
                               f"Received: batching_parameters_file={str(batching_parameters_file)!r}")
        return None
    if batching_parameters_file is None:
        beside = Path(model_base_path) / BATCHING_FILE
        if not beside.is_file():
            return BatchingOptions()
        batching_parameters_file = beside
    return read_batching_parameters(batching_parameters_file)


def version_labels(model_base_path, model_config_file: str | Path | None = None) -> VersionLabels | None:
    """VersionLabels | None: The labels of `model_config_file`, or of `<model_base_path>/models.config`
    when that exists; None when there is no config.

    Args:
        model_base_path: str | Path. The models folder.
        model_config_file: str | Path, optional. `--model-config-file`. Defaults to the one beside the models.
    """
    if model_config_file is None:
        beside = Path(model_base_path) / CONFIG_FILE
        if not beside.is_file():
            return None
        model_config_file = beside
    return VersionLabels(model_config_file)


class _Shutdown:
    """A SIGTERM/SIGINT handler: the first signal drains, a second exits at once."""

    def __init__(self, rest: RestServer):
        self.rest = rest
        self.requested = False

    def __call__(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested:
            logger.warning("second %s: exiting without waiting for requests in flight", name)
            os._exit(1)
        self.requested = True
        logger.info("%s: stopping", name)
        self.rest.draining = True
        # shutdown() waits for serve_forever, which this (main) thread is running: call it from another.
        threading.Thread(target=self.rest.shutdown, name="tlkeras-shutdown", daemon=True).start()


def run_server(
    model_base_path,
    host: str = "127.0.0.1",
    port: int = 8501,
    grpc_port: int | None = None,
    poll_seconds: float = 2.0,
    version_policy: str = "latest",
    limits: ServerLimits | None = None,
    batching: BatchingOptions | None = None,
    model_config_file: str | Path | None = None,
) -> None:
    """Serves the SavedModels under `model_base_path` with TF Serving's REST API until SIGTERM or Ctrl-C.

    Models load before the port opens, so a client that sees the port answer sees the models too.

    Args:
        model_base_path: str | Path. `BASE` holding `<name>/<version>/saved_model.pb`, or one model's dir.
        host: str. The address to bind. Defaults to "127.0.0.1".
        port: int. The REST port; 0 picks a free one. Defaults to 8501.
        grpc_port: int, optional. Also serve TF Serving's gRPC API on this port. Defaults to no gRPC.
        poll_seconds: float. How often to look for new models and versions. Defaults to 2.0.
        version_policy: str. "latest" serves the newest version of each model, "all" every version.
            Defaults to "latest".
        limits: ServerLimits, optional. Body size, JSON depth, timeouts, queue, connections, drain time.
            Defaults to `ServerLimits()`.
        batching: BatchingOptions, optional. Server-side batching (see `batching_options`). Defaults to
            off.
        model_config_file: str | Path, optional. A `models.config` whose version labels to serve.
            Defaults to `<model_base_path>/models.config` when it exists.

    Example:
    >>> run_server("exports", port=8501)   # curl localhost:8501/v1/models/flowers
    """
    limits = limits or ServerLimits()
    repository = ModelRepository(model_base_path, version_policy,
                                 labels=version_labels(model_base_path, model_config_file))
    repository.refresh()
    if not repository.model_names():
        logger.warning("no models under %s yet; waiting for <name>/<version>/saved_model.pb", repository.base_path)
    scheduler = BatchScheduler(batching) if batching is not None else None
    predict = scheduler.predict if scheduler is not None else predict_alone
    gate = AdmissionGate(limits.max_queued_requests)
    rest = RestServer(repository, host, port, limits, predict, gate)
    grpc_server = None
    if grpc_port is not None:
        from tlkeras.serve.grpc_service import make_grpc_server

        grpc_server = make_grpc_server(repository, host, grpc_port, predict=predict, gate=gate, limits=limits)
        logger.info("gRPC API listening on %s:%d", host, grpc_server.bound_port)
    repository.start_polling(poll_seconds)
    previous = _install_signal_handlers(_Shutdown(rest))
    if batching is not None:
        logger.info("batching: up to %d rows per call, %d us window, %d batch thread(s), queue of %d batches",
                    batching.max_batch_size, batching.batch_timeout_micros, batching.num_batch_threads,
                    batching.max_enqueued_batches)
    logger.info("REST API listening on http://%s:%d (models: %s)", host, rest.server_address[1],
                ", ".join(repository.model_names()) or "none")
    try:
        rest.serve_forever()
    finally:
        rest.server_close()
        logger.info("stopped listening; waiting for requests in flight (up to %g s)", limits.drain_seconds)
        grpc_stopped = grpc_server.stop(grace=limits.drain_seconds) if grpc_server is not None else None
        unfinished = rest.wait_for_requests(limits.drain_seconds)
        if unfinished:
            logger.warning("%d request(s) still running after %g s; stopping anyway", unfinished,
                           limits.drain_seconds)
        if grpc_stopped is not None:
            grpc_stopped.wait(limits.drain_seconds)
        if scheduler is not None:
            scheduler.close()
        repository.stop()
        _restore_signal_handlers(previous)
        logger.info("server stopped")


def _install_signal_handlers(handler) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}  # signals reach the main thread only; whoever runs us there handles them
    return {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}


def _restore_signal_handlers(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
