"""How the per-example feature store (`tlkeras.features`) scales: features/s and peak RSS of a cold
extraction at N = 1,000, 10,000 and 60,000 Fashion-MNIST training images, each N in a fresh process with
a fresh store, and the cost of rerunning after 10% new images are added.

The images are written once as PNG files into the bench work folder, so content keys are computed from
files as they would be for a user's folder. The backbone is the real EfficientNet-Lite0 (ImageNet
weights) at IMAGE_SIZE x IMAGE_SIZE: Fashion-MNIST images are 28 x 28, so 32 x 32 loses nothing, and it is
the size at which 60,000 images pass in a minute or a few on 2 shared cores (400-1,300 img/s here,
depending on the other workers' load; 64 x 64 runs about 4x slower, which would stretch the 60,000 run to
4-10 minutes without telling more about the cache).
Features are 1280-d float32 whatever the size, so the memory that holding them would take (N x 5 KiB) is
the same as at 224 x 224.

Timed region of a run: hashing the files (content keys), opening the store and `cached_features`
(lookup, extraction of the missing images through a tf.data pipeline, chunk writes, the row-ordered view);
the interpreter start, the TensorFlow import and the backbone build are measured apart (`startup_seconds`)
because they do not depend on N. Peak RSS is the kernel's high-water mark (VmHWM), reset just before the
timed region (/proc/self/clear_refs), after a warm-up pass of the bare pipeline (see `_warm_up`);
`peak_added_mib`, the peak over the RSS just before the timed region (TensorFlow, the model, the warmed
pipeline), is the extraction's own memory, and the flatness target is judged on it. The rerun opens a new
FeatureStore on the same folder in the same process (a new run would also pay `startup_seconds`; the
ratio is reported both ways).

In full mode one more fresh process measures, at the largest N, what the previous whole-split cache does:
`np.asarray(model.predict(dataset))` then `np.save`, holding every feature in memory.

    python -m bench.feature_cache_scaling            # full, prints the row
    python -m bench.run --only feature_cache_scaling
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO

NAME = "feature_cache_scaling"
TARGET = ("cold extraction time linear in N (time per image at the largest N <= 1.25x that at the next), peak "
          "RSS flat (the extraction's peak grows by < 20% of the features' size from the smallest to the "
          "largest N), rerun after +10% images <= 0.15x the cold run")
BACKBONE = "efficientnet_lite0_imagenet"
IMAGE_SIZE = 32
FEATURE_BYTES = 1280 * 4  # one Lite0 feature row, float32


def settings(quick: bool) -> dict:
    if quick:
        return dict(sizes=[200, 1000], growth=0.1, batch_size=128, whole_split_baseline=False, warm_up=1100)
    return dict(sizes=[1000, 10000, 60000], growth=0.1, batch_size=256, whole_split_baseline=True, warm_up=8192)


def run(quick: bool, workdir) -> dict:
    cfg = settings(quick)
    workdir = Path(workdir)
    largest = max(cfg["sizes"])
    pool = png_pool(workdir, max(cfg["warm_up"], largest + math.ceil(largest * cfg["growth"])))
    runs = {}
    for n in cfg["sizes"]:
        store_root = workdir / "stores" / f"{NAME}_{n}"
        shutil.rmtree(store_root, ignore_errors=True)
        runs[n] = _worker("store", pool, n, cfg, store_root)
        print(f"[bench]   N={n}: {runs[n]['cold']['features_per_second']:.0f} features/s, peak RSS "
              f"{runs[n]['cold']['peak_rss_mib']:.0f} MiB, rerun {runs[n]['rerun_ratio']:.3f}x", flush=True)
    baseline = _worker("whole_split", pool, largest, cfg, None) if cfg["whole_split_baseline"] else None
    return _figures(cfg, runs, baseline)


def _figures(cfg, runs: dict, baseline) -> dict:
    sizes = sorted(runs)
    small, large = sizes[0], sizes[-1]
    previous = sizes[-2]
    per_image = {n: runs[n]["cold"]["seconds"] / n for n in sizes}
    linear_ratio = per_image[large] / per_image[previous]
    # The extraction's own peak: VmHWM over the RSS just before it (TensorFlow + model + warmed pipeline,
    # which differs by tens of MiB between processes for reasons unrelated to N).
    rss_growth = runs[large]["cold"]["peak_added_mib"] - runs[small]["cold"]["peak_added_mib"]
    features_mib = large * FEATURE_BYTES / 2**20
    rerun_ratio = runs[large]["rerun_ratio"]
    met = linear_ratio <= 1.25 and rss_growth < 0.2 * features_mib and rerun_ratio <= 0.15
    figures = {
        "backbone": BACKBONE, "image_size": IMAGE_SIZE, "batch_size": cfg["batch_size"], "growth": cfg["growth"],
        "per_n": {str(n): runs[n] for n in sizes},
        "seconds_per_1000_images": {str(n): round(per_image[n] * 1000, 3) for n in sizes},
        "time_per_image_ratio_largest_to_next": round(linear_ratio, 3),
        "peak_rss_growth_mib_smallest_to_largest": round(rss_growth, 1),
        "features_size_mib_at_largest": round(features_mib, 1),
        "rerun_ratio_at_largest": rerun_ratio,
    }
    if baseline:
        figures["whole_split_baseline"] = baseline
    cold = runs[large]["cold"]
    summary = (f"{cold['features_per_second']:.0f} features/s at N={large:,} vs "
               f"{runs[previous]['cold']['features_per_second']:.0f} at {previous:,} (time/image ratio "
               f"{linear_ratio:.2f}); extraction peak RSS over the process's {cold['rss_before_mib']:.0f} MiB: "
               f"+{runs[small]['cold']['peak_added_mib']:.0f} MiB at {small:,}, +{cold['peak_added_mib']:.0f} MiB at "
               f"{large:,} (the features are {features_mib:.0f} MiB)")
    if baseline:
        summary += f"; the whole-split cache adds {baseline['peak_added_mib']:.0f} MiB"
    summary += f"; rerun after +10%: {rerun_ratio:.3f}x the cold run ({IMAGE_SIZE}px Lite0)"
    causes = []
    if linear_ratio > 1.25:
        causes.append(f"time per image at {large:,} is {linear_ratio:.2f}x that at {previous:,}")
    if rss_growth >= 0.2 * features_mib:
        causes.append(f"the extraction's peak RSS grew {rss_growth:.0f} MiB from {small:,} to {large:,}")
    if rerun_ratio > 0.15:
        rerun = runs[large]["rerun"]
        causes.append(f"the rerun took {rerun_ratio:.3f}x the cold run: {rerun['keys_seconds']:.1f} s hashing "
                      f"{rerun['n']:,} files, {rerun['extract_seconds']:.1f} s computing "
                      f"{rerun['computed']:,} new images and writing the view")
    return {"figures": figures, "met": met, "cause": "; ".join(causes), "summary": summary}


def png_pool(workdir: Path, count: int) -> Path:
    """A flat folder of `count` Fashion-MNIST PNGs, `00000.png`...: the 60,000 training images, then the
    10,000 test images. Written once; reused while it holds enough."""
    from PIL import Image

    from tlkeras.datasets import load_fashion_mnist_arrays

    folder = workdir / "data" / "fmnist_png_pool"
    marker = folder / ".count"
    if marker.exists() and int(marker.read_text()) >= count:
        return folder
    (x_train, _), (x_test, _) = load_fashion_mnist_arrays()
    images = list(x_train) + list(x_test)
    if count > len(images):
        raise ValueError(f"Fashion-MNIST has {len(images)} images. Received: count={count}")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(images[i]).save(tmp / f"{i:05d}.png")
    (tmp / ".count").write_text(str(count))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def _worker(mode: str, pool: Path, n: int, cfg: dict, store_root) -> dict:
    cmd = [sys.executable, "-m", "bench.feature_cache_scaling", "--worker", mode, "--pool", str(pool), "--n", str(n),
           "--batch-size", str(cfg["batch_size"]), "--growth", str(cfg["growth"]), "--warm-up", str(cfg["warm_up"])]
    if store_root is not None:
        cmd += ["--store-root", str(store_root)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=7200)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{mode} worker at N={n} failed: {done.stderr[-1500:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["process_wall_seconds"] = round(wall, 1)
    return row


# -- inside the worker process -------------------------------------------------------------------------
def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def _load_pipeline(batch_size: int):
    import tensorflow as tf

    from tlkeras import backbones

    model = backbones.load(BACKBONE, image_size=(IMAGE_SIZE, IMAGE_SIZE))
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                          input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)])

    def load(path):
        image = tf.io.decode_png(tf.io.read_file(path), channels=3)  # grey -> 3 equal channels
        return tf.image.resize(tf.cast(image, tf.float32), (IMAGE_SIZE, IMAGE_SIZE))

    def dataset(paths):
        return (tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE)
                .batch(batch_size).prefetch(2))

    return model, forward, dataset


def _warm_up(forward, dataset, paths) -> None:
    """One pass of the bare pipeline (features discarded) over the same first images of the pool whatever
    N (8,192 in full mode), outside the timed region: traces the forward function and lets tf.data (autotuned parallelism and buffers) and
    TensorFlow's allocators reach their working size. Measured here, that working set grows by ~37 MiB
    during the first few thousand images and is then flat (the same at 10,000 and 30,000), so without
    this the peak RSS at large N would count TensorFlow's ramp-up against the cache."""
    for batch in dataset(paths):
        forward(batch)


