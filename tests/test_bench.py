"""The benchmark suite's quick mode runs end to end and reports a figure for every benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = ("registry_cold_start", "feature_cache_vs_keras_baseline", "fit_overhead", "roofline",
              "serving_latency", "data_efficiency")


def _numbers(value):
    """Every int or float inside a nested figures mapping."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


@pytest.mark.slow
def test_quick_bench_reports_every_benchmark(tmp_path):
    out = tmp_path / "results"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--out", str(out), "--workdir",
                    str(tmp_path / "work")], cwd=REPO, env=env, check=True, timeout=600)
    results = json.loads((out / "results.quick.json").read_text())
    assert results["quick"] is True
    assert results["machine"]["nproc"] >= 1 and results["machine"]["tensorflow"]
    assert set(results["benchmarks"]) == set(BENCHMARKS)
    for name, row in results["benchmarks"].items():
        assert row["status"] == "ok", f"{name}: {row.get('reason')}"
        assert _numbers(row["figures"]), f"{name} reported no numbers"
        assert row["summary"]
    assert results["benchmarks"]["feature_cache_vs_keras_baseline"]["figures"]["ratio_tlkeras_over_baseline"] > 0
    markdown = (out / "RESULTS.quick.md").read_text()
    assert all(f"## {name}" in markdown for name in BENCHMARKS)


def test_bench_rejects_unknown_name(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.run", "--only", "nope", "--out", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0
    assert "unknown benchmark 'nope'" in result.stderr
