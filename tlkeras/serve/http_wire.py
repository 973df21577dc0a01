"""HTTP/1.1 on the wire for the REST server: requests read under limits and a deadline, replies written.

http.server's parser answers some malformed requests with HTML or 5xx (505 for "HTTP/2.0", 501 for
unknown methods) and waits forever on a client that stalls. This reader answers every malformed request
with a 4xx `WireError` (the connection then closes, as its bytes can no longer be trusted) and gives a
client `request_timeout_seconds` in all to send a request, however it trickles the bytes.
"""

from __future__ import annotations

import io
import math
import re
import socket
import time
from dataclasses import dataclass, field
from http import HTTPStatus

from tlkeras.serve.errors import HEADERS_TOO_LARGE, PAYLOAD_TOO_LARGE, URI_TOO_LONG, WireError

MAX_LINE_BYTES = 8192  # request line and each header line
MAX_HEADERS = 100
MAX_HEAD_BYTES = 64 * 1024
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token (methods, header names)
_VERSION = re.compile(r"HTTP/([0-9])\.([0-9])")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
_TARGET_CHARS = re.compile(r"[\x21-\x7e]+")  # visible ASCII: anything else must be percent-encoded


class DeadlineReader(io.RawIOBase):
    """A socket's byte stream that raises `TimeoutError` once the current request's deadline passes.

    A per-`recv` timeout does not stop a client that sends one byte every few seconds; this deadline
    covers the whole request. `start` sets it when a request begins.

    Args:
        sock: socket.socket. The connection.
    """

    def __init__(self, sock: socket.socket):
        super().__init__()
        self._sock = sock
        self.deadline = math.inf
        self.received = 0

    def readable(self) -> bool:
        return True

    def start(self, seconds: float) -> None:
        """Gives the next request `seconds` to arrive in full."""
        self.deadline = time.monotonic() + seconds
        self.received = 0

    def readinto(self, buffer) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(remaining)
        count = self._sock.recv_into(buffer)
        self.received += count
        return count


@dataclass
class Request:
    """The head of one HTTP request.

    Args:
        method: str. E.g. "GET".
        target: str. The request target as sent, e.g. "/v1/models/m:predict?x=1".
        version: str. "HTTP/1.1" or "HTTP/1.0".
        headers: dict[str, list[str]]. Lower-cased header name -> its values, in order.
    """

    method: str
    target: str
    version: str
    headers: dict[str, list[str]] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """str | None: The first value of header `name` (case-insensitive)."""
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def tokens(self, name: str) -> list[str]:
        """list[str]: The comma-separated, lower-cased tokens of every `name` header."""
        return [token.strip().lower() for value in self.headers.get(name.lower(), ())
                for token in value.split(",") if token.strip()]

    @property
    def keep_alive(self) -> bool:
        """bool: Whether the client wants the connection kept open after the reply."""
        connection = self.tokens("connection")
        if self.version == "HTTP/1.1":
            return "close" not in connection
        return "keep-alive" in connection

    @property
    def path(self) -> str:
        """str: The target's path, without query or fragment (absolute-form targets are reduced)."""
        target = self.target.split("#", 1)[0].split("?", 1)[0]
        match = re.match(r"https?://[^/]*", target, re.IGNORECASE)
        return (target[match.end():] or "/") if match else target


def read_request_head(rfile) -> Request | None:
    """Request | None: The next request's line and headers; None if the client closed the connection first.

    Args:
        rfile: BufferedReader. The connection's input.

    Raises:
        WireError: 400 for a malformed line or header, 414 for a long target, 431 for long or many headers.
        TimeoutError: when the request does not arrive before the reader's deadline.
    """
    line = b""
    for _ in range(4):  # RFC 9112 lets a server ignore empty lines before a request
        line = rfile.readline(MAX_LINE_BYTES + 1)
        if line not in (b"\r\n", b"\n"):
            break
    if not line:
        return None
    if len(line) > MAX_LINE_BYTES:
        raise WireError(f"the request line is longer than {MAX_LINE_BYTES} bytes", URI_TOO_LONG)
    if not line.endswith(b"\n"):
        raise WireError("the connection closed in the middle of the request line")
    text = line.rstrip(b"\r\n").decode("latin-1")
    parts = text.split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        raise WireError(f"malformed request line; expected 'METHOD /path HTTP/1.1'. Received: {printable(text)}")
    method, target, version = parts
    found = _VERSION.fullmatch(version)
    if found is None:
        raise WireError(f"malformed HTTP version. Received: {printable(version)}")
    if found[1] != "1":
        raise WireError(f"this server speaks HTTP/1.0 and HTTP/1.1. Received: {printable(version)}")
    if not _TARGET_CHARS.fullmatch(target) or not target.startswith(("/", "http://", "https://")):
        raise WireError(f"malformed request target; it must be a path of visible ASCII characters (others "
                        f"percent-encoded). Received: {printable(target)}")
    request = Request(method, target, f"HTTP/1.{found[2]}" if found[2] == "0" else "HTTP/1.1")
    head_bytes = len(line)
    for _ in range(MAX_HEADERS + 1):
        line = rfile.readline(MAX_LINE_BYTES + 1)
        head_bytes += len(line)
        if len(line) > MAX_LINE_BYTES or head_bytes > MAX_HEAD_BYTES:
            raise WireError(f"a header line is longer than {MAX_LINE_BYTES} bytes, or all of them than "
                            f"{MAX_HEAD_BYTES}", HEADERS_TOO_LARGE)
        if not line.endswith(b"\n"):
            raise WireError("the connection closed in the middle of the request headers")
        if line in (b"\r\n", b"\n"):
            return request
        text = line.rstrip(b"\r\n").decode("latin-1")
        name, colon, value = text.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise WireError(f"malformed header line (folded lines are not accepted). Received: {printable(text)}")
        request.headers.setdefault(name.lower(), []).append(value.strip(" \t"))
    raise WireError(f"more than {MAX_HEADERS} headers", HEADERS_TOO_LARGE)