def _store_worker(args) -> dict:
    import numpy as np

    from tlkeras import features

    _, forward, dataset = _load_pipeline(args.batch_size)
    paths = [str(args.pool / f"{i:05d}.png") for i in range(args.n)]
    _warm_up(forward, dataset, [str(args.pool / f"{i:05d}.png") for i in range(args.warm_up)])
    startup = _process_age()
    new_paths = [str(args.pool / f"{i:05d}.png") for i in range(args.n, args.n + math.ceil(args.n * args.growth))]
    key = features.extractor_key(backbone=BACKBONE, image_size=[IMAGE_SIZE, IMAGE_SIZE],
                                 preprocessing="decode_png rgb, bilinear resize, float32 [0, 255]")

    def run(all_paths):
        computed = []  # sizes of the index arrays compute was called with

        def compute(indices):
            computed.append(len(indices))
            for batch in dataset([all_paths[i] for i in indices]):
                yield forward(batch).numpy()

        _reset_peak_rss()
        rss_before = _rss_mib("VmRSS")
        load_average = os.getloadavg()[0]
        t0 = time.perf_counter()
        keys = features.content_keys_of_files(all_paths)
        t1 = time.perf_counter()
        store = features.FeatureStore(key, root=args.store_root)
        result = features.cached_features(store, keys, compute, progress=False)
        t2 = time.perf_counter()
        stats = {"n": len(all_paths), "computed": sum(computed), "compute_calls": len(computed), "seconds": round(t2 - t0, 2),
                 "keys_seconds": round(t1 - t0, 2), "extract_seconds": round(t2 - t1, 2),
                 "features_per_second": round(len(all_paths) / (t2 - t0), 1),
                 "computed_per_second": round(sum(computed) / (t2 - t1), 1) if computed else None,
                 "rss_before_mib": round(rss_before, 1), "peak_rss_mib": round(_rss_mib("VmHWM"), 1),
                 "peak_added_mib": round(_rss_mib("VmHWM") - rss_before, 1), "chunks": len(store.chunk_names),
                 "load_average_1min": round(load_average, 2), "memmap": isinstance(result, np.memmap)}
        return result, keys, stats

    cold_features, _, cold = run(paths)
    rerun_features, _, rerun = run(paths + new_paths)
    # Checks, after the measurements (they touch the mapped pages): the rerun reused the cold rows bit for
    # bit and computed only the new images; a few rows equal a direct forward pass.
    assert cold["computed"] == len(paths) and rerun["computed"] == len(new_paths), (cold, rerun)
    reused = all(np.array_equal(cold_features[i:min(i + 4096, len(paths))], rerun_features[i:min(i + 4096, len(paths))])
                 for i in range(0, len(paths), 4096))
    sample = np.sort(np.random.default_rng(0).choice(len(paths), min(16, len(paths)), replace=False))
    direct = np.concatenate([forward(batch).numpy() for batch in dataset([paths[i] for i in sample])])
    return {
        "cold": cold, "rerun": rerun, "startup_seconds": round(startup, 1),
        "rerun_ratio": round(rerun["seconds"] / cold["seconds"], 4),
        "rerun_ratio_with_startup": round((rerun["seconds"] + startup) / (cold["seconds"] + startup), 4),
        "rerun_rows_bitwise_equal_to_cold": bool(reused),
        "max_abs_diff_vs_direct_forward": float(np.abs(direct - cold_features[sample]).max()),
        "ru_maxrss_mib": round(_ru_maxrss_mib(), 1),
    }


