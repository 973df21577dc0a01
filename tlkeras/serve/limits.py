"""What one client may cost the server: body size, JSON depth, time to send a request, queue places.

Each limit is a `tlkeras serve` flag. A request over a limit gets a 4xx (or a 503 with `Retry-After`
when the queue is full) and the server keeps serving everyone else.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
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


_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_malloc_arenas(arenas: int | None = None) -> bool:
    """bool: Caps glibc's malloc arenas for this process (as MALLOC_ARENA_MAX does); True if it did.

    glibc gives threads up to 8 arenas per core; a threaded server's memory then grows with every new
    mix of threads, through fragmentation rather than leaks (measured under tests/test_serve_fuzz.py:
    +300 MiB over 4,000 hostile requests with the default, flat after the first 1,000 with one arena
    per core). A MALLOC_ARENA_MAX set in the environment wins; elsewhere than glibc this does nothing.
    Call it before threads start.

    Args:
        arenas: int, optional. Defaults to one per core, at least 2.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas or max(2, os.cpu_count() or 1)))
    except (OSError, AttributeError):
        return False
