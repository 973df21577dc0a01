"""Helpers shared by the benchmarks: timing statistics, machine description, data folders."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
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


def fashion_mnist_folder(workdir: Path, per_class: int, test_size: int, seed: int = 0,
                         validation_per_class: int = 0) -> dict:
    """PNG class folders of Fashion-MNIST, written once per (per_class, test_size, seed, validation).

    With `validation_per_class`, each class's sample is split: the first `per_class` files (by name) stay
    in `train`, the rest are copied to `validation`, so the two never share an image.
    """
    import shutil

    from tlkeras.datasets import fashion_mnist

    name = f"fmnist_{per_class}_{test_size}_{seed}" + (f"_val{validation_per_class}" if validation_per_class else "")
    data = fashion_mnist(workdir / "data" / name, train_per_class=per_class + validation_per_class,
                         test_size=test_size, seed=seed)
    if not validation_per_class:
        return data
    split = workdir / "data" / f"{name}_split"
    if not split.exists():
        tmp = split.with_name(split.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for class_dir in sorted(p for p in data["train"].iterdir() if p.is_dir()):
            files = sorted(class_dir.glob("*.png"))
            for subset, chosen in (("train", files[:per_class]), ("validation", files[per_class:])):
                (tmp / subset / class_dir.name).mkdir(parents=True)
                for file in chosen:
                    shutil.copy(file, tmp / subset / class_dir.name / file.name)
        tmp.rename(split)
    return {**data, "train": split / "train", "validation": split / "validation"}


@contextlib.contextmanager
def fresh_home(workdir: Path, name: str):
    """Sets TLKERAS_HOME, for the `with` block, to a new folder whose weights and datasets are the
    already-fetched ones and whose feature cache is empty; yields its path."""
    import shutil

    from tlkeras import paths

    home = workdir / "homes" / name
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    for fetched in (paths.weights_dir(), paths.data_dir()):
        if fetched.exists():
            (home / fetched.name).symlink_to(fetched.resolve())
    previous = os.environ.get("TLKERAS_HOME")
    os.environ["TLKERAS_HOME"] = str(home)
    try:
        yield home
    finally:
        if previous is None:
            os.environ.pop("TLKERAS_HOME", None)
        else:
            os.environ["TLKERAS_HOME"] = previous


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, **kwargs)
