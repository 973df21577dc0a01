"""Forward-pass throughput of the offline image backbones against the machine's measured matmul peak.

FLOPs per image are counted from the built model by walking its Conv2D, DepthwiseConv2D and Dense layers
(2 * multiply-accumulates; batch norm, activations and pooling are left out, so the figure is a slight
undercount). Peak is the best of several `tf.linalg.matmul` runs on 2048x2048 float32 (and bfloat16).
Options (batch size, XLA, mixed_bfloat16) are timed round-robin, each repeat measuring every option once;
XLA and bfloat16 at the recipes' inference batch size (`data.inference_batch_size`, 8). Threading can only be
set before TensorFlow starts, so those options run the first backbone in fresh processes
(`python -m bench.roofline --probe ...`): TF's default thread pools, one intra-op thread, one inter-op
thread, and oneDNN off (`TF_ENABLE_ONEDNN_OPTS=0`); the default process runs first and last, and their mean
is the reference. The library defaults are not changed here.
"""

from __future__ import annotations

import json
import os
import sys
import time

from bench.common import REPO, median
from bench.common import run as run_command

NAME = "roofline"
TARGET = "report img/s, counted GFLOPs/img, % of measured fp32 matmul peak, and the best option per backbone"
BACKBONES = ("efficientnet_lite0_imagenet", "vgg16_hed_bsds500")


def settings(quick: bool) -> dict:
    if quick:
        # No threading probes: each is a fresh TensorFlow process (tests/test_bench.py runs one).
        return dict(size=64, batches=(1, 8), repeats=1, min_images=8, matmul_n=2048, default_batch=8,
                    threading=())
    return dict(size=224, batches=(1, 8, 32), repeats=2, min_images=32, matmul_n=2048, default_batch=8,
                threading=("intra_op_1", "inter_op_1", "onednn_off"))


# name: (intra-op threads, inter-op threads, extra environment); 0 = TensorFlow's default
THREADING = {"default": (0, 0, {}), "intra_op_1": (1, 0, {}), "inter_op_1": (0, 1, {}),
             "onednn_off": (0, 0, {"TF_ENABLE_ONEDNN_OPTS": "0"})}


def matmul_peak(n: int, dtype: str, repeats: int = 5) -> float:
    """GFLOP/s of an n x n matmul: the best of `repeats` timed runs."""
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    chain = 4  # several products per timed call, so dispatch and the copy out are a small share

    @tf.function
    def matmul(x):
        total = tf.zeros((), x.dtype)
        for _ in range(chain):
            total += tf.reduce_sum(tf.linalg.matmul(x, x + total))
        return total

    matmul(a).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).numpy()
        best = min(best, time.perf_counter() - start)
    return chain * 2 * n**3 / best / 1e9


def count_flops(model) -> int:
    """FLOPs of one forward pass of one image, from the layers' weights and output shapes."""
    import keras

    from tlkeras.backbones import flat_layers

    total = 0
    for layer in flat_layers(model):
        try:
            out = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw, cin, mult = layer.kernel.shape
            total += 2 * kh * kw * cin * mult * out[1] * out[2]
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin_per_group, cout = layer.kernel.shape
            total += 2 * kh * kw * cin_per_group * cout * out[1] * out[2]
        elif isinstance(layer, keras.layers.Dense):
            fan_in, units = layer.kernel.shape
            positions = 1
            for dim in out[1:-1]:
                positions *= dim
            total += 2 * fan_in * units * positions
    return int(total)


def _options(cfg):
    options = [dict(batch=b, jit=False, dtype="float32") for b in cfg["batches"]]
    options += [dict(batch=cfg["default_batch"], jit=True, dtype="float32"),
                dict(batch=cfg["default_batch"], jit=False, dtype="mixed_bfloat16")]
    return options


def _label(o) -> str:
    return f"batch{o['batch']}_{o['dtype']}{'_xla' if o['jit'] else ''}"


