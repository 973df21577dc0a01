"""`tlkeras serve` under a stream of malformed and hostile requests: never a 5xx, never a crash.

The real server runs in a subprocess (batching on, a models.config with a label) over the tiny image
and text models. 1,500 requests, in three rounds of 500, go at it from 8 threads: random bytes, mutated good requests,
deep nesting, wrong types, huge bodies, path tricks, odd methods, stalled connections, bad base64,
bad UTF-8, absurd Content-Length, chunked nonsense and header nonsense. Afterwards the server must
be alive, its memory bounded (flat by the last round), its log free of tracebacks, and good requests must get the same answers
as before.
"""

from __future__ import annotations

import json
import random
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from serve_helpers import ServerProcess, b64, encoded, image_module, read_reply, save_atomically, text_module

MAX_BODY = 1 << 20
TIMEOUT_SECONDS = 1.0
ROUNDS, ROUND = 3, 500
RSS_GROWTH_LIMIT_MIB = 200
RSS_LAST_ROUND_GROWTH_MIB = 20

pytestmark = pytest.mark.slow


@dataclass
class Case:
    kind: str
    data: bytes
    stall: bool = False  # keep the connection open after sending, as a slowloris client does
    silent_ok: bool = False  # the server may close without a reply (nothing was sent)


def _request(method="POST", path="/v1/models/img:predict", body=b"", headers=None, version="HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "Host: x"]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _json(value) -> bytes:
    return json.dumps(value).encode()


class Generator:
    """Seeded makers of hostile requests, one method per kind."""

    def __init__(self, seed: int, png: bytes):
        self.rng = random.Random(seed)
        self.png = png
        self.good = [
            _request(body=_json({"instances": [b64(png)]})),
            _request(body=_json({"signature_name": "serving_images", "inputs": [[[[1, 2, 3]]]]})),
            _request(path="/v1/models/txt:predict", body=_json({"instances": ["abc"]})),
            _request("GET", "/v1/models/img/labels/stable/metadata"),
        ]

    def random_bytes(self):
        return Case("random bytes", bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 3000))))

    def random_body(self):
        body = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(0, 3000)))
        return Case("random body", _request(body=body))

    def mutated(self):
        data = bytearray(self.rng.choice(self.good))
        for _ in range(self.rng.randrange(1, 8)):
            where = self.rng.randrange(len(data))
            action = self.rng.randrange(3)
            if action == 0:
                data[where] = self.rng.randrange(256)
            elif action == 1:
                del data[where:where + self.rng.randrange(1, 20)]
            else:
                data[where:where] = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 20)))
        return Case("mutated good request", bytes(data))

    def deep_nesting(self):
        depth = self.rng.choice([101, 150, 1000, 5000, 100_000, 400_000])
        opener, closer = self.rng.choice([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"b":', b"}]")])
        body = opener * depth + b"1" + closer * (depth if self.rng.random() < 0.5 else 0)
        if len(body) > MAX_BODY:
            body = opener * (MAX_BODY // len(opener))
        wrapped = self.rng.random() < 0.5
        return Case("deep nesting", _request(body=b'{"instances": ' + body + b"}" if wrapped else body))

    def wrong_types(self):
        junk = self.rng.choice([None, True, 1, -1.5, "s", [], {}, [[]], [None], {"b64": None}, {"b64": 1},
                                [[[[1.5, 2, 3]]]], [[[["a", "b", "c"]]]], [[[[-1, 2, 300]]]], 1e308, [1] * 50,
                                {"image_bytes": 3}, {"images": "x"}, [[1, [2]]], {"": ""}, [{"b64": ["x"]}]])
        body = self.rng.choice([
            {"instances": junk}, {"inputs": junk}, {"instances": [junk]}, {"inputs": {"images": junk}},
            {"signature_name": junk, "instances": [b64(self.png)]}, {"instances": [b64(self.png)], "inputs": junk},
            {"signature_name": "serving_images", "inputs": junk}, {"signature_name": "serving_images",
                                                                   "instances": [junk]},
            junk, {"instances": [{"image_bytes": junk}]}, {"instances": [b64(self.png)], "signature_name": "x"},
        ])
        path = self.rng.choice(["/v1/models/img:predict", "/v1/models/txt:predict",
                                "/v1/models/img/labels/stable:predict", "/v1/models/img/versions/1:predict"])
        return Case("wrong types", _request(path=path, body=_json(body)))

    def huge_body(self):
        choice = self.rng.randrange(4)
        if choice == 0:
            length = self.rng.choice([MAX_BODY + 1, 10**9, 10**15, 10**18, 9_999_999_999_999_999_999])
            return Case("huge body", _request(body=b"", headers={}).replace(b"Content-Length: 0",
                                                                           f"Content-Length: {length}".encode()))
        if choice == 1:
            body = b'{"instances": ["' + b"a" * (MAX_BODY + 1000) + b'"]}'
            return Case("huge body", _request(body=body))
        if choice == 2:
            chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
            head = b"POST /v1/models/img:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            return Case("huge body", head + chunk * (MAX_BODY // 0x10000 + 2) + b"0\r\n\r\n")
        head = b"POST /v1/models/img:predict HTTP/1.1\r\nContent-Length: 50000000\r\nExpect: 100-continue\r\n\r\n"
        return Case("huge body", head)

    def path_trick(self):
        name = self.rng.choice(["..", "../img", "..%2Fimg", "img%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e", "img%00",
                                "img\\..\\txt", "%ff%fe", "img%", "%%%", "img/versions/..", "/etc/passwd",
                                "img/versions/99999999999999999999999", "img/versions/-1", "img/labels/%00",
                                "img/labels/nope", "img/labels/" + "x" * 3000, "a" * 5000, "img%252F..",
                                "img/versions/1/../../../txt", "img;rm -rf", "img%0d%0aX-Injected:%201"])
        action = self.rng.choice(["", ":predict", "/metadata", ":classify", "?x=../../", "#frag", "/", "//"])
        prefix = self.rng.choice(["/v1/models/", "http://evil/v1/models/", "//v1/models/", "/v1//models/",
                                  "/V1/MODELS/", "/v1/models/./"])
        method = "POST" if action in (":predict", ":classify") else "GET"
        return Case("path trick", _request(method, prefix + name + action, _json({"instances": ["x"]})
                                           if method == "POST" else b""))

    def wrong_method(self):
        method = self.rng.choice(["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "HEAD", "PROPFIND",
                                  "get", "P0ST", "GET\x00", "G E T", "", "X" * 200, "\xff\xfe"])
        path = self.rng.choice(["/v1/models/img", "/v1/models/img:predict", "/v1/models/img/metadata", "*",
                                "/v1/models/img/labels/stable"])
        return Case("wrong method", _request(method, path, b"{}" if self.rng.random() < 0.5 else b""))

    def bad_base64(self):
        value = self.rng.choice(["%%%", "YWJj=", "YW Jj", "====", "a", "é", "\u0000", "YWJj\n", "Y" * 1001,
                                 "".join(self.rng.choice("ABC+/=-_!") for _ in range(50))])
        return Case("bad base64", _request(body=_json({"instances": [{"b64": value}]})))

    def bad_utf8(self):
        junk = self.rng.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80",
                                b"\xe2\x82", b"\\ud800", b"\\udfff\\ud800", b"\x00"])
        body = self.rng.choice([b'{"instances": ["' + junk + b'"]}', b'{"' + junk + b'": 1}',
                                b'{"instances": ["a"], "signature_name": "' + junk + b'"}'])
        path = self.rng.choice(["/v1/models/txt:predict", "/v1/models/img:predict"])
        return Case("bad utf-8", _request(path=path, body=body))

    def absurd_content_length(self):
        value = self.rng.choice(["-1", "1e9", " 12", "0x10", "12abc", "99999999999999999999999999", "\xb2", "",
                                 "5, 6", "+5", "1 2", "٣"])
        head = f"POST /v1/models/img:predict HTTP/1.1\r\nContent-Length: {value}\r\n\r\n".encode()
        return Case("absurd content-length", head + b'{"instances": []}')

    def chunked_nonsense(self):
        body = self.rng.choice([b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcdef\r\n0\r\n\r\n", b"-1\r\n\r\n",
                                b"fffffffffffffffffff\r\n", b"3;" + b"x" * 2000 + b"\r\nabc\r\n0\r\n\r\n",
                                b"3\r\nabc", b"\r\n\r\n", b"0\r\n" + b"X: y\r\n" * 150 + b"\r\n",
                                b"5\r\nabc\r\n", b"1\r\n{\r\n0\r\n\r\n", b"0x3\r\nabc\r\n0\r\n\r\n"])
        encoding = self.rng.choice(["chunked", "chunked, gzip", "gzip", "identity", "CHUNKED", "chunked\x00"])
        head = f"POST /v1/models/img:predict HTTP/1.1\r\nTransfer-Encoding: {encoding}\r\n"
        if self.rng.random() < 0.2:
            head += "Content-Length: 5\r\n"
        return Case("chunked nonsense", head.encode("latin-1") + b"\r\n" + body)

    def header_nonsense(self):
        line = self.rng.choice([b"NoColon", b": empty name", b"X Y: z", b"X: " + b"y" * 10_000, b" folded",
                                b"X:\x00\x01", b"Connection: keep-alive, close, upgrade", b"Expect: 100-continue",
                                b"\xff\xfe: \xff"])
        many = b"".join(b"H%d: v\r\n" % i for i in range(self.rng.choice([1, 150])))
        version = self.rng.choice([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.1.1", b"HTTPS/1.1",
                                   b"http/1.1", b"HTTP/9.9", b""])
        return Case("header nonsense", b"GET /v1/models/img " + version + b"\r\n" + line + b"\r\n" + many + b"\r\n")

    def stalled(self):
        data = self.rng.choice([b"", b"P", b"POST /v1/models/img:pred", _request(body=b"")[:-2],
                                _request(body=b'{"instances": ["abc"]}')[:-5],
                                b"POST /v1/models/img:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"])
        return Case("stalled", data, stall=True, silent_ok=not data)

    def pipelined(self):
        good, junk = self.rng.choice(self.good), self.random_bytes().data[:200]
        return Case("pipelined good + junk", good.replace(b"Host: x", b"Host: x\r\nConnection: keep-alive") + junk)

    def cases(self, count: int) -> list[Case]:
        makers = [self.random_bytes, self.random_body, self.mutated, self.mutated, self.deep_nesting,
                  self.wrong_types, self.wrong_types, self.huge_body, self.path_trick, self.wrong_method,
                  self.bad_base64, self.bad_utf8, self.absurd_content_length, self.chunked_nonsense,
                  self.header_nonsense, self.stalled, self.pipelined]
        return [self.rng.choice(makers)() for _ in range(count)]


def _exchange(port: int, case: Case):
    """The statuses of every reply the server sends on one connection (pipelined requests get several)."""
    statuses = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(case.data)
            if not case.stall:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered early (a 413, say) and closed
        while True:
            reply = read_reply(sock, timeout=20)
            if reply.status is None:
                break
            statuses.append(reply.status)
            if reply.headers.get("connection") == "close":
                break
    return statuses


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    import tensorflow as tf

    base = tmp_path_factory.mktemp("fuzz_models")
    (base / "img").mkdir()
    (base / "txt").mkdir()
    save_atomically(tf, image_module(tf, ["red", "green", "blue"]), base / "img" / "1")
    save_atomically(tf, text_module(tf), base / "txt" / "1")
    (base / "models.config").write_text('model_config_list { config { name: "img" base_path: "/models/img" '
                                        'model_platform: "tensorflow" version_labels { key: "stable" value: 1 } } }')
    (base / "batching_parameters.txt").write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 2000 }")
    process = ServerProcess(base, "--enable-batching", "--max-body-bytes", str(MAX_BODY),
                            "--request-timeout-seconds", str(TIMEOUT_SECONDS), "--max-queued-requests", "16")
    try:
        yield process
    finally:
        process.stop()


