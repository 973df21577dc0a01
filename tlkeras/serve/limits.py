"""What one client may cost the server: body size, JSON depth, time to send a request, queue places.

Each limit is a `tlkeras serve` flag. A request over a limit gets a 4xx (or a 503 with `Retry-After`
when the queue is full) and the server keeps serving everyone else.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

from tlkeras.errors import TlkerasError
from tlkeras.serve.errors import UNAVAILABLE, ServingError

RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class ServerLimits:
    """The per-request and per-server limits of `tlkeras serve`.

    Args:
        max_body_bytes: int. Largest request body (REST) or message (gRPC); larger ones get 413.
            Defaults to 64 MiB.
        max_json_depth: int. Deepest nesting of JSON arrays and objects in a body; deeper gets 400.
            Defaults to 100.
        request_timeout_seconds: float. Time a client has to send a whole request (line, headers and
            body) once it starts, and to wait idle on a kept-alive connection; then 408 and the
            connection is closed. Defaults to 30.
        max_queued_requests: int. Predict requests admitted at once (being read, queued for a batch
            or running); more get 503 with `Retry-After`. Defaults to 128.
        max_connections: int. Open REST connections; more get 503 with `Retry-After`. Defaults to 256.
        drain_seconds: float. On SIGTERM, how long requests in flight may take to finish before the
            server exits. Defaults to 25 (under Kubernetes' 30 s grace period).
    """

    max_body_bytes: int = 64 * 2**20
    max_json_depth: int = 100
    request_timeout_seconds: float = 30.0
    max_queued_requests: int = 128
    max_connections: int = 256
    drain_seconds: float = 25.0

    def __post_init__(self):
        for name in ("max_body_bytes", "max_json_depth", "max_queued_requests", "max_connections"):
            if getattr(self, name) < 1:
                raise TlkerasError(f"{name} must be at least 1. Received: {name}={getattr(self, name)!r}")
        for name in ("request_timeout_seconds", "drain_seconds"):
            if not getattr(self, name) > 0:
                raise TlkerasError(f"{name} must be positive. Received: {name}={getattr(self, name)!r}")


def busy_error(what: str) -> ServingError:
    """ServingError: A 503 with `Retry-After`, the answer when `what` is full."""
    return ServingError(f"the server is busy ({what}); retry shortly", UNAVAILABLE,
                        {"Retry-After": str(RETRY_AFTER_SECONDS)})


class AdmissionGate:
    """Counts requests in the server and refuses new ones past `limit`, so load never grows memory.

    Args:
        limit: int. Requests admitted at once.

    Example:
    >>> gate = AdmissionGate(128)
    >>> with gate.admit():
    ...     answer(request)
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._count = 0
        self._lock = threading.Lock()

    @property
    def admitted(self) -> int:
        """int: Requests in the server now."""
        return self._count

    @contextlib.contextmanager
    def admit(self):
        """Holds one place for the `with` block; raises a 503 `ServingError` when all are taken."""
        with self._lock:
            if self._count >= self.limit:
                raise busy_error(f"{self.limit} requests are queued or running")
            self._count += 1
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1
