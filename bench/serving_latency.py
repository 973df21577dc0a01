"""`tlkeras serve` (REST, subprocess on 127.0.0.1) vs an in-process call of the same SavedModel signature.

A Lite0 feature-extraction recipe is trained for one epoch on a few Fashion-MNIST images and exported with
`export_run`. Both sides get the same PNG bytes (one 28x28 test image) and run `serving_default`; the
server decodes JSON + base64 and encodes the reply on top. Single requests are interleaved
(in-process, then HTTP); the concurrency-8 figures use a pool of 8 threads on each side in turn. The
server and this client share the machine's cores.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from bench.common import VENV_BIN, fashion_mnist_folder, median, percentile
from tlkeras.serve.client import wait_until_ready

NAME = "serving_latency"
TARGET = "single-request p50 latency, tlkeras serve / in-process signature call <= 1.3"
BACKBONE = "efficientnet_lite0_imagenet"


def settings(quick: bool) -> dict:
    if quick:
        return dict(requests=20, concurrent_requests=24, image_size=96)
    return dict(requests=200, concurrent_requests=200, image_size=224)


def run(quick: bool, workdir) -> dict:
    import base64

    import tensorflow as tf

    cfg = settings(quick)
    version_dir = export_fashion_model(workdir, cfg)
    png = next(iter(sorted((fashion_mnist_folder(workdir, 2, 10)["test"]).rglob("*.png")))).read_bytes()
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    input_name = list(signature.structured_input_signature[1])[0]

    def in_process():
        outputs = signature(**{input_name: tf.constant([png])})
        return {k: v.numpy() for k, v in outputs.items()}

    port = free_port()
    server = subprocess.Popen([str(VENV_BIN / "tlkeras"), "serve", str(version_dir.parent.parent), "--host",
                               "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    try:
        base = f"http://127.0.0.1:{port}/v1/models/{version_dir.parent.name}"
        wait_until_ready(base, server)
        body = json.dumps({"instances": [{"b64": base64.b64encode(png).decode()}]}).encode()

        def over_http():
            request = urllib.request.Request(base + ":predict", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as reply:
                return json.loads(reply.read())

        for _ in range(3):  # warm both paths
            in_process()
            over_http()
        local, remote = [], []
        for _ in range(cfg["requests"]):
            local.append(timed(in_process))
            remote.append(timed(over_http))
        conc_local = _concurrent(in_process, cfg["concurrent_requests"])
        conc_remote = _concurrent(over_http, cfg["concurrent_requests"])
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    ratio = median(remote) / median(local)
    figures = {
        "ratio_p50_serve_over_in_process": round(ratio, 3),
        "concurrency_1": {"in_process": latency_stats(local), "serve": latency_stats(remote)},
        "concurrency_8": {"in_process": conc_local, "serve": conc_remote},
        "requests": cfg["requests"], "image_size": cfg["image_size"], "png_bytes": len(png),
    }
    extra_ms = (median(remote) - median(local)) * 1e3
    return {"figures": figures, "met": ratio <= 1.3,
            "cause": (f"the REST path adds {extra_ms:.1f} ms per request (HTTP on loopback, JSON and base64 "
                      f"decoding, reply encoding) to a {median(local) * 1e3:.1f} ms model call; the server and "
                      f"client share the 2 cores"),
            "summary": (f"p50 {median(remote) * 1e3:.1f} ms serve vs {median(local) * 1e3:.1f} ms in-process "
                        f"(ratio {ratio:.2f}); at concurrency 8: {conc_remote['requests_per_second']:.1f} vs "
                        f"{conc_local['requests_per_second']:.1f} req/s")}


# (workdir, image size) -> version folder: the serving benchmarks of one run share one export per size.
_EXPORTED: dict = {}


def export_fashion_model(workdir, cfg):
    """The version folder of a Lite0 feature-extraction recipe trained for one epoch on 20 Fashion-MNIST
    images at `cfg["image_size"]` and exported to `workdir/models-<size>px/fashion/1`; trained and exported
    once per run and size."""
    key = (str(workdir), cfg["image_size"])
    if key in _EXPORTED and _EXPORTED[key].is_dir():
        return _EXPORTED[key]
    from tlkeras.export import export_run
    from tlkeras.recipes.config import parse_recipe
    from tlkeras.recipes.trainer import train

    folder = f"{cfg['image_size']}px"
    data = fashion_mnist_folder(workdir, 2, 10)
    recipe = parse_recipe({
        "backbone": BACKBONE,
        "data": {"train": str(data["train"]), "image_size": [cfg["image_size"]] * 2, "batch_size": 8},
        "schedule": {"strategy": "feature_extraction", "epochs": 1},
        "output_dir": str(workdir / "runs" / f"serving-{folder}"),
    })
    result = train(recipe, verbose=0)
    models = workdir / f"models-{folder}"
    if models.exists():
        import shutil

        shutil.rmtree(models)
    _EXPORTED[key] = export_run(result.run_dir, models, "fashion")
    return _EXPORTED[key]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def latency_stats(seconds) -> dict:
    return {"p50_ms": round(percentile(seconds, 50) * 1e3, 2), "p99_ms": round(percentile(seconds, 99) * 1e3, 2)}


def _concurrent(fn, n: int, workers: int = 8) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        latencies = list(pool.map(lambda _: timed(fn), range(n)))
    wall = time.perf_counter() - start
    return {**latency_stats(latencies), "requests_per_second": round(n / wall, 2)}
