"""`run_server`: the repository, its poller, the REST server and optionally gRPC, run together."""

from __future__ import annotations

import logging

from tlkeras.serve.repository import ModelRepository
from tlkeras.serve.rest import RestServer

logger = logging.getLogger("tlkeras.serve")


def run_server(
    model_base_path,
    host: str = "127.0.0.1",
    port: int = 8501,
    grpc_port: int | None = None,
    poll_seconds: float = 2.0,
    version_policy: str = "latest",
) -> None:
    """Serves the SavedModels under `model_base_path` with TF Serving's REST API until interrupted.

    Models load before the port opens, so a client that sees the port answer sees the models too.

    Args:
        model_base_path: str | Path. `BASE` holding `<name>/<version>/saved_model.pb`, or one model's dir.
        host: str. The address to bind. Defaults to "127.0.0.1".
        port: int. The REST port; 0 picks a free one. Defaults to 8501.
        grpc_port: int, optional. Also serve TF Serving's gRPC API on this port. Defaults to no gRPC.
        poll_seconds: float. How often to look for new models and versions. Defaults to 2.0.
        version_policy: str. "latest" serves the newest version of each model, "all" every version.
            Defaults to "latest".

    Example:
    >>> run_server("exports", port=8501)   # curl localhost:8501/v1/models/flowers
    """
    repository = ModelRepository(model_base_path, version_policy)
    repository.refresh()
    if not repository.model_names():
        logger.warning("no models under %s yet; waiting for <name>/<version>/saved_model.pb", repository.base_path)
    rest = RestServer(repository, host, port)
    grpc_server = None
    if grpc_port is not None:
        from tlkeras.serve.grpc_service import make_grpc_server

        grpc_server = make_grpc_server(repository, host, grpc_port)
        logger.info("gRPC API listening on %s:%d", host, grpc_server.bound_port)
    repository.start_polling(poll_seconds)
    logger.info("REST API listening on http://%s:%d (models: %s)", host, rest.server_address[1],
                ", ".join(repository.model_names()) or "none")
    try:
        rest.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        rest.server_close()
        repository.stop()
        if grpc_server is not None:
            grpc_server.stop(grace=1)
