"""`tlkeras serve` with server-side batching vs without, at concurrency 8, on a real exported image model.

For each image size, a Lite0 feature-extraction recipe is trained for one epoch on a few Fashion-MNIST
images and exported (as in serving_latency), then `tlkeras deploy-config` writes the folder's
`batching_parameters.txt` (32 rows, 1 ms window, a batch thread per core). Two servers run side by side
on 127.0.0.1: one plain, one with `--enable-batching` reading that file. Each round sends the same PNG
requests from 8 client threads (one kept-alive connection each) to one server, then to the other,
alternating which goes first; throughput is the median over rounds, latency percentiles pool every
request. The client threads and both servers share the machine's cores. The batching ceiling of the
model itself is measured in-process too: one signature call on 8 images against 8 concurrent calls on 1.
The verdict is on the first (the model's real) size; the full run adds 96 px for context.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from bench.common import VENV_BIN, fashion_mnist_folder, median
from bench.serving_latency import export_fashion_model, free_port, latency_stats
from tlkeras.serve.batching import read_batching_parameters
from tlkeras.serve.client import wait_until_ready

NAME = "serving_batching"
TARGET = "throughput at concurrency 8, --enable-batching / no batching >= 1.5"
CONCURRENCY = 8


def settings(quick: bool) -> dict:
    # The verdict is on the first size; the full run adds a small one, where per-call overhead dominates.
    if quick:
        return dict(rounds=2, requests_per_round=32, image_sizes=[96], ceiling_repeats=3)
    return dict(rounds=5, requests_per_round=400, image_sizes=[224, 96], ceiling_repeats=7)


def run(quick: bool, workdir) -> dict:
    cfg = settings(quick)
    by_size = {size: _measure(workdir, cfg, size) for size in cfg["image_sizes"]}
    main_size = cfg["image_sizes"][0]
    main = by_size[main_size]
    ratio = main["ratio_throughput_batched_over_unbatched"]
    rates, stats = main["requests_per_second"], main["latency_ms"]
    summary = f"{main_size} px: " + _describe(main) + "".join(
        f"; {size} px: ratio {f['ratio_throughput_batched_over_unbatched']:.2f}" for size, f in by_size.items()
        if size != main_size)
    return {
        "figures": {f"{size}px": figures for size, figures in by_size.items()}, "met": ratio >= 1.5,
        "summary": summary,
        "cause": _cause(main_size, main, by_size),
        "notes": (f"Batched p50/p99 {stats['batched']['p50_ms']:.0f}/{stats['batched']['p99_ms']:.0f} ms vs "
                  f"unbatched {stats['unbatched']['p50_ms']:.0f}/{stats['unbatched']['p99_ms']:.0f} ms at "
                  f"{main_size} px; {rates['batched']:.1f} vs {rates['unbatched']:.1f} req/s."),
    }


def _cause(size: int, figures: dict, by_size: dict) -> str:
    """Why the ratio is what it is, from the measured ceiling (the model's own gain from batching)."""
    ceiling = figures["in_process_1_call_of_8_over_8_concurrent_calls_of_1"]
    shared = figures["requests_in_the_call_of_a_request_batched_mean"] - 1
    others = ", ".join(f"{s} px {f['ratio_throughput_batched_over_unbatched']:.2f}x" for s, f in by_size.items())
    if ceiling > 1 / 1.5:
        head = (f"at {size} px the model itself gains less than 1.5x from batching on this CPU: in-process, one "
                f"signature call on 8 images takes {ceiling:.2f}x the time of 8 concurrent calls on 1 image, "
                "so no server can reach 1.5x by merging requests")
    else:
        head = (f"at {size} px one signature call on 8 images takes {ceiling:.2f}x the time of 8 concurrent calls "
                f"on 1 (up to {1 / ceiling:.1f}x from batching the model alone), but the per-request work outside "
                "the model (HTTP, JSON and base64 in Python threads) does not shrink with batching")
    return f"{head}; a request shared its call with {shared:.1f} others on average. Ratios by size: {others}"


def _describe(figures: dict) -> str:
    rates, stats = figures["requests_per_second"], figures["latency_ms"]
    return (f"{rates['batched']:.1f} req/s batched vs {rates['unbatched']:.1f} unbatched "
            f"(ratio {figures['ratio_throughput_batched_over_unbatched']:.2f}); p50/p99 "
            f"{stats['batched']['p50_ms']:.0f}/{stats['batched']['p99_ms']:.0f} ms vs "
            f"{stats['unbatched']['p50_ms']:.0f}/{stats['unbatched']['p99_ms']:.0f} ms")


def _measure(workdir, cfg: dict, image_size: int) -> dict:
    """The figures of one image size: both servers, interleaved rounds, and the in-process ceiling."""
    from tlkeras.export.deploy import write_deploy_config

    version_dir = export_fashion_model(workdir, {"image_size": image_size})  # shared with serving_latency
    models = version_dir.parent.parent
    _, batching_file = write_deploy_config(models)
    png = next(iter(sorted((fashion_mnist_folder(workdir, 2, 10)["test"]).rglob("*.png")))).read_bytes()
    body = json.dumps({"instances": [{"b64": base64.b64encode(png).decode()}]}).encode()
    path = f"/v1/models/{version_dir.parent.name}:predict"

    servers = {}
    try:
        for side, flags in (("unbatched", []), ("batched", ["--enable-batching", "--batching-parameters-file",
                                                              str(batching_file)])):
            port, log = free_port(), workdir / f"{NAME}-{image_size}-{side}.log"
            with open(log, "wb") as out:
                process = subprocess.Popen([str(VENV_BIN / "tlkeras"), "serve", str(models), "--port", str(port),
                                            *flags], stdout=out, stderr=subprocess.STDOUT,
                                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
            servers[side] = (port, process, log)
        for port, process, _ in servers.values():
            wait_until_ready(f"http://127.0.0.1:{port}/v1/models/{version_dir.parent.name}", process)
        replies = {side: _post(port, path, body) for side, (port, _, _) in servers.items()}
        same_class = (replies["batched"]["predictions"][0]["class_id"]
                      == replies["unbatched"]["predictions"][0]["class_id"])
        for port, _, _ in servers.values():  # warm both: connections, first batches
            _load(port, path, body, 2 * CONCURRENCY)
        throughput = {side: [] for side in servers}
        latencies = {side: [] for side in servers}
        for round_index in range(cfg["rounds"]):
            order = list(servers) if round_index % 2 == 0 else list(reversed(servers))
            for side in order:
                rate, seconds = _load(servers[side][0], path, body, cfg["requests_per_round"])
                throughput[side].append(rate)
                latencies[side].extend(seconds)
    finally:
        for _, process, _ in servers.values():
            process.terminate()
        for _, process, _ in servers.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    log_text = servers["batched"][2].read_text()
    batch_sizes = [int(n) for n in re.findall(r"\(batch of (\d+) requests\)", log_text)]
    answered = len(re.findall(r'"POST [^"]+" 200 ', log_text))
    rates = {side: median(values) for side, values in throughput.items()}
    return {
        "ratio_throughput_batched_over_unbatched": round(rates["batched"] / rates["unbatched"], 3),
        "requests_per_second": {side: round(rate, 2) for side, rate in rates.items()},
        "requests_per_second_by_round": {side: [round(v, 2) for v in values] for side, values in throughput.items()},
        "latency_ms": {side: latency_stats(values) for side, values in latencies.items()},
        # Over every request the batched server answered: the size of the call each one was part of.
        "requests_in_the_call_of_a_request_batched_mean": round(
            (sum(batch_sizes) + answered - len(batch_sizes)) / max(answered, 1), 2),
        "in_process_1_call_of_8_over_8_concurrent_calls_of_1": _batching_ceiling(version_dir, png,
                                                                                  cfg["ceiling_repeats"]),
        "same_class_both_sides": same_class,
        "concurrency": CONCURRENCY, "rounds": cfg["rounds"], "requests_per_round": cfg["requests_per_round"],
        "image_size": image_size, "png_bytes": len(png),
        "batching_parameters": dataclasses.asdict(read_batching_parameters(batching_file)),
    }


def _batching_ceiling(version_dir, png: bytes, repeats: int) -> float:
    """Time of one in-process signature call on 8 images over that of 8 concurrent calls on 1 (median of
    interleaved repeats): above 1, batching cannot beat serving requests side by side."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    name = list(signature.structured_input_signature[1])[0]
    one, eight = tf.constant([png]), tf.constant([png] * CONCURRENCY)
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        def side_by_side():
            list(pool.map(lambda _: signature(**{name: one}), range(CONCURRENCY)))

        def together():
            signature(**{name: eight})

        for _ in range(2):
            side_by_side()
            together()
        ratios = []
        for _ in range(repeats):
            start = time.perf_counter()
            together()
            middle = time.perf_counter()
            side_by_side()
            ratios.append((middle - start) / (time.perf_counter() - middle))
    return round(median(ratios), 3)


def _post(port: int, path: str, body: bytes, connection: http.client.HTTPConnection | None = None) -> dict:
    own = connection is None
    connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        reply = connection.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"the server answered {reply.status}: {data[:200]!r}")
        return json.loads(data)
    finally:
        if own:
            connection.close()


def _load(port: int, path: str, body: bytes, requests: int) -> tuple[float, list[float]]:
    """(requests per second, per-request seconds) for `requests` sent by CONCURRENCY kept-alive clients."""
    local = threading.local()
    connections = []

    def one(_):
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            connections.append(local.connection)
        start = time.perf_counter()
        _post(port, path, body, local.connection)
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        seconds = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    for connection in connections:
        connection.close()
    return requests / wall, seconds

