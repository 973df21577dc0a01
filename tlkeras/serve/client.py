"""A small client for TF Serving's REST predict API; it works against `tlkeras serve` and TF Serving alike.

Only the standard library is used, so `tlkeras predict` starts fast and the client can be copied into
any Python environment.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

from tlkeras.errors import TlkerasError


def predict_url(url: str, model: str, version: int | None = None) -> str:
    """str: The `:predict` URL of a model, e.g. "http://localhost:8501/v1/models/flowers:predict".

    Args:
        url: str. The server's base URL, e.g. "http://localhost:8501".
        model: str. The model name.
        version: int, optional. A specific version. Defaults to the newest version the server has.
    """
    if not url.startswith(("http://", "https://")) or "/v1/" in url:
        raise TlkerasError(f"--url must be the server's base URL, like http://localhost:8501. Received: url={url!r}")
    versioned = f"/versions/{int(version)}" if version is not None else ""
    return f"{url.rstrip('/')}/v1/models/{quote(model, safe='')}{versioned}:predict"


def encode_instance(item):
    """Any: One input as TF Serving's JSON: files and bytes as `{"b64": ...}`, strings as text.

    Args:
        item: Path | bytes | str | dict | number | list. A `Path` is read and sent as bytes. A dict maps input
            names to such values, for signatures with several inputs.
    """
    if isinstance(item, os.PathLike):
        try:
            item = Path(item).read_bytes()
        except OSError as err:
            raise TlkerasError(f"cannot read input file: {err.strerror}. Received: path={str(item)!r}") from None
    if isinstance(item, (bytes, bytearray)):
        return {"b64": base64.b64encode(item).decode("ascii")}
    if isinstance(item, dict):
        return {name: encode_instance(value) for name, value in item.items()}
    return item


def predict(
    url: str,
    model: str,
    inputs: list,
    signature_name: str | None = None,
    version: int | None = None,
    input_name: str | None = None,
    timeout: float = 60.0,
) -> list:
    """list: Sends `inputs` as one row-format predict request and returns the server's "predictions".

    Args:
        url: str. The server's base URL, e.g. "http://localhost:8501".
        model: str. The model name.
        inputs: list. One entry per instance: a `Path` (the file's bytes are sent base64-encoded), bytes,
            a str (sent as text), or a dict of input name to such values.
        signature_name: str, optional. Defaults to the server's default ("serving_default").
        version: int, optional. Defaults to the newest version.
        input_name: str, optional. Send each instance as `{input_name: value}`. Defaults to sending bare
            values, which TF Serving accepts for single-input signatures.
        timeout: float. Seconds to wait for the reply. Defaults to 60.

    Example:
    >>> predict("http://localhost:8501", "flowers", [Path("rose.jpg")])
    [{'class_id': 3, 'label': 'rose', 'probabilities': [0.01, 0.02, 0.05, 0.9, 0.02]}]
    >>> predict("http://localhost:8501", "reviews", ["a gripping film"])
    """
    instances = [encode_instance(item) for item in inputs]
    if input_name:
        instances = [{input_name: instance} for instance in instances]
    body = {"instances": instances}
    if signature_name:
        body["signature_name"] = signature_name
    return post_json(predict_url(url, model, version), body, timeout)["predictions"]


def post_json(url: str, body: dict, timeout: float = 60.0) -> dict:
    """dict: POSTs `body` as JSON and returns the JSON reply; server errors become TlkerasError.

    Args:
        url: str. The full endpoint URL.
        body: dict. The request body.
        timeout: float. Seconds to wait. Defaults to 60.
    """
    request = urllib.request.Request(
        url, data=json.dumps(body).encode("utf-8"), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as err:
        text = err.read().decode("utf-8", "replace")
        try:
            message = json.loads(text)["error"]
        except (ValueError, KeyError, TypeError):
            message = text.strip()[:200] or err.reason
        raise TlkerasError(f"{url} answered {err.code}: {message}") from None
    except urllib.error.URLError as err:
        raise TlkerasError(
            f"cannot reach the server ({err.reason}); is `tlkeras serve` or TF Serving running? Received: url={url}"
        ) from None


def wait_until_ready(url: str, process=None, timeout: float = 180.0) -> None:
    """Polls `url` (e.g. a model's status URL) until it answers 200.

    Args:
        url: str. The URL to poll.
        process: subprocess.Popen. The server process; if it exits, waiting stops with its code.
        timeout: float. Seconds to wait. Defaults to 180.

    Raises:
        TlkerasError: when the server exits or does not answer in time.

    Example:
    >>> server = subprocess.Popen(["tlkeras", "serve", "models", "--port", "8501"])
    >>> wait_until_ready("http://127.0.0.1:8501/v1/models/fashion", server)
    """
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise TlkerasError(f"the server exited with code {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TlkerasError(f"the server did not answer {url} within {timeout:.0f} s")
