"""Helpers shared by the benchmarks: timing statistics, machine description, data folders."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def median(values) -> float:
    return float(statistics.median(values))


def percentile(values, q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation, without numpy."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (pos - low))


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def machine() -> dict:
    """nproc, memory, CPU model and library versions, for the results header."""
    info = {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:  # versions without importing TensorFlow into the runner
        from importlib.metadata import version

        for package in ("tensorflow", "keras", "keras-hub"):
            info[package.replace("-", "_")] = version(package)
    except Exception:  # noqa: BLE001 - informative only
        pass
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def fashion_mnist_folder(workdir: Path, per_class: int, test_size: int, seed: int = 0) -> dict:
    """PNG class folders of Fashion-MNIST, written once per (per_class, test_size, seed)."""
    from tlkeras.datasets import fashion_mnist

    return fashion_mnist(workdir / "data" / f"fmnist_{per_class}_{test_size}_{seed}", train_per_class=per_class,
                         test_size=test_size, seed=seed)


def fresh_home(workdir: Path, name: str) -> Path:
    """A new TLKERAS_HOME whose weights are the already-fetched ones and whose feature cache is empty."""
    import shutil

    from tlkeras import paths

    real_weights = paths.weights_dir()
    home = workdir / "homes" / name
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / "weights").symlink_to(real_weights.resolve())
    return home


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, **kwargs)
