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
              "serving_latency", "serving_batching", "data_efficiency", "recommendation", "feature_cache_scaling")


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
                    str(tmp_path / "work")], cwd=REPO, env=env, check=True, timeout=1800)
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


def test_readme_table_is_replaced_between_markers_only(tmp_path):
    from bench.run import README_END, README_START, update_readme

    row = {"status": "ok", "target": "t < 1", "summary": "0.5 | fast", "met": True, "date": "d", "seconds": 1.0}
    results = {"command": "python -m bench.run", "date": "2026-11-23", "suite_seconds": 3.0, "quick": False,
               "machine": {"nproc": 2}, "benchmarks": {"registry_cold_start": row}}
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold table\n{README_END}\noutro\n")
    assert update_readme(readme, results)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{README_END}\noutro\n") and "old table" not in text
    assert "| registry_cold_start | t < 1 | 0.5 \\| fast | met | d | 1.0 |" in text
    readme.write_text("no markers")
    assert not update_readme(readme, results) and readme.read_text() == "no markers"


@pytest.mark.slow
def test_roofline_threading_probe_reports_images_per_second():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    # name, image size, batch, images, intra-op threads, inter-op threads
    done = subprocess.run([sys.executable, "-m", "bench.roofline", "--probe", "efficientnet_lite0_imagenet", "32",
                           "2", "4", "1", "0"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert float(done.stdout.strip().splitlines()[-1]) > 0
