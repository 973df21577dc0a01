"""The probe: a linear head on frozen features fitted to convergence by a full-batch solver, its L2 strength
chosen by k-fold cross-validation on the training data, then written into an ordinary Keras `Dense` layer
(no scikit-learn at serving time).

- classification: multinomial logistic regression (L-BFGS), softmax;
- multilabel: one logistic regression per label (L-BFGS), sigmoid;
- regression: ridge regression (closed form), linear.

Features are standardised for the fit (mean 0, variance 1 per dimension); the standardisation is folded into
the Dense layer's kernel and bias, so the exported head takes raw features. The candidates also include the
unstandardised fit at C = 1 that scikit-learn's `LogisticRegression()` defaults make, so cross-validation
can only pick it or something that scored better.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from tlkeras.errors import TlkerasError

# Inverse L2 strengths tried (scikit-learn's C); ridge uses alpha = 1 / C.
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
MAX_ITER = 2000


@dataclass
class ProbeFit:
    """A fitted probe: the Dense layer's weights and how they were chosen.

    Attributes:
        kernel: np.ndarray (D, K). On raw (unstandardised) features.
        bias: np.ndarray (K,).
        choice: str. The winning candidate, e.g. "standardised, C=0.3".
        cv_scores: dict. Candidate -> (mean, std) of the cross-validated score.
        metric: str. What cv_scores measure ("accuracy", "f1_macro", "r2").
        folds: int. Cross-validation folds (0: no cross-validation, one candidate).
        seconds: float. Time spent fitting, cross-validation included.
    """

    kernel: np.ndarray
    bias: np.ndarray
    choice: str
    cv_scores: dict = field(default_factory=dict)
    metric: str = ""
    folds: int = 0
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"choice": self.choice, "metric": self.metric, "folds": self.folds, "seconds": round(self.seconds, 2),
                "cv_scores": {k: [round(m, 4), round(s, 4)] for k, (m, s) in self.cv_scores.items()}}


@dataclass(frozen=True)
class _Candidate:
    standardise: bool
    c: float

    @property
    def name(self) -> str:
        return f"{'standardised' if self.standardise else 'raw'}, C={self.c:g}"


def candidates(task: str) -> list[_Candidate]:
    grid = [_Candidate(True, c) for c in C_GRID]
    if task != "regression":
        grid.append(_Candidate(False, 1.0))  # scikit-learn's LogisticRegression() defaults
    return grid


def fit_probe(features, targets, task: str, folds: int = 5, class_weight: str | None = None, seed: int = 0,
              cv_indices=None) -> ProbeFit:
    """Fits the probe head, choosing its regularisation by cross-validation.

    Args:
        features: np.ndarray (N, D). Frozen backbone features.
        targets: np.ndarray. Class ids (N,), multi-hot (N, C) or regression targets (N,) / (N, T).
        task: str. "classification", "multilabel" or "regression".
        folds: int. Cross-validation folds; fewer when a class has fewer examples. Defaults to 5.
        class_weight: str or None. "balanced" weighs classes inversely to their frequency. Defaults to None.
        seed: int. Seed of the fold assignment.
        cv_indices: list of (train, validation) index pairs, to use instead of `folds` random folds.

    Returns:
        ProbeFit, refit on every example with the winning candidate.

    Example:
    >>> fit = fit_probe(train_features, train.targets, "classification")
    >>> assign(head, fit)      # head = recipes.heads.build_head(D, "classification", n_classes)
    """
    start = time.perf_counter()
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets)
    if x.ndim != 2 or len(x) != len(y):
        raise TlkerasError(f"the probe needs features (N, D) and one target per row. Received: features={x.shape}, "
                           f"targets={y.shape}")
    grid = candidates(task)
    splits = cv_indices if cv_indices is not None else _folds(y, task, folds, seed)
    scores = {}
    if splits and len(grid) > 1:
        for candidate in grid:
            fold_scores = []
            for train_idx, val_idx in splits:
                kernel, bias = _fit(x[train_idx], y[train_idx], task, candidate, class_weight)
                fold_scores.append(_score(x[val_idx] @ kernel + bias, y[val_idx], task))
            scores[candidate.name] = (float(np.mean(fold_scores)), float(np.std(fold_scores)))
        # Ties go to the stronger regularisation: the grid is in ascending C, so the first maximum wins.
        best = max(grid, key=lambda c: scores[c.name][0])
    else:
        best = _Candidate(True, 1.0)
    kernel, bias = _fit(x, y, task, best, class_weight)
    metric = {"classification": "accuracy", "multilabel": "f1_macro", "regression": "r2"}[task]
    return ProbeFit(kernel.astype(np.float32), bias.astype(np.float32), best.name, scores, metric,
                    len(splits) if len(grid) > 1 else 0, time.perf_counter() - start)


def assign(head, fit: ProbeFit) -> None:
    """Writes a probe's weights into the output `Dense` layer of a linear head (`build_head` with no hidden
    units)."""
    dense = head.get_layer("outputs")
    kernel_shape = tuple(dense.kernel.shape)
    if kernel_shape != fit.kernel.shape:
        raise TlkerasError(f"the probe's kernel {fit.kernel.shape} does not fit the head's {kernel_shape}: the probe "
                           "needs a linear head (head.hidden_units: [])")
    dense.kernel.assign(fit.kernel)
    dense.bias.assign(fit.bias)


def predict(fit: ProbeFit, features, task: str) -> np.ndarray:
    """np.ndarray: what the head with these weights outputs (probabilities, scores or predictions)."""
    z = np.asarray(features, dtype=np.float64) @ fit.kernel + fit.bias
    return _activate(z, task)


# ---------------------------------------------------------------------------------------------- internals


def _folds(y, task, folds, seed):
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(y)
    if task == "classification":
        counts = np.bincount(y.astype(np.int64))
        smallest = counts[counts > 0].min()
        k = int(min(folds, smallest))
        if k >= 2:
            return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(n), y))
    k = int(min(folds, n // 2))
    if k < 2:
        return []
    return list(KFold(k, shuffle=True, random_state=seed).split(np.zeros(n)))


def _standardiser(x, on: bool):
    if not on:
        return np.zeros(x.shape[1]), np.ones(x.shape[1])
    mean, std = x.mean(axis=0), x.std(axis=0)
    return mean, np.where(std > 1e-8, std, 1.0)


def _fit(x, y, task, candidate: _Candidate, class_weight):
    mean, std = _standardiser(x, candidate.standardise)
    z = (x - mean) / std
    if task == "regression":
        coef, intercept = _ridge(z, y, 1.0 / candidate.c)
    elif task == "classification":
        coef, intercept = _logistic(z, y, candidate.c, class_weight)
    else:
        columns = [_binary_column(z, y[:, j], candidate.c, class_weight) for j in range(y.shape[1])]
        coef = np.stack([c for c, _ in columns], axis=1)
        intercept = np.array([b for _, b in columns])
    # Fold the standardisation into the layer: ((x - mean) / std) @ coef + b = x @ (coef / std) + (b - mean/std @ coef)
    kernel = coef / std[:, None]
    bias = intercept - (mean / std) @ coef
    return kernel, bias


def _logistic(z, y, c, class_weight):
    from sklearn.linear_model import LogisticRegression

    y = y.astype(np.int64)
    n_classes = int(y.max()) + 1
    present = np.unique(y)
    model = LogisticRegression(C=c, max_iter=MAX_ITER, class_weight=class_weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings at tiny C; the iteration cap is generous
        model.fit(z, y)
    kernel = np.zeros((z.shape[1], n_classes))
    bias = np.full(n_classes, -1e4)  # a class absent from this fold's training data is never predicted
    if len(present) == 2:  # scikit-learn keeps one column, the log-odds of the second class
        kernel[:, present[1]] = model.coef_[0]
        bias[present[0]], bias[present[1]] = 0.0, model.intercept_[0]
    else:
        kernel[:, present] = model.coef_.T
        bias[present] = model.intercept_
    return kernel, bias


def _binary_column(z, y, c, class_weight):
    from sklearn.linear_model import LogisticRegression

    y = y.astype(np.int64)
    if y.min() == y.max():  # a label always or never on in these examples: a constant score
        return np.zeros(z.shape[1]), (8.0 if y[0] else -8.0)
    model = LogisticRegression(C=c, max_iter=MAX_ITER, class_weight=class_weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(z, y)
    return model.coef_[0], float(model.intercept_[0])


def _ridge(z, y, alpha):
    y2 = y.reshape(len(y), -1).astype(np.float64)
    mean_y = y2.mean(axis=0)
    # Solve in the smaller of the two spaces: (Z'Z + aI)^-1 Z'y, or Z'(ZZ' + aI)^-1 y.
    if z.shape[0] >= z.shape[1]:
        coef = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y2 - mean_y))
    else:
        coef = z.T @ np.linalg.solve(z @ z.T + alpha * np.eye(z.shape[0]), y2 - mean_y)
    return coef, mean_y


def _activate(z, task):
    if task == "classification":
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    if task == "multilabel":
        return 1.0 / (1.0 + np.exp(-z))
    return z


def _score(z, y, task) -> float:
    if task == "classification":
        return float(np.mean(z.argmax(axis=1) == y))
    if task == "multilabel":
        from sklearn.metrics import f1_score

        return float(f1_score(y.astype(int), (z > 0).astype(int), average="macro", zero_division=0))
    y2 = y.reshape(len(y), -1)
    residual = ((y2 - z) ** 2).sum()
    total = ((y2 - y2.mean(axis=0)) ** 2).sum()
    return float(1 - residual / total) if total > 0 else 0.0