def declared_length(request: Request) -> int | None:
    """int | None: The body length the headers declare; None for a chunked body.

    Raises:
        WireError: for a Transfer-Encoding other than "chunked", for both Content-Length and
            Transfer-Encoding (the request-smuggling ambiguity), and for malformed or conflicting
            Content-Length values.
    """
    encodings = request.tokens("transfer-encoding")
    if encodings:
        if encodings != ["chunked"]:
            raise WireError(f"only 'Transfer-Encoding: chunked' is accepted. Received: {printable(str(encodings))}")
        if "content-length" in request.headers:
            raise WireError("a request must not carry both Content-Length and Transfer-Encoding")
        return None
    lengths = {value.strip() for text in request.headers.get("content-length", ()) for value in text.split(",")}
    if not lengths:
        return 0
    if len(lengths) > 1 or not _CONTENT_LENGTH.fullmatch(next(iter(lengths))):
        raise WireError(f"bad Content-Length header. Received: {printable(', '.join(sorted(lengths)))}")
    return int(lengths.pop())


def read_body(rfile, request: Request, max_bytes: int) -> bytes:
    """bytes: The request body, by Content-Length or chunked, refusing more than `max_bytes`.

    Args:
        rfile: BufferedReader. The connection's input, positioned after the head.
        request: Request. The head.
        max_bytes: int. The body-size limit.

    Raises:
        WireError: 413 past `max_bytes`, 400 for a malformed or truncated body.
        TimeoutError: when the body does not arrive before the reader's deadline.
    """
    length = declared_length(request)
    if length is not None:
        if length > max_bytes:
            raise too_large(length, max_bytes)
        body = rfile.read(length)
        if len(body) < length:
            raise WireError(f"the connection closed after {len(body)} of {length} body bytes")
        return body
    chunks, total = [], 0
    while True:
        line = rfile.readline(1025)
        size_text = line.split(b";", 1)[0].strip()
        if not line.endswith(b"\n") or not _CHUNK_SIZE.fullmatch(size_text):
            raise WireError(f"malformed chunk size line. Received: {printable(line[:80].decode('latin-1'))}")
        size = int(size_text, 16)
        if size == 0:
            break
        total += size
        if total > max_bytes:
            raise too_large(total, max_bytes)
        chunk = rfile.read(size)
        if len(chunk) < size or rfile.readline(3) not in (b"\r\n", b"\n"):
            raise WireError("a chunk is shorter than its size line says, or not followed by CRLF")
        chunks.append(chunk)
    for _ in range(MAX_HEADERS + 1):  # trailer fields, which are read and ignored
        line = rfile.readline(MAX_LINE_BYTES + 1)
        if line in (b"\r\n", b"\n"):
            return b"".join(chunks)
        if not line.endswith(b"\n"):
            raise WireError("the chunked body has a malformed or truncated trailer")
    raise WireError(f"more than {MAX_HEADERS} trailer lines", HEADERS_TOO_LARGE)


def too_large(size: int, max_bytes: int) -> WireError:
    """WireError: The 413 for a body of `size` bytes over `max_bytes`."""
    return WireError(f"the request body has {size} bytes; the limit is {max_bytes} (--max-body-bytes)",
                     PAYLOAD_TOO_LARGE)


def response_bytes(status: int, body: bytes, headers: dict[str, str], close: bool, head_only: bool = False,
                   content_type: str = "application/json") -> bytes:
    """bytes: A whole HTTP/1.1 reply, ready for one `sendall`.

    Args:
        status: int. The status code.
        body: bytes. The reply body.
        headers: dict[str, str]. Extra headers.
        close: bool. Announce `Connection: close`.
        head_only: bool. Leave the body out (a reply to HEAD). Defaults to False.
        content_type: str. Defaults to "application/json".
    """
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Client Closed Request" if status == 499 else "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
             "Server: tlkeras-serve"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def printable(text: str, limit: int = 120) -> str:
    """str: `text` with control and non-ASCII characters escaped and cut to `limit`, safe to log or echo."""
    escaped = text.encode("unicode_escape").decode("ascii")
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."

