"""Bootstrap confidence intervals for the headline metrics of an evaluation: on small test sets a single
accuracy hides how much it could move."""

from __future__ import annotations

import warnings

import numpy as np

LEVEL = 0.95
RESAMPLES = 1000


def _metrics(task: str, y_true, y_score, threshold: float) -> dict:
    from sklearn import metrics as skm

    if task == "classification":
        from tlkeras.tasks.classification import predicted_classes

        y_pred = predicted_classes(y_score, threshold)
        labels = list(range(y_score.shape[1]))
        out = {"accuracy": float(np.mean(y_pred == y_true)),
               "f1_macro": float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))}
        present = np.unique(y_true)
        if len(present) > 1:
            if y_score.shape[1] == 2:
                out["roc_auc"] = float(skm.roc_auc_score(y_true, y_score[:, 1]))
            else:
                aucs = [skm.roc_auc_score(y_true == c, y_score[:, c]) for c in present]
                out["roc_auc"] = float(np.mean(aucs))
        return out
    if task == "multilabel":
        y_pred = (y_score > threshold).astype(int)
        out = {"f1_macro": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))}
        columns = [j for j in range(y_true.shape[1]) if 0 < y_true[:, j].sum() < len(y_true)]
        if columns:
            out["roc_auc_macro"] = float(np.mean([skm.roc_auc_score(y_true[:, j], y_score[:, j]) for j in columns]))
        return out
    true, pred = y_true.reshape(len(y_true), -1), y_score.reshape(len(y_score), -1)
    out = {"mae": float(np.mean(np.abs(true - pred)))}
    if len(true) > 1 and np.var(true, axis=0).min() > 0:
        out["r2"] = float(skm.r2_score(true, pred))
    return out


def bootstrap_intervals(task: str, y_true, y_score, threshold: float = 0.5, level: float = LEVEL,
                        resamples: int = RESAMPLES, seed: int = 0) -> dict[str, list[float]]:
    """dict: metric -> [low, high], the percentile interval of the metric over `resamples` resamplings of the
    evaluated examples with replacement.

    Example:
    >>> bootstrap_intervals("classification", y, probabilities)["accuracy"]
    [0.81, 0.89]
    """
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    if task == "classification":
        if y_score.ndim == 1 or y_score.shape[1] == 1:
            positive = y_score.reshape(-1)
            y_score = np.stack([1 - positive, positive], axis=1)
        if y_true.ndim == 2:
            y_true = y_true.argmax(axis=1)
        y_true = y_true.astype(np.int64)
    elif task == "regression" and y_true.ndim == 1 and y_score.ndim == 2 and y_score.shape[1] == 1:
        y_score = y_score[:, 0]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    n = len(y_true)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(resamples):
            rows = rng.integers(0, n, n)
            for key, value in _metrics(task, y_true[rows], y_score[rows], threshold).items():
                draws.setdefault(key, []).append(value)
    tail = (1 - level) / 2 * 100
    # A metric undefined in some resamples (one class drawn) is reported from the resamples that define it.
    return {key: [round(float(np.percentile(v, tail)), 4), round(float(np.percentile(v, 100 - tail)), 4)]
            for key, v in draws.items() if len(v) >= resamples // 2}
