"""The REST server's HTTP layer under abuse: stalled clients, huge or malformed bodies, full queues.

A `RestServer` runs in this process over a fake repository whose one model is numpy
(`y = 2 * x.sum(axis=1) + 1`) and can be made to block, so queue and timeout behaviour is exact.
"""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serve_helpers import raw_request, read_reply, request_bytes

from tlkeras.serve.errors import NOT_FOUND, ServingError
from tlkeras.serve.limits import ServerLimits
from tlkeras.serve.repository import ServableVersion, Signature, VersionStatus
from tlkeras.serve.rest import RestServer

PREDICT = "/v1/models/m:predict"
GOOD_BODY = json.dumps({"instances": [[1.0, 2.0]]}).encode()


class BlockingServable(ServableVersion):
    def __init__(self, tf):
        self.name, self.version = "m", 1
        specs = {"x": tf.TensorSpec([None, 2], tf.float32, name="x")}
        self.signatures = {"serving_default": Signature("serving_default", None, specs, {"y": None})}
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Semaphore(0)

    def run(self, signature, arrays):
        self.started.release()
        self.release.wait(30)
        return {"y": 2 * arrays["x"].sum(axis=1) + 1}


class FakeRepository:
    def __init__(self, servable):
        self.servable = servable
        self.names_asked = []

    def get(self, name, version=None, label=None):
        self.names_asked.append(name)
        if name != "m":
            raise ServingError(f"model '{name}' is not served here", NOT_FOUND)
        return self.servable

    def status(self, name, version=None, label=None):
        self.get(name)
        return [VersionStatus(1, "AVAILABLE")]


@pytest.fixture(scope="module")
def tf():
    import tensorflow as tf

    return tf


@pytest.fixture
def make_server(tf):
    started = []

    def make(**limits):
        servable = BlockingServable(tf)
        server = RestServer(FakeRepository(servable), "127.0.0.1", 0, ServerLimits(**limits))
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        started.append(server)
        return server, server.server_address[1], servable

    yield make
    for server in started:
        server.shutdown()
        server.server_close()


def test_good_requests_and_keep_alive(make_server):
    server, port, _ = make_server()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        request = request_bytes("POST", PREDICT, GOOD_BODY).replace(b"Connection: close", b"Connection: keep-alive")
        for _ in range(2):  # two requests on one connection
            sock.sendall(request)
            reply = read_reply(sock)
            assert (reply.status, reply.json()) == (200, {"predictions": [7.0]})
            assert "connection" not in reply.headers


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"])
def test_unsupported_methods_get_405_with_allow(make_server, method):
    _, port, _ = make_server()
    reply = raw_request(port, request_bytes(method, PREDICT, b"{}"))
    assert reply.status == 405 and reply.headers["allow"] == "POST"
    assert f"method={method}" in reply.json()["error"]
    reply = raw_request(port, request_bytes(method, "/v1/models/m/metadata"))
    assert reply.status == 405 and reply.headers["allow"] == "GET, HEAD"


def test_unknown_urls_get_404_and_head_gets_no_body(make_server):
    _, port, _ = make_server()
    for path in ("/", "/v2/models/m", "/v1/models", "/v1/models/m:explode", "/v1/models/m/versions/1/x"):
        reply = raw_request(port, request_bytes("GET", path))
        assert reply.status == 404 and "no such endpoint" in reply.json()["error"], path
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_bytes("HEAD", "/v1/models/m"))
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")  # headers only


def test_path_tricks_are_only_names_looked_up(make_server):
    server, port, _ = make_server()
    for path in ("/v1/models/..%2F..%2Fetc%2Fpasswd:predict", "/v1/models/m%00:predict", "/v1/models/%2e%2e:predict"):
        reply = raw_request(port, request_bytes("POST", path, GOOD_BODY))
        assert reply.status == 404, path
    assert server.repository.names_asked == ["../../etc/passwd", "m\x00", ".."]
    assert raw_request(port, request_bytes("GET", "/v1/models/m/../m")).status == 404
    assert raw_request(port, request_bytes("GET", "/v1/models/m/versions/%31")).status == 400


@pytest.mark.parametrize("raw", [
    b"GET\r\n\r\n",
    b"GET /v1/models/m\r\n\r\n",  # HTTP/0.9
    b"GET /v1/models/m HTTP/2.0\r\n\r\n",
    b"GET /v1/models/m HTTP/1.1 extra\r\n\r\n",
    b"G\x00T /v1/models/m HTTP/1.1\r\n\r\n",
    b"GET /v1/models/m\x7f HTTP/1.1\r\n\r\n",
    b"GET /v1/models/m HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /v1/models/m HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
    b"POST /v1/models/m:predict HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n",
    b"POST /v1/models/m:predict HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n",
    b"POST /v1/models/m:predict HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"POST /v1/models/m:predict HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST /v1/models/m:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"POST /v1/models/m:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    b"POST /v1/models/m:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
])
def test_malformed_http_gets_a_json_400(make_server, raw):
    _, port, _ = make_server()
    reply = raw_request(port, raw)
    assert reply.status == 400, raw
    assert reply.headers["content-type"] == "application/json" and reply.json()["error"]


