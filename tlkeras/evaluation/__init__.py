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
from tlkeras.evaluation.confidence import LEVEL, bootstrap_intervals
from tlkeras.tasks.base import jsonable

DEFAULT_THRESHOLD = 0.5


def evaluate_predictions(y_true, y_score, labels, task, out_dir=None, title="", threshold=DEFAULT_THRESHOLD,
                         extra=None, history_csv=None, sections=(), fields=None, examples=None, kind=None,
                         gallery_size: int = 12) -> dict:
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
        examples: list of str or None. The evaluated inputs (paths or texts), for the report's gallery of the
            most confidently wrong predictions. Defaults to None (no gallery).
        kind: InputKind or None. How to show an example in the gallery (a thumbnail, a text).
        gallery_size: int. How many wrong examples the gallery shows. Defaults to 12.

    Returns:
        A JSON-serialisable dict of metrics (NaN becomes None). `notes` lists metrics that were skipped
        or need care; `files` lists the files written (empty without `out_dir`).
    """
    task = tasks.get(task)
    if task.name != "regression" and not 0.0 <= float(threshold) <= 1.0:
        raise TlkerasError(f"threshold must lie in [0, 1]. Received: threshold={threshold!r}")
    result, figures = task.score(y_true, y_score, labels, float(threshold))
    result = {"task": task.name, "title": title or f"{task.name.capitalize()} evaluation", **result, **(fields or {}),
              "confidence_level": LEVEL,
              "confidence_intervals": bootstrap_intervals(task.name, y_true, y_score, float(threshold)),
              "files": []}
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
    sections = list(sections)
    if examples is not None and kind is not None and task.name == "classification":
        sections.insert(0, report.gallery(confidently_wrong(y_true, y_score, gallery_size), examples, kind,
                                          result["labels"]))
    files.write_text(out / "report.html", report.render(result, images, extra, sections))
    files.write_json(out / "metrics.json", result, indent=2)
    return result


def confidently_wrong(y_true, y_score, count: int) -> list[tuple[int, int, int, float]]:
    """list of (row, true class, predicted class, confidence): the wrong predictions made with the highest
    probability, most confident first (fastai's "top losses")."""
    import numpy as np

    y_score = np.asarray(y_score, dtype=np.float64)
    if y_score.ndim == 1 or y_score.shape[1] == 1:
        y_score = np.stack([1 - y_score.reshape(-1), y_score.reshape(-1)], axis=1)
    y_true = np.asarray(y_true)
    if y_true.ndim == 2:
        y_true = y_true.argmax(axis=1)
    predicted = y_score.argmax(axis=1)
    wrong = np.flatnonzero(predicted != y_true)
    order = wrong[np.argsort(-y_score[wrong, predicted[wrong]])][:count]
    return [(int(i), int(y_true[i]), int(predicted[i]), float(y_score[i, predicted[i]])) for i in order]


__all__ = ["DEFAULT_THRESHOLD", "bootstrap_intervals", "confidently_wrong", "evaluate_predictions"]
