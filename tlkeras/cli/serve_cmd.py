"""`tlkeras serve` (a local TF-Serving-compatible server) and `tlkeras predict` (its client)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from tlkeras.errors import TlkerasError
from tlkeras.serve.limits import ServerLimits, limit_malloc_arenas

_LOG_HANDLER_NAME = "tlkeras-serve-stderr"


def configure_logging(level: int = logging.INFO) -> logging.Logger:
    """logging.Logger: The "tlkeras.serve" logger, writing one line per event to stderr.

    Idempotent: calling it again (a second `serve` in one process, tests) adds no second handler.

    Args:
        level: int. The level to log at. Defaults to logging.INFO.
    """
    serve_logger = logging.getLogger("tlkeras.serve")
    if not any(handler.get_name() == _LOG_HANDLER_NAME for handler in serve_logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_LOG_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s", "%H:%M:%S"))
        serve_logger.addHandler(handler)
    serve_logger.setLevel(level)
    return serve_logger


@click.command("serve")
@click.argument("models", type=click.Path(exists=True, file_okay=False))
@click.option("--port", type=click.IntRange(0, 65535), default=8501, show_default=True, help="REST port (0: any free).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; 0.0.0.0 for all.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=None, help="Also serve TF Serving's gRPC API.")
@click.option("--poll-seconds", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="How often to look for new models and versions.")
@click.option("--version-policy", type=click.Choice(["latest", "all"]), default="latest", show_default=True,
              help="Serve only the newest version of each model, or every version on disk.")
@click.option("--model-config-file", type=click.Path(dir_okay=False), default=None,
              help="models.config whose version labels to serve (re-read when it changes). "
                   "[default: MODELS/models.config if it exists]")
@click.option("--enable-batching", is_flag=True,
              help="Batch concurrent predict requests into one signature call, as TF Serving does.")
@click.option("--batching-parameters-file", type=click.Path(dir_okay=False), default=None,
              help="BatchingParameters text file (needs --enable-batching). "
                   "[default: MODELS/batching_parameters.txt if it exists, else 32 rows, 1 ms]")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=ServerLimits.max_body_bytes,
              show_default=True, help="Largest request body (REST) or message (gRPC); larger: 413.")
@click.option("--max-json-depth", type=click.IntRange(min=1), default=ServerLimits.max_json_depth,
              show_default=True, help="Deepest JSON nesting in a request body; deeper: 400.")
@click.option("--request-timeout-seconds", type=click.FloatRange(min=0, min_open=True),
              default=ServerLimits.request_timeout_seconds, show_default=True,
              help="Time a client has to send a whole request (or to idle between requests); then 408.")
@click.option("--max-queued-requests", type=click.IntRange(min=1), default=ServerLimits.max_queued_requests,
              show_default=True, help="Predict requests read, queued or running at once; more: 503.")
@click.option("--max-connections", type=click.IntRange(min=1), default=ServerLimits.max_connections,
              show_default=True, help="Open REST connections; more: 503.")
@click.option("--drain-seconds", type=click.FloatRange(min=0, min_open=True), default=ServerLimits.drain_seconds,
              show_default=True, help="On SIGTERM, how long requests in flight may take before exit.")
def serve(models, port, host, grpc_port, poll_seconds, version_policy, model_config_file, enable_batching,
          batching_parameters_file, max_body_bytes, max_json_depth, request_timeout_seconds, max_queued_requests,
          max_connections, drain_seconds):
    """Serve the SavedModels in MODELS (<name>/<version>/saved_model.pb) with TF Serving's REST API."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ chatter out of the request log
    limit_malloc_arenas()  # before TensorFlow's threads start, so memory stays flat under load
    configure_logging()
    from tlkeras.serve.server import batching_options, run_server

    limits = ServerLimits(max_body_bytes=max_body_bytes, max_json_depth=max_json_depth,
                          request_timeout_seconds=request_timeout_seconds, max_queued_requests=max_queued_requests,
                          max_connections=max_connections, drain_seconds=drain_seconds)
    run_server(models, host=host, port=port, grpc_port=grpc_port, poll_seconds=poll_seconds,
               version_policy=version_policy, limits=limits,
               batching=batching_options(models, enable_batching, batching_parameters_file),
               model_config_file=model_config_file)


@click.command("predict")
@click.argument("items", nargs=-1, required=True, metavar="FILES_OR_TEXT...")
@click.option("--url", default="http://127.0.0.1:8501", show_default=True, help="The server's base URL.")
@click.option("--model", required=True, help="The model name.")
@click.option("--signature", default=None, help="Signature name. [default: serving_default]")
@click.option("--version", type=int, default=None, help="Model version. [default: newest]")
@click.option("--text", is_flag=True, help="Send the arguments as strings instead of reading files.")
@click.option("--input-name", default=None, help="Wrap each instance as {NAME: value}.")
@click.option("--table", is_flag=True, help="Print a compact table instead of JSON.")
def predict(items, url, model, signature, version, text, input_name, table):
    """Send FILES (as base64 bytes) or, with --text, strings to a TF Serving REST endpoint."""
    from tlkeras.serve.client import predict as request_predictions

    if text:
        inputs = list(items)
    else:
        missing = [item for item in items if not Path(item).is_file()]
        if missing:
            raise TlkerasError(f"no such file: {missing[0]}; pass --text to send the arguments as strings. "
                               f"Received: {missing[0]!r}")
        inputs = [Path(item) for item in items]
    predictions = request_predictions(url, model, inputs, signature_name=signature, version=version,
                                      input_name=input_name)
    if table:
        click.echo(format_table(items, predictions))
    else:
        click.echo(json.dumps(predictions, indent=2))


def format_table(items, predictions) -> str:
    """str: One line per input: the input, then each output (vectors shown as their arg-max)."""
    rows = [p if isinstance(p, dict) else {"prediction": p} for p in predictions]
    keys = sorted({key for row in rows for key in row})
    table = [["input", *keys]]
    table += [[str(item), *(_cell(row.get(key)) for key in keys)] for item, row in zip(items, rows, strict=False)]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in table
    )


def _cell(value) -> str:
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        best = max(range(len(value)), key=value.__getitem__)
        return f"argmax {best} ({value[best]:.3g}) of {len(value)}"
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
