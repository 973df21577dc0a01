"""TF Serving's REST API over a `ModelRepository`, on the standard library's threading HTTP server.

Endpoints (tensorflow.org/tfx/serving/api_rest):
- `GET  /v1/models/{name}[/versions/{v}]`: model status;
- `GET  /v1/models/{name}[/versions/{v}]/metadata`: signature definitions;
- `POST /v1/models/{name}[/versions/{v}]:predict`: row (`instances`) or columnar (`inputs`) requests.

Every error is answered with `{"error": "..."}`: 400 for a bad request, 404 for an unknown model, version
or URL. http.server is enough here: the work per request is a TensorFlow call, which releases the GIL,
and it adds no dependency.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from tlkeras.serve import codec
from tlkeras.serve.errors import (
    BAD_REQUEST,
    INTERNAL,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    ServingError,
)
from tlkeras.serve.repository import ModelRepository

logger = logging.getLogger("tlkeras.serve")

_MODEL_URL = re.compile(
    r"/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<action>/metadata|:[A-Za-z_]+)?/?"
)
_METHODS = {None: "GET", "/metadata": "GET", ":predict": "POST", ":classify": "POST", ":regress": "POST"}


def handle_request(repository: ModelRepository, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    """tuple[int, dict]: The HTTP status and JSON reply for one REST request.

    Args:
        repository: ModelRepository. The models being served.
        method: str. "GET" or "POST".
        path: str. The request path, e.g. "/v1/models/flowers/versions/2:predict".
        body: bytes. The request body. Defaults to b"".
    """
    match = _MODEL_URL.fullmatch(urlsplit(path).path)
    if match is None:
        raise ServingError(f"no such endpoint: {method} {path}; the API lives under /v1/models/<name>", NOT_FOUND)
    name, action = unquote(match["name"]), match["action"]
    if match["label"] is not None:
        raise ServingError("version labels are not configured on this server; use /versions/<number>", NOT_FOUND)
    version = _parse_version(match["version"])
    if action not in _METHODS:
        raise ServingError(f"unknown action {action!r}; the actions are :predict and /metadata", NOT_FOUND)
    if method != _METHODS[action]:
        raise ServingError(f"{path} takes {_METHODS[action]}. Received: method={method}", METHOD_NOT_ALLOWED)
    if action is None:
        return 200, _status_reply(repository, name, version)
    if action == "/metadata":
        return 200, _metadata_reply(repository, name, version)
    if action != ":predict":
        raise ServingError(f"{action[1:]} is not served by tlkeras serve; use :predict", NOT_IMPLEMENTED)
    request = codec.parse_request(body)
    servable = repository.get(name, version)
    signature = servable.signature(request.get("signature_name"))
    request_format, inputs = codec.request_inputs(request, signature.inputs)
    outputs = servable.predict(inputs, signature.name)
    return 200, codec.encode_outputs(outputs, request_format)


def _parse_version(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit():
        raise ServingError(f"a model version must be a whole number. Received: version={text!r}", BAD_REQUEST)
    return int(text)


def _status_reply(repository: ModelRepository, name: str, version: int | None) -> dict:
    return {
        "model_version_status": [
            {
                "version": str(status.version),
                "state": status.state,
                "status": {"error_code": "UNKNOWN" if status.error else "OK", "error_message": status.error},
            }
            for status in repository.status(name, version)
        ]
    }


def _metadata_reply(repository: ModelRepository, name: str, version: int | None) -> dict:
    servable = repository.get(name, version)
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
        # The inner "signature_def" is SignatureDefMap's own field: TF Serving nests it the same way.
        "metadata": {"signature_def": {"signature_def": servable.signature_def_json()}},
    }


class _RestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients that reuse connections work
    server_version = "tlkeras-serve"

    def do_GET(self):
        self._respond("GET")

    def do_POST(self):
        self._respond("POST")

    def _respond(self, method: str):
        start = time.perf_counter()
        try:
            body = self._read_body()
            status, reply = handle_request(self.server.repository, method, self.path, body)
        except ServingError as err:
            status, reply = err.status, {"error": str(err)}
        except Exception as err:  # reply and keep serving; the traceback goes to the log
            logger.exception("error while answering %s %s", method, self.path)
            status, reply = INTERNAL, {"error": f"internal server error: {err}"}
        payload = codec.dumps(reply)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away; nothing to tell it
        milliseconds = (time.perf_counter() - start) * 1000
        detail = f" {reply['error']}" if status >= 400 else ""
        logger.info('%s "%s %s" %d %.1fms%s', self.client_address[0], method, self.path, status, milliseconds, detail)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        if not length.isdigit():
            self.close_connection = True
            raise ServingError(f"bad Content-Length header. Received: {length!r}")
        return self.rfile.read(int(length))

    def log_message(self, format, *args):
        pass  # `_respond` logs one line per request


class RestServer(ThreadingHTTPServer):
    """A threading HTTP server answering TF Serving's REST API for `repository`.

    Args:
        repository: ModelRepository. The models to serve.
        host: str. The address to bind. Defaults to "127.0.0.1".
        port: int. The port; 0 picks a free one (read it from `server_address`). Defaults to 8501.

    Example:
    >>> server = RestServer(repository, port=8501)
    >>> server.serve_forever()
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, repository: ModelRepository, host: str = "127.0.0.1", port: int = 8501):
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.repository = repository
        super().__init__((host, port), _RestHandler)
