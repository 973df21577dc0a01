"""Runs the benchmark suite and writes `results.json` and `RESULTS.md`.

    python -m bench.run [--quick] [--only NAME,...] [--out bench/results]

Quick mode (tiny sizes, one repeat, the same code paths) writes `results.quick.json` and
`RESULTS.quick.md`, so it never overwrites the full figures. `--only` reruns some benchmarks and keeps
the other rows of an existing results file. A benchmark that fails, or is skipped, gets a "not run" row
with the reason. Every figure in the output comes from the run that wrote it.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.common import machine
from tlkeras import files

# In priority order: when time is short, the later ones are the ones to drop.
BENCHMARKS = {
    "registry_cold_start": "bench.registry_cold_start",
    "feature_cache_vs_keras_baseline": "bench.feature_cache",
    "fit_overhead": "bench.fit_overhead",
    "roofline": "bench.roofline",
    "serving_latency": "bench.serving_latency",
    "serving_batching": "bench.serving_batching",
    "data_efficiency": "bench.data_efficiency",
    "recommendation": "bench.recommendation",
    "feature_cache_scaling": "bench.feature_cache_scaling",
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
README = DEFAULT_OUT.parent.parent / "README.md"
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"
# Benchmarks a plain full run leaves out, with the reason (the rest of the suite fits 30 minutes). A plain
# full run keeps their last measured row; `--only NAME` measures them again.
OPT_IN: dict[str, str] = {
    "feature_cache_scaling": "takes 4-12 min on 2 shared cores, with the load (71,000 + 7,100 images through "
                             "Lite0, then the whole-split baseline over 60,000): run "
                             "`python -m bench.run --only feature_cache_scaling`",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one repeat (about 3.5 min here when the machine is quiet; 7 min at load average 6)")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    parser.add_argument("--workdir", default=None, help="scratch folder (data, runs). Defaults to a temp dir")
    parser.add_argument("--render-only", action="store_true", help="rewrite RESULTS.md from results.json")
    args = parser.parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in only if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ".quick" if args.quick else ""
    json_path, md_path = out / f"results{suffix}.json", out / f"RESULTS{suffix}.md"
    if args.render_only:
        results = json.loads(json_path.read_text())
        files.write_text(md_path, render_markdown(results))
        print(f"[bench] wrote {md_path} from {json_path}")
        if not args.quick and out.resolve() == DEFAULT_OUT.resolve() and update_readme(README, results):
            print(f"[bench] updated the table in {README}")
        return 0
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    rows = dict(previous.get("benchmarks", {})) if only else {}
    command = "python -m bench.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tlkeras-bench-"))
    suite_start = time.perf_counter()
    for name, module_name in BENCHMARKS.items():
        if only and name not in only:
            continue
        row = {"date": _now(), "command": command.strip(), "quick": args.quick}
        if not only and name in OPT_IN and not args.quick:
            kept = previous.get("benchmarks", {}).get(name, {})
            rows[name] = kept if kept.get("status") == "ok" else {**row, "status": "not run", "reason": OPT_IN[name]}
            continue
        print(f"[bench] {name} ...", flush=True)
        module = importlib.import_module(module_name)
        start = time.perf_counter()
        try:
            result = module.run(args.quick, workdir)
            row.update(status="ok", target=module.TARGET, **result)
        except Exception as err:  # noqa: BLE001 - one failure must not lose the other rows
            row.update(status="not run", target=module.TARGET, reason=f"{type(err).__name__}: {err}",
                       traceback=traceback.format_exc()[-2000:])
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows[name] = row
        print(f"[bench] {name}: {row.get('summary') or row.get('reason')} ({row['seconds']} s)", flush=True)
    results = {
        "date": _now(), "command": command.strip(), "quick": args.quick, "machine": machine(),
        "suite_seconds": round(time.perf_counter() - suite_start, 1),
        "benchmarks": {name: rows[name] for name in BENCHMARKS if name in rows},
    }
    files.write_text(json_path, json.dumps(results, indent=1, default=str) + "\n")  # atomic: a kill keeps the old
    files.write_text(md_path, render_markdown(results))
    print(f"[bench] wrote {json_path} and {md_path} in {results['suite_seconds']} s")
    if not args.quick and out.resolve() == DEFAULT_OUT.resolve() and update_readme(README, results):
        print(f"[bench] updated the table in {README}")
    return 0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _met(row) -> str:
    if row.get("status") != "ok":
        return "not run"
    return {True: "met", False: "**missed**", None: "report only"}[row.get("met")]


def render_table(results: dict) -> list[str]:
    """Provenance (command, date, machine) and the one-line-per-benchmark table."""
    m = results["machine"]
    lines = [
        f"Generated by `{results['command']}` on {results['date']} in {results['suite_seconds']} s "
        "(rows rerun with `--only` carry their own date below).",
        "",
        f"Machine: {m.get('nproc')} cores ({m.get('cpu_model', '?')}), {m.get('memory_gib', '?')} GiB, "
        f"TensorFlow {m.get('tensorflow', '?')}, Keras {m.get('keras', '?')}; load average at start "
        f"{[round(x, 2) for x in m.get('load_average', [])] or '?'}. The machine is shared, so timings are ratios of two sides measured "
        "interleaved in the same run (median of the repeats); absolute times are context only.",
        "",
        "| benchmark | target | result | verdict | run date | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results["benchmarks"].items():
        result = row.get("summary") if row.get("status") == "ok" else f"not run: {row.get('reason', '')}"
        lines.append(f"| {name} | {row.get('target', '')} | {_cell(result)} | {_met(row)} | {row.get('date', '')} "
                     f"| {row.get('seconds', '')} |")
    return lines


def update_readme(readme: Path, results: dict) -> bool:
    """Replaces the README's text between the bench markers with `render_table`; False without markers."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    files.write_text(readme, head + README_START + "\n" + "\n".join(render_table(results)) + "\n" + README_END + tail)
    return True


