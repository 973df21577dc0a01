"""Wall time of `tlkeras registry list`, the console script, in a fresh process each time."""

from __future__ import annotations

import os
import subprocess
import time

from bench.common import VENV_BIN, median

NAME = "registry_cold_start"
TARGET = "median wall time of `tlkeras registry list` < 1 s"


def run(quick: bool, workdir) -> dict:
    script = VENV_BIN / "tlkeras"
    repeats = 5  # cheap enough that quick mode keeps all five
    env = dict(os.environ, COLUMNS="200")
    # The Python interpreter start alone, as a floor the command cannot beat.
    times, floor = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([str(VENV_BIN / "python"), "-c", "pass"], check=True, env=env)
        floor.append(time.perf_counter() - start)
        start = time.perf_counter()
        result = subprocess.run([str(script), "registry", "list"], capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise RuntimeError(f"tlkeras registry list failed: {result.stderr[-500:]}")
    seconds = median(times)
    imports = _top_level_imports(env)
    return {
        "figures": {"median_seconds": round(seconds, 3), "min_seconds": round(min(times), 3),
                    "python_startup_median_seconds": round(median(floor), 3),
                    "ratio_to_bare_python": round(seconds / median(floor), 2), "repeats": repeats,
                    "slowest_top_level_imports_seconds": imports},
        "met": seconds < 1.0,
        "cause": (f"imports take {sum(imports.values()):.2f} s of the {seconds:.2f} s (the slowest: "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in list(imports.items())[:2])
                  + "); the rest is reading the catalog YAML and rendering the table"),
        "summary": (f"{seconds:.2f} s median of {repeats} (bare `python -c pass`: {median(floor):.2f} s); "
                    "slowest imports: " + ", ".join(f"{k} {v:.2f} s" for k, v in list(imports.items())[:3])),
    }


def _top_level_imports(env) -> dict:
    """Cumulative import time of each top-level module the command imports (python -X importtime)."""
    result = subprocess.run([str(VENV_BIN / "python"), "-X", "importtime", "-m", "tlkeras", "registry", "list"],
                            capture_output=True, text=True, env=env)
    totals = {}
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if name.startswith(" ") and not name.startswith("  "):  # one space: a top-level import
            try:
                totals[name.strip()] = int(cumulative) / 1e6
            except ValueError:
                continue
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:6]
    return {k: round(v, 3) for k, v in top}