def test_a_thousand_hostile_requests_never_get_a_5xx(fuzz_server):
    png = encoded((200, 30, 30), "PNG")
    generator = Generator(seed=1234, png=png)
    good = [("img:predict", {"instances": [b64(png), b64(encoded((10, 10, 240), "JPEG"))]}),
            ("img:predict", {"signature_name": "serving_images", "inputs": {"images": [[[[9, 200, 30]] * 3]]}}),
            ("txt:predict", {"instances": ["héllo", "ab"]}),
            ("img/labels/stable:predict", {"instances": [b64(png)]}),
            ("img/metadata", None), ("img", None)]

    def good_answers():
        from serve_helpers import http

        return [http(f"{fuzz_server.url}/v1/models/{path}", body) for path, body in good]

    before = good_answers()
    assert all(status == 200 for status, _ in before)
    rss_mib = [fuzz_server.rss_kib() / 1024]
    statuses: Counter = Counter()
    failures = []
    start = time.monotonic()
    for round_cases in (generator.cases(ROUND) for _ in range(ROUNDS)):
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda c: _exchange(fuzz_server.port, c), round_cases))
        for case, result in zip(round_cases, results, strict=True):
            statuses.update(result)
            if any(status >= 500 for status in result) or (not result and not case.silent_ok):
                failures.append((case.kind, case.data[:160], result))
        assert fuzz_server.process.poll() is None, f"server died:\n{fuzz_server.log_text()[-3000:]}"
        rss_mib.append(fuzz_server.rss_kib() / 1024)
    seconds = time.monotonic() - start
    print(f"\n{ROUND * ROUNDS} hostile requests in {seconds:.1f} s; replies by status: "
          f"{dict(sorted(statuses.items()))}; RSS (MiB) before and after each round: {[round(r) for r in rss_mib]}")

    assert not failures, f"{len(failures)} bad outcomes, e.g. {failures[:5]}"
    assert sum(statuses.values()) >= 1000 and set(statuses) <= set(range(200, 500))
    assert statuses[400] > 300 and statuses[404] and statuses[405] and statuses[408] and statuses[413]
    assert fuzz_server.process.poll() is None
    assert rss_mib[-1] - rss_mib[0] < RSS_GROWTH_LIMIT_MIB
    assert rss_mib[-1] - rss_mib[-2] < RSS_LAST_ROUND_GROWTH_MIB  # flat: the first round's growth is not a leak
    log = fuzz_server.log_text()
    assert "Traceback" not in log and "internal server error" not in log
    assert good_answers() == before