def run(quick: bool, workdir) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from tlkeras import backbones

    cfg = settings(quick)
    peak32 = matmul_peak(cfg["matmul_n"], "float32")
    peak16 = matmul_peak(cfg["matmul_n"], "bfloat16")
    figures = {"matmul_peak_fp32_gflops": round(peak32, 1), "matmul_peak_bf16_gflops": round(peak16, 1),
               "matmul_n": cfg["matmul_n"], "image_size": cfg["size"], "backbones": {}}
    summaries = []
    size = (cfg["size"], cfg["size"])
    for name in BACKBONES:
        fns, flops = {}, None
        for option in _options(cfg):
            keras.mixed_precision.set_global_policy(option["dtype"])
            try:
                model = backbones.load(name, image_size=size)
            finally:
                keras.mixed_precision.set_global_policy("float32")
            if flops is None:
                flops = count_flops(model)
            fn = tf.function(lambda x, m=model: m(x, training=False), jit_compile=option["jit"])
            x = tf.constant(np.random.default_rng(0).uniform(0, 255, (option["batch"], *size, 3)), tf.float32)
            fn(x)  # trace / compile outside the timing
            fns[_label(option)] = (fn, x)
        samples: dict[str, list[float]] = {label: [] for label in fns}
        for _ in range(cfg["repeats"]):
            for label, (fn, x) in fns.items():  # round-robin: load hits every option alike
                samples[label].append(_images_per_second(fn, x, cfg["min_images"]))
        throughput = {label: round(median(v), 2) for label, v in samples.items()}
        default = f"batch{cfg['default_batch']}_float32"
        if name == BACKBONES[0] and cfg["threading"]:
            threading = _threading(name, cfg)
            figures["threading_images_per_second"] = threading
            throughput.update({f"{default}_{k}": round(v / threading["default"] * throughput[default], 2)
                               for k, v in threading.items() if k != "default"})
        best = max(throughput, key=throughput.get)
        figures["backbones"][name] = {
            "gflops_per_image": round(flops / 1e9, 3),
            "images_per_second": throughput,
            "percent_of_fp32_peak": {k: round(100 * v * flops / 1e9 / peak32, 1) for k, v in throughput.items()},
            "ratio_to_default": {k: round(v / throughput[default], 2) for k, v in throughput.items()},
            "best_option": best,
        }
        summaries.append(f"{name}: {throughput[default]:.1f} img/s at batch {cfg['default_batch']} fp32 "
                         f"({flops / 1e9:.2f} GFLOPs/img, {100 * throughput[default] * flops / 1e9 / peak32:.0f}% "
                         f"of {peak32:.0f} GFLOP/s); best {best}")
    return {"figures": figures, "met": None, "summary": "; ".join(summaries)}


def _images_per_second(fn, x, min_images: int) -> float:
    import numpy as np

    batch = int(x.shape[0])
    calls = max(1, min_images // batch)
    start = time.perf_counter()
    for _ in range(calls):
        np.asarray(fn(x))
    return calls * batch / (time.perf_counter() - start)


def _threading(name: str, cfg) -> dict:
    """Images/s of `name` in a fresh process per threading option (the default one first and last)."""
    def probe(option: str) -> float:
        intra, inter, env = THREADING[option]
        args = [name, cfg["size"], cfg["default_batch"], cfg["min_images"], intra, inter]
        done = run_command([sys.executable, "-m", "bench.roofline", "--probe", *map(str, args)],
                           cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env})
        return float(done.stdout.strip().splitlines()[-1])

    first = probe("default")
    rates = {option: probe(option) for option in cfg["threading"]}
    rates["default"] = (first + probe("default")) / 2
    return {k: round(v, 2) for k, v in rates.items()}


def _probe(name: str, size: str, batch: str, min_images: str, intra: str, inter: str) -> None:
    """In a fresh process: set the thread pools, then print the median images/s of three timed blocks."""
    import numpy as np
    import tensorflow as tf

    if int(intra):
        tf.config.threading.set_intra_op_parallelism_threads(int(intra))
    if int(inter):
        tf.config.threading.set_inter_op_parallelism_threads(int(inter))
    from tlkeras import backbones

    model = backbones.load(name, image_size=(int(size), int(size)))
    fn = tf.function(lambda x: model(x, training=False))
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (int(batch), int(size), int(size), 3)), tf.float32)
    fn(x)
    print(json.dumps(median(_images_per_second(fn, x, int(min_images)) for _ in range(3))))


if __name__ == "__main__" and sys.argv[1:2] == ["--probe"]:
    _probe(*sys.argv[2:])
