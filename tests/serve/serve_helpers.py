"""Helpers shared by the serving tests: tiny SavedModels like the exporter's, HTTP calls, a server process.

Tiny SavedModels mimic the exporter: `serving_default` takes encoded images as `image_bytes`, a second
signature takes uint8 pixels, and a text model takes `text`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image

TLKERAS = str(Path(sys.executable).with_name("tlkeras"))
SERVER_START_SECONDS = 120


def image_module(tf, labels):
    class ImageModel(tf.Module):
        def __init__(self):
            super().__init__()
            self.weights = tf.Variable(4.0 * tf.eye(3))
            self.labels = tf.constant(labels)

        def _head(self, pixels):
            mean = tf.reduce_mean(tf.image.resize(pixels, [8, 8]), axis=[1, 2]) / 255.0
            probabilities = tf.nn.softmax(tf.matmul(mean, self.weights))
            class_id = tf.argmax(probabilities, axis=1)
            return {"probabilities": probabilities, "class_id": class_id, "label": tf.gather(self.labels, class_id)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_bytes(self, image_bytes):
            def decode(data):
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                return tf.image.resize(tf.cast(image, tf.float32), [8, 8])

            pixels = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec([8, 8, 3], tf.float32))
            return self._head(pixels)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        def serve_images(self, images):
            return self._head(tf.cast(images, tf.float32))

    module = ImageModel()
    return module, {"serving_default": module.serve_bytes, "serving_images": module.serve_images}


def text_module(tf):
    class TextModel(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            return {"length": tf.strings.length(text, unit="UTF8_CHAR"), "upper": tf.strings.upper(text),
                    "text_bytes": text}

    module = TextModel()
    return module, {"serving_default": module.serve}


def save_atomically(tf, module_and_signatures, version_dir: Path):
    """Writes into a `.tmp-*` sibling and renames, the way the exporter does."""
    module, signatures = module_and_signatures
    temporary = version_dir.parent / f".tmp-{version_dir.name}"
    tf.saved_model.save(module, str(temporary), signatures=signatures)
    os.rename(temporary, version_dir)


def encoded(color, fmt, size=(11, 7)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def http(url, body=None, raw=None, method=None, timeout=30):
    """(status, JSON reply) of one request; `raw` bytes are sent as they are."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class ServerProcess:
    """`tlkeras serve BASE ARGS...` in a subprocess on free ports, its log in a file.

    Attributes: `url` (REST base URL), `grpc_port` (when "--grpc-port" is among the args), `process`,
    `log` (Path).
    """

    def __init__(self, base: Path, *args: str, log: Path | None = None):
        self.log = log or base.parent / f"server-{base.name}.log"
        command = [TLKERAS, "serve", str(base), "--port", "0", *args]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        wants_grpc = "--grpc-port" in args

        def listening():
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            text = self.log.read_text()
            rest = re.search(r"REST API listening on (http://\S+:\d+)", text)
            grpc_port = re.search(r"gRPC API listening on \S+:(\d+)", text)
            return rest and (grpc_port or not wants_grpc) and (rest[1], grpc_port and int(grpc_port[1]))

        try:
            self.url, self.grpc_port = wait_for(listening, SERVER_START_SECONDS, "the server to listen")
        except BaseException:
            self.stop()
            raise
        self.port = int(self.url.rsplit(":", 1)[1])

    def log_text(self) -> str:
        return self.log.read_text()

    def rss_kib(self) -> int:
        """The server's resident memory now, from /proc/<pid>/status."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class RawReply:
    """A reply read off a raw socket: `status` (None if the server closed without one), `headers`, `body`."""

    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def read_reply(sock, timeout: float = 30) -> RawReply:
    """Reads one HTTP reply from `sock` (skipping "100 Continue"); status None if the server closed first."""
    sock.settimeout(timeout)
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return RawReply(None, {}, data)
            data += chunk
        head, data = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        if status != 100:
            break
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", 0))
    while len(data) < length:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            break
        data += chunk
    return RawReply(status, headers, data[:length])


def raw_request(port: int, data: bytes, timeout: float = 30, host: str = "127.0.0.1") -> RawReply:
    """Sends `data` as it is on a new connection and reads the reply."""
    import socket

    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early (413) and closed; its reply may still be readable
        return read_reply(sock, timeout)


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    """A well-formed HTTP/1.1 request with a Content-Length, and `Connection: close`."""
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close"]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