def _whole_split_worker(args) -> dict:
    import numpy as np

    from tlkeras import files

    model, forward, dataset = _load_pipeline(args.batch_size)
    paths = [str(args.pool / f"{i:05d}.png") for i in range(args.n)]
    _warm_up(forward, dataset, [str(args.pool / f"{i:05d}.png") for i in range(args.warm_up)])
    model.predict(dataset(paths[: 4 * args.batch_size]), verbose=0)  # build predict's function
    startup = _process_age()
    _reset_peak_rss()
    rss_before = _rss_mib("VmRSS")
    t0 = time.perf_counter()
    # What the whole-split cache does: one predict over the split, all features in memory, one .npy.
    feats = np.asarray(model.predict(dataset(paths), verbose=0))
    target = args.pool.parent / "whole_split_features.npy"
    with files.atomic_path(target) as tmp:
        np.save(tmp, feats)
    seconds = time.perf_counter() - t0
    target.unlink()
    return {"n": args.n, "seconds": round(seconds, 2), "features_per_second": round(args.n / seconds, 1),
            "rss_before_mib": round(rss_before, 1), "peak_rss_mib": round(_rss_mib("VmHWM"), 1),
            "peak_added_mib": round(_rss_mib("VmHWM") - rss_before, 1), "startup_seconds": round(startup, 1),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def _process_age() -> float:
    """Seconds since this process started (interpreter start included), from /proc."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return float("nan")


def _ru_maxrss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.feature_cache_scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--worker", choices=["store", "whole_split"], help=argparse.SUPPRESS)
    parser.add_argument("--pool", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--growth", type=float, default=0.1, help=argparse.SUPPRESS)
    parser.add_argument("--warm-up", type=int, default=8192, help=argparse.SUPPRESS)
    parser.add_argument("--store-root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        row = _store_worker(args) if args.worker == "store" else _whole_split_worker(args)
        print(json.dumps(row))
        return 0
    import tempfile

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tlkeras-bench-"))
    print(json.dumps(run(args.quick, workdir), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
