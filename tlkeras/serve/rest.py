"""TF Serving's REST API over a `ModelRepository`, on the standard library's threading TCP server.

Endpoints (tensorflow.org/tfx/serving/api_rest), where `[/versions/{v}]` may also be `[/labels/{label}]`:
- `GET  /v1/models/{name}[/versions/{v}]`: model status;
- `GET  /v1/models/{name}[/versions/{v}]/metadata`: signature definitions;
- `POST /v1/models/{name}[/versions/{v}]:predict`: row (`instances`) or columnar (`inputs`) requests.

Every error is answered with `{"error": "..."}` and a 4xx: 400 for a bad request, 404 for an unknown
model, version, label or URL, 405 (with `Allow`) for a method a URL does not take, 408 for a request
that does not arrive in time, 413 for a body over the limit, 503 (with `Retry-After`) when the queue
or the connection slots are full. A 5xx means a fault in the server or the model, and is logged.
http.server's socket handling is enough here: the work per request is a TensorFlow call, which releases
the GIL, and it adds no dependency.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote

from tlkeras.serve import codec
from tlkeras.serve.batching import Prediction, predict_alone
from tlkeras.serve.errors import (
    BAD_REQUEST,
    INTERNAL,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    REQUEST_TIMEOUT,
    ServingError,
    WireError,
)
from tlkeras.serve.http_wire import (
    DeadlineReader,
    Request,
    declared_length,
    printable,
    read_body,
    read_request_head,
    response_bytes,
    too_large,
)
from tlkeras.serve.limits import AdmissionGate, ServerLimits, busy_error
from tlkeras.serve.repository import ModelRepository

logger = logging.getLogger("tlkeras.serve")

_MODEL_URL = re.compile(
    r"/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<action>/metadata|:[A-Za-z_]+)?/?"
)
_ALLOWED_METHODS = {None: ("GET", "HEAD"), "/metadata": ("GET", "HEAD"), ":predict": ("POST",),
                    ":classify": ("POST",), ":regress": ("POST",)}
_VERSION = re.compile(r"[0-9]{1,18}")
_LINGER_SECONDS, _LINGER_BYTES = 2.0, 4 << 20  # how much of an unwanted body is drained


@dataclass(frozen=True)
class Route:
    """What a request URL names.

    Args:
        name: str. The model name (percent-decoded).
        version: int, optional. The version, if the URL names one.
        label: str, optional. The version label, if the URL names one.
        action: str, optional. None (status), "/metadata", ":predict", ":classify" or ":regress".
    """

    name: str
    version: int | None
    label: str | None
    action: str | None


def route(method: str, path: str) -> Route:
    """Route: The model, version or label and action a REST request names.

    Args:
        method: str. The HTTP method.
        path: str. The URL path, e.g. "/v1/models/flowers/labels/stable:predict".

    Raises:
        ServingError: 404 for an unknown URL, 405 (with `Allow`) for a method the URL does not take,
            400 for a version that is not a whole number.
    """
    match = _MODEL_URL.fullmatch(path)
    if match is None or match["action"] not in _ALLOWED_METHODS:
        raise ServingError(f"no such endpoint: {printable(path)}; the API is /v1/models/<name>[/versions/<v>]"
                           "[/metadata|:predict]", NOT_FOUND)
    allowed = _ALLOWED_METHODS[match["action"]]
    if method not in allowed:
        raise ServingError(f"{printable(path)} takes {' or '.join(allowed)}. Received: method={printable(method)}",
                           METHOD_NOT_ALLOWED, {"Allow": ", ".join(allowed)})
    version = match["version"]
    if version is not None and not _VERSION.fullmatch(version):
        raise ServingError(f"a model version must be a whole number. Received: version={printable(version)}")
    label = match["label"]
    return Route(unquote(match["name"]), None if version is None else int(version),
                 None if label is None else unquote(label), match["action"])


class RestApi:
    """TF Serving's REST semantics over a repository: status, metadata and predict replies.

    Args:
        repository: ModelRepository. The models being served.
        predict: Callable. `(servable, inputs, signature_name) -> Prediction`: `predict_alone`, or a
            `BatchScheduler`'s `predict`. Defaults to `predict_alone`.
        max_json_depth: int. The JSON nesting limit for request bodies. Defaults to 100.
    """

    def __init__(self, repository: ModelRepository, predict=predict_alone,
                 max_json_depth: int = codec.DEFAULT_MAX_DEPTH):
        self.repository = repository
        self._predict = predict
        self.max_json_depth = max_json_depth

    def get(self, target: Route) -> dict:
        """dict: The reply to a status or metadata request."""
        if target.action == "/metadata":
            servable = self.repository.get(target.name, target.version, target.label)
            return {
                "model_spec": {"name": target.name, "signature_name": "", "version": str(servable.version)},
                # The inner "signature_def" is SignatureDefMap's own field: TF Serving nests it the same way.
                "metadata": {"signature_def": {"signature_def": servable.signature_def_json()}},
            }
        return {
            "model_version_status": [
                {
                    "version": str(status.version),
                    "state": status.state,
                    "status": {"error_code": "UNKNOWN" if status.error else "OK", "error_message": status.error},
                }
                for status in self.repository.status(target.name, target.version, target.label)
            ]
        }

    def predict(self, target: Route, body: bytes) -> tuple[dict, Prediction]:
        """tuple: The reply to a `:predict` request and the `Prediction` behind it."""
        if target.action != ":predict":
            raise ServingError(f"{target.action[1:]} needs a {target.action[1:]} signature; tlkeras exports "
                               "predict signatures only, so use :predict", BAD_REQUEST)
        request = codec.parse_request(body, self.max_json_depth)
        servable = self.repository.get(target.name, target.version, target.label)
        signature = servable.signature(request.get("signature_name"))
        request_format, inputs = codec.request_inputs(request, signature.inputs)
        prediction = self._predict(servable, inputs, signature.name)
        return codec.encode_outputs(prediction.outputs, request_format), prediction


_KEEP, _CLOSE, _LINGER = "keep", "close", "linger"


class _ClientGone(Exception):
    """The connection broke while the request was being read: there is no one to answer."""


class _RestHandler(socketserver.StreamRequestHandler):
    """One connection: requests read under the server's limits, answered until either side closes."""

    server: RestServer

    def setup(self):
        self.connection = self.request
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader, 65536)

    def handle(self):
        outcome = _KEEP
        while outcome == _KEEP:
            outcome = self._handle_one()
        if outcome == _LINGER:
            self._lingering_close()

    def finish(self):
        self.rfile.close()

    def _handle_one(self) -> str:
        limits = self.server.limits
        self.reader.start(limits.request_timeout_seconds)
        try:
            request = read_request_head(self.rfile)
        except TimeoutError:
            if self.reader.received:  # an idle connection just closes; a stalled request hears why
                self._send(REQUEST_TIMEOUT, {"error": self._timeout_message()}, {}, close=True)
                self._log(None, REQUEST_TIMEOUT, 0.0, self._timeout_message())
            return _CLOSE
        except WireError as err:
            self._send(err.status, {"error": str(err)}, err.headers, close=True)
            self._log(None, err.status, 0.0, str(err))
            return _LINGER
        except OSError:
            return _CLOSE
        if request is None:
            return _CLOSE
        with self.server.in_flight():
            return self._answer(request)

    def _timeout_message(self) -> str:
        return (f"the request did not arrive within {self.server.limits.request_timeout_seconds:g} s "
                "(--request-timeout-seconds)")

    def _answer(self, request: Request) -> str:
        start = time.perf_counter()
        body_read, headers, detail = False, {}, ""
        api = self.server.api
        try:
            target = route(request.method, request.path)
            if target.action is None or target.action == "/metadata":
                self._read_body(request)
                body_read = True
                reply = api.get(target)
            else:
                with self.server.gate.admit():
                    body = self._read_body(request)
                    body_read = True
                    reply, prediction = api.predict(target, body)
                if prediction.batched_requests > 1:
                    detail = f" (batch of {prediction.batched_requests} requests)"
            status = 200
        except TimeoutError:
            status, reply, body_read = REQUEST_TIMEOUT, {"error": self._timeout_message()}, False
        except ServingError as err:  # WireError included: a malformed body leaves body_read False
            status, reply, headers = err.status, {"error": str(err)}, err.headers
        except _ClientGone:
            return _CLOSE
        except Exception as err:  # a bug or model fault: reply, log the traceback, keep serving
            logger.exception("error while answering %s %s", request.method, printable(request.target))
            status, reply = INTERNAL, {"error": f"internal server error: {printable(str(err), 300)}"}
        # Unread body bytes would be taken for the next request: close instead (after draining them a little).
        close = not request.keep_alive or self.server.draining or not body_read
        sent = self._send(status, reply, headers, close, head_only=request.method == "HEAD")
        self._log(request, status, (time.perf_counter() - start) * 1000,
                  f" {reply['error']}" if status >= 400 else detail)
        if not sent:
            return _CLOSE
        if not close:
            return _KEEP
        return _LINGER if not body_read and status != REQUEST_TIMEOUT else _CLOSE

    def _read_body(self, request: Request) -> bytes:
        max_bytes = self.server.limits.max_body_bytes
        length = declared_length(request)
        if length is not None and length > max_bytes:
            raise too_large(length, max_bytes)  # before "100 Continue", so the client never sends it
        try:
            if "100-continue" in request.tokens("expect") and request.version == "HTTP/1.1":
                self.connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            return read_body(self.rfile, request, max_bytes)
        except TimeoutError:
            raise
        except OSError as err:  # reset, broken pipe: not a fault of the server, nothing to reply to
            raise _ClientGone() from err

    def _send(self, status: int, reply: dict, headers: dict, close: bool, head_only: bool = False) -> bool:
        try:
            self.connection.settimeout(self.server.limits.request_timeout_seconds)
            self.connection.sendall(response_bytes(status, codec.dumps(reply), headers, close, head_only))
            return True
        except OSError:
            return False  # the client went away or stopped reading; nothing to tell it

    def _lingering_close(self):
        """Half-closes, then drains what the client still sends, so the reply is not lost to a TCP reset."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline, drained = time.monotonic() + _LINGER_SECONDS, 0
            while drained < _LINGER_BYTES and (remaining := deadline - time.monotonic()) > 0:
                self.connection.settimeout(remaining)
                data = self.connection.recv(65536)
                if not data:
                    break
                drained += len(data)
        except OSError:
            pass

    def _log(self, request: Request | None, status: int, milliseconds: float, detail: str):
        line = f"{request.method} {request.target}" if request is not None else "(malformed request)"
        logger.info('%s "%s" %d %.1fms%s', self.client_address[0], printable(line, 300), status, milliseconds,
                    printable(detail, 300))


class RestServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A threading HTTP server answering TF Serving's REST API for `repository`.

    Args:
        repository: ModelRepository. The models to serve.
        host: str. The address to bind. Defaults to "127.0.0.1".
        port: int. The port; 0 picks a free one (read it from `server_address`). Defaults to 8501.
        limits: ServerLimits, optional. Body size, JSON depth, timeouts, queue and connection limits.
            Defaults to `ServerLimits()`.
        predict: Callable, optional. `predict_alone` or a `BatchScheduler`'s `predict`. Defaults to
            `predict_alone`.
        gate: AdmissionGate, optional. Shared with the gRPC server so both count against one queue.
            Defaults to a new gate of `limits.max_queued_requests`.

    Example:
    >>> server = RestServer(repository, port=8501)
    >>> server.serve_forever()
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, repository: ModelRepository, host: str = "127.0.0.1", port: int = 8501,
                 limits: ServerLimits | None = None, predict=None, gate: AdmissionGate | None = None):
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.repository = repository
        self.limits = limits or ServerLimits()
        self.gate = gate or AdmissionGate(self.limits.max_queued_requests)
        self.api = RestApi(repository, predict or predict_alone, self.limits.max_json_depth)
        self.draining = False
        self._cond = threading.Condition()
        self._connections = 0
        self._requests = 0
        super().__init__((host, port), _RestHandler)

    def process_request(self, request, client_address):
        with self._cond:
            full = self._connections >= self.limits.max_connections
            if not full:
                self._connections += 1
        if full:
            self._refuse(request, client_address)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release_connection()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release_connection()

    def _release_connection(self):
        with self._cond:
            self._connections -= 1

    def _refuse(self, sock, client_address):
        error = busy_error(f"{self.limits.max_connections} connections are open")
        try:
            sock.settimeout(1.0)
            sock.sendall(response_bytes(error.status, codec.dumps({"error": str(error)}), error.headers, True))
        except OSError:
            pass
        self.shutdown_request(sock)
        logger.warning("%s refused: %s", client_address[0], error)

    @contextlib.contextmanager
    def in_flight(self):
        """Counts a request as in flight for the `with` block (SIGTERM waits for these)."""
        with self._cond:
            self._requests += 1
        try:
            yield
        finally:
            with self._cond:
                self._requests -= 1
                self._cond.notify_all()

    def wait_for_requests(self, timeout: float) -> int:
        """int: Waits up to `timeout` seconds for requests in flight to finish; returns how many did not."""
        with self._cond:
            self._cond.wait_for(lambda: self._requests == 0, timeout)
            return self._requests

    def handle_error(self, request, client_address):
        logger.exception("unexpected error on a connection from %s", client_address[0])
