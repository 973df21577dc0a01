"""The error a request can fail with, carrying the HTTP status TF Serving would answer with."""

from __future__ import annotations

from tlkeras.errors import TlkerasError

BAD_REQUEST = 400
NOT_FOUND = 404
METHOD_NOT_ALLOWED = 405
REQUEST_TIMEOUT = 408
PAYLOAD_TOO_LARGE = 413
URI_TOO_LONG = 414
TOO_MANY_REQUESTS = 429
HEADERS_TOO_LARGE = 431
CLIENT_CLOSED_REQUEST = 499
INTERNAL = 500
NOT_IMPLEMENTED = 501
UNAVAILABLE = 503
GATEWAY_TIMEOUT = 504

# gRPC status names for the HTTP statuses above (TF Serving maps its codes the same way round).
GRPC_CODE_NAMES = {
    BAD_REQUEST: "INVALID_ARGUMENT",
    NOT_FOUND: "NOT_FOUND",
    METHOD_NOT_ALLOWED: "UNIMPLEMENTED",
    PAYLOAD_TOO_LARGE: "RESOURCE_EXHAUSTED",
    TOO_MANY_REQUESTS: "RESOURCE_EXHAUSTED",
    CLIENT_CLOSED_REQUEST: "CANCELLED",
    INTERNAL: "INTERNAL",
    NOT_IMPLEMENTED: "UNIMPLEMENTED",
    UNAVAILABLE: "UNAVAILABLE",
    GATEWAY_TIMEOUT: "DEADLINE_EXCEEDED",
}

# TensorFlow error classes (tf.errors.*) -> HTTP status, as TF Serving's ToHTTPStatusCode maps them
# (tensorflow_serving/model_servers/http_server.cc). Anything else is a server fault: 500.
_OP_ERROR_STATUS = {
    "CancelledError": CLIENT_CLOSED_REQUEST,
    "InvalidArgumentError": BAD_REQUEST,
    "DeadlineExceededError": GATEWAY_TIMEOUT,
    "NotFoundError": NOT_FOUND,
    "ResourceExhaustedError": TOO_MANY_REQUESTS,
    "FailedPreconditionError": BAD_REQUEST,
    "OutOfRangeError": BAD_REQUEST,
    "UnimplementedError": NOT_IMPLEMENTED,
    "UnavailableError": UNAVAILABLE,
}


class ServingError(TlkerasError):
    """A request the server cannot answer; `status` is the HTTP status code to reply with.

    Args:
        message: str. One line that says what was wrong with the request.
        status: int. HTTP status: 400 for a bad request, 404 for an unknown model or version.
            Defaults to 400.
        headers: dict[str, str], optional. Extra reply headers, e.g. `Allow` or `Retry-After`.
            Defaults to none.
    """

    def __init__(self, message: str, status: int = BAD_REQUEST, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


class WireError(ServingError):
    """A request whose bytes could not be read to their end: the reply is sent and the connection closed."""


def status_for_op_error(error: BaseException) -> int:
    """int: The HTTP status for a TensorFlow `OpError` raised by a signature call, as TF Serving maps it.

    Args:
        error: BaseException. Usually a `tf.errors.OpError` subclass.
    """
    for cls in type(error).__mro__:
        if cls.__name__ in _OP_ERROR_STATUS:
            return _OP_ERROR_STATUS[cls.__name__]
    return INTERNAL


# Lines of a TensorFlow error message that locate the failure rather than explain it.
_LOCATION_LINES = ("Graph execution error", "Detected at node", "<stack traces", "[[", "File ", "Node: ")


def first_error_line(error: BaseException) -> str:
    """str: The line of a TensorFlow error that says what went wrong, without graph and stack noise.

    TF's errors start with "Graph execution error:" and node locations; users need the reason, e.g.
    "Unknown image file format. One of JPEG, PNG, GIF, BMP required.", which TF puts right before the
    "[[{{node ...}}]]" line.

    Args:
        error: BaseException. Usually a `tf.errors.OpError`.
    """
    lines = [line.strip() for line in (getattr(error, "message", None) or str(error)).splitlines()]
    for index, line in enumerate(lines):
        if line.startswith("[[") and index > 0 and lines[index - 1]:
            return _without_location(lines[index - 1])
    for line in lines:
        if line and not line.startswith(_LOCATION_LINES):
            return _without_location(line)
    return type(error).__name__


def _without_location(line: str) -> str:
    if line.startswith("{{function_node"):
        line = line.rsplit("}}", 1)[-1].strip()
    return line.split(" [Op:", 1)[0]
