"""Evaluation of predictions held as numpy arrays: the task's metrics, its plots, `metrics.json` and a
self-contained HTML report. Used at the end of every training run and by `tlkeras evaluate`. Nothing here
imports TensorFlow.

Example:
>>> result = evaluate_predictions([0, 1, 1], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], ["cat", "dog"],
...                               "classification", out_dir="runs/demo/eval")
>>> result["accuracy"], result["roc_auc"]
(0.6666666666666666, 1.0)
"""

from __future__ import annotations

from pathlib import Path

from tlkeras import files, plots, tasks
from tlkeras.errors import TlkerasError
from tlkeras.evaluation import report
from tlkeras.tasks.base import jsonable

DEFAULT_THRESHOLD = 0.5


def evaluate_predictions(y_true, y_score, labels, task, out_dir=None, title="", threshold=DEFAULT_THRESHOLD,
                         extra=None, history_csv=None, sections=(), fields=None) -> dict:
    """dict: Scores predictions and optionally writes plots, `metrics.json` and `report.html`.

    Args:
        y_true: array. "classification": integer class ids (N,) (one-hot (N, C) is also accepted).
            "multilabel": multi-hot (N, C). "regression": targets (N,) or (N, T).
        y_score: array. "classification": class probabilities (N, C); a single column (N,) or (N, 1)
            is read as P(class 1) of a binary problem. "multilabel": sigmoid outputs (N, C).
            "regression": predictions with the shape of `y_true` ((N, 1) is accepted for (N,)).
        labels: list of str or None. One name per class, label or target. Defaults to "0", "1", ...
            (or "target" / "target_0", ... for regression) when None.
        task: str. "classification", "multilabel" or "regression".
        out_dir: str or Path. When given, writes `metrics.json`, the task's plots and `report.html` there.
            Defaults to None.
        title: str. Report title. Defaults to "<Task> evaluation".
        threshold: float. Score above which a label is predicted (multilabel) or class 1 is predicted
            (binary classification). Defaults to 0.5.
        extra: dict or None. Run details (config, training time, ...) shown as a table in the report.
        history_csv: str or Path or None. A Keras `CSVLogger` file; with `out_dir`, its curves are written
            to `history.png` and embedded in the report. Defaults to None.
        sections: list of str. More HTML sections for the report. Defaults to none.
        fields: dict or None. More top-level entries of the result (e.g. the split evaluated, training
            time), so `metrics.json` is written once, in one shape. Defaults to None.

    Returns:
        A JSON-serialisable dict of metrics (NaN becomes None). `notes` lists metrics that were skipped
        or need care; `files` lists the files written (empty without `out_dir`).
    """
    task = tasks.get(task)
    if task.name != "regression" and not 0.0 <= float(threshold) <= 1.0:
        raise TlkerasError(f"threshold must lie in [0, 1]. Received: threshold={threshold!r}")
    result, figures = task.score(y_true, y_score, labels, float(threshold))
    result = {"task": task.name, "title": title or f"{task.name.capitalize()} evaluation", **result, **(fields or {}), "files": []}
    if out_dir is None:
        return jsonable(result)
    out = Path(out_dir)
    images = []
    for name, caption, draw in figures:
        png = draw()
        if png is None:
            continue
        files.write_bytes(out / name, png)
        result["files"].append(str(out / name))
        images.append((caption, png))
    if history_csv is not None:
        png = plots.training_history(history_csv)
        files.write_bytes(out / "history.png", png)
        result["files"].append(str(out / "history.png"))
        images.append(("Training history", png))
    result["files"] += [str(out / "report.html"), str(out / "metrics.json")]
    result = jsonable(result)
    files.write_text(out / "report.html", report.render(result, images, extra, list(sections)))
    files.write_json(out / "metrics.json", result, indent=2)
    return result


__all__ = ["DEFAULT_THRESHOLD", "evaluate_predictions"]