def test_long_request_lines_and_many_headers(make_server):
    _, port, _ = make_server()
    assert raw_request(port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n").status == 414
    many = b"".join(b"X-%d: y\r\n" % i for i in range(101))
    assert raw_request(port, b"GET /v1/models/m HTTP/1.1\r\n" + many + b"\r\n").status == 431
    assert raw_request(port, b"GET /v1/models/m HTTP/1.1\r\nX: " + b"y" * 9000 + b"\r\n\r\n").status == 431


def test_chunked_bodies_are_read(make_server):
    _, port, _ = make_server()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (GOOD_BODY[:5], GOOD_BODY[5:]))
    reply = raw_request(port, b"POST /v1/models/m:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + chunks + b"0\r\nX-Trailer: 1\r\n\r\n")
    assert (reply.status, reply.json()) == (200, {"predictions": [7.0]})


def test_body_size_limit(make_server):
    _, port, _ = make_server(max_body_bytes=1000)
    huge = b"POST /v1/models/m:predict HTTP/1.1\r\nContent-Length: 99999999999999999\r\n\r\n"
    reply = raw_request(port, huge)
    assert reply.status == 413 and "--max-body-bytes" in reply.json()["error"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # refused before "100 Continue"
        sock.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 413 ")
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    reply = raw_request(port, b"POST /v1/models/m:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2)
    assert reply.status == 413
    reply = raw_request(port, request_bytes("POST", PREDICT, b"[" * 500 + b"]" * 500))  # under the size limit
    assert reply.status == 400 and "--max-json-depth" in reply.json()["error"]


def test_deep_nesting_is_a_fast_400(make_server):
    _, port, _ = make_server()
    start = time.monotonic()
    for body in (b"[" * 200_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000, b"[" * 101 + b"]" * 101):
        reply = raw_request(port, request_bytes("POST", PREDICT, body))
        assert reply.status == 400 and "deep" in reply.json()["error"]
    assert time.monotonic() - start < 5
    ok = json.dumps({"instances": [[1.0, 2.0]], "x": [[[["[[[[[[" * 50]]]]}).encode()  # brackets in strings
    assert raw_request(port, request_bytes("POST", PREDICT, ok)).status == 200


def test_stalled_clients_time_out_without_holding_up_others(make_server):
    _, port, _ = make_server(request_timeout_seconds=1.0)
    silent = socket.create_connection(("127.0.0.1", port))
    half_line = socket.create_connection(("127.0.0.1", port))
    half_line.sendall(b"POST /v1/models/m:pre")
    half_body = socket.create_connection(("127.0.0.1", port))
    half_body.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"inst")
    trickle = socket.create_connection(("127.0.0.1", port))
    start = time.monotonic()
    answered = raw_request(port, request_bytes("POST", PREDICT, GOOD_BODY))  # meanwhile, a good client
    assert answered.status == 200 and time.monotonic() - start < 0.9

    def trickle_headers():  # a byte every 0.2 s: per-recv timeouts would never fire
        try:
            for byte in b"GET /v1/models/m HTTP/1.1\r\nX-Slow: " + b"y" * 100:
                trickle.send(bytes([byte]))
                time.sleep(0.2)
        except OSError:
            return time.monotonic() - start

    with ThreadPoolExecutor(1) as pool:
        trickled = pool.submit(trickle_headers)
        assert read_reply(half_line, 5).status == 408
        reply = read_reply(half_body, 5)
        assert reply.status == 408 and "--request-timeout-seconds" in reply.json()["error"]
        silent.settimeout(5)
        assert silent.recv(100) == b""  # nothing sent: closed without a reply
        assert time.monotonic() - start < 3
        assert read_reply(trickle, 5).status == 408
        assert trickled.result() < 4
    for sock in (silent, half_line, half_body, trickle):
        sock.close()


def test_full_queue_answers_503_with_retry_after(make_server):
    server, port, servable = make_server(max_queued_requests=1)
    servable.release.clear()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(raw_request, port, request_bytes("POST", PREDICT, GOOD_BODY))
        assert servable.started.acquire(timeout=10)
        reply = raw_request(port, request_bytes("POST", PREDICT, GOOD_BODY))
        assert reply.status == 503 and reply.headers["retry-after"] == "1" and "busy" in reply.json()["error"]
        assert raw_request(port, request_bytes("GET", "/v1/models/m")).status == 200  # status is not queued
        servable.release.set()
        assert first.result().status == 200
    assert server.gate.admitted == 0
    assert raw_request(port, request_bytes("POST", PREDICT, GOOD_BODY)).status == 200


def test_connection_limit_answers_503(make_server):
    _, port, _ = make_server(max_connections=2)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    time.sleep(0.2)
    reply = raw_request(port, request_bytes("GET", "/v1/models/m"))
    assert reply.status == 503 and reply.headers["retry-after"] == "1"
    for sock in idle:
        sock.close()
    time.sleep(0.2)
    assert raw_request(port, request_bytes("GET", "/v1/models/m")).status == 200


def test_bad_payloads_get_400_and_the_reply_matches_numpy(make_server):
    _, port, _ = make_server()
    cases = {
        b'{"instances": [["a", "b"]]}': "takes numbers",
        b'{"instances": [[1, 2, 3]]}': "expects shape",
        b'{"instances": [[1, 2]], "signature_name": 3}': "must be a string",
        b'{"instances": [[1, 2]], "signature_name": "nope"}': "no signature 'nope'",
        b'{"instances": [[1e999999, 2]]}': None,  # Infinity: a float, fine
        b'{"instances": [[' + b"9" * 5000 + b", 2]]}": "not valid JSON",
        b"\xff\xfe\x00garbage": "not valid JSON",
        b'{"instances": [[1, 2]]': "not valid JSON",
    }
    for body, message in cases.items():
        reply = raw_request(port, request_bytes("POST", PREDICT, body))
        if message is None:
            assert reply.status == 200
        else:
            assert reply.status == 400 and message in reply.json()["error"], body[:40]
    x = np.array([[0.5, 0.25], [3.0, -1.0]], np.float32)
    reply = raw_request(port, request_bytes("POST", PREDICT, json.dumps({"inputs": x.tolist()}).encode()))
    assert reply.json() == {"outputs": (2 * x.sum(axis=1) + 1).tolist()}