def render_markdown(results: dict) -> str:
    """The benchmark report, generated from `results` (nothing in it is typed by hand)."""
    lines = ["# tlkeras benchmarks" + (" (quick mode: tiny sizes, not for citing)" if results["quick"] else ""),
             "", *render_table(results)]
    for name, row in results["benchmarks"].items():
        lines += ["", f"## {name}", ""]
        if row.get("status") != "ok":
            lines.append(f"Not run: {row.get('reason', '')}")
            continue
        if row.get("met") is False and row.get("cause"):
            lines += [f"**Missed.** Measured cause: {row['cause']}", ""]
        if row.get("notes"):
            lines += [row["notes"], ""]
        lines += _derived_notes(name, row)
        lines.append("```json")
        lines.append(json.dumps(row.get("figures", {}), indent=1))
        lines.append("```")
    return "\n".join(lines) + "\n"


def _derived_notes(name: str, row: dict) -> list[str]:
    """Notes computed from a row's figures (never typed-in numbers)."""
    notes = []
    if name == "roofline":
        figures = row.get("figures", {})
        for backbone, b in figures.get("backbones", {}).items():
            ratios = b.get("ratio_to_default", {})
            best = b.get("best_option")
            verdict = ("a clear gain over the default" if ratios.get(best, 1) >= 1.1 else
                       "within 10% of the default, i.e. within this shared machine's run-to-run spread: keep "
                       "the defaults (float32, no XLA)")
            notes.append(f"- {backbone}: best option {best}, {verdict}. Relative to the batch size in the "
                         "summary, float32: " + ", ".join(f"{k} {v}x" for k, v in ratios.items()) + ".")
            over = {k: v for k, v in b.get("percent_of_fp32_peak", {}).items() if v > 100}
            if over:
                notes.append(f"  Above 100% of the measured matmul 'peak' ({figures.get('matmul_peak_fp32_gflops')} "
                             f"GFLOP/s) for {', '.join(over)}: the tf.linalg.matmul probe under-measures this "
                             "CPU's peak (oneDNN convolutions run faster than it, and the probe and the "
                             "forward passes ran at different moments on a shared machine), so read these "
                             "percentages as relative, not absolute.")
        notes.append("")
    if name == "data_efficiency":
        image = row.get("figures", {}).get("fashion_mnist_accuracy", {})
        chance = [k for k, v in image.items() if isinstance(v, dict) and v.get("scratch", {}).get("mean", 1) <= 0.15]
        if chance:
            notes += [f"Caution: the from-scratch EfficientNet-Lite0 stayed at chance (10 classes) at {', '.join(chance)} "
                      "labels/class within its pass budget, so the feature-extraction margin over it measures a "
                      "failed baseline, not a trained one; the 20-point target should be read against a scratch "
                      "model that learns.", ""]
    return notes


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


if __name__ == "__main__":
    sys.exit(main())
