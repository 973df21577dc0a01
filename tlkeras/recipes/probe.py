"""The probe: a linear head on frozen features fitted to convergence by a full-batch solver, its L2 strength
chosen by k-fold cross-validation on the training data, then written into an ordinary Keras `Dense` layer
(no scikit-learn at serving time).

- classification: multinomial logistic regression (L-BFGS, in the examples' span when N < D), softmax;
- multilabel: one logistic regression per label (L-BFGS), sigmoid;
- regression: ridge regression (closed form), linear.

Features are standardised for the fit (mean 0, variance 1 per dimension); the standardisation is folded into
the Dense layer's kernel and bias, so the exported head takes raw features. The candidates also include the
unstandardised fit at C = 1 that scikit-learn's `LogisticRegression()` defaults make; it is kept unless
another candidate beats it by more than its standard error across folds, and used when there are too few
examples to cross-validate, so the probe does not fall below those ten lines by chasing fold noise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from tlkeras.errors import TlkerasError

# Inverse L2 strengths tried (scikit-learn's C); ridge uses alpha = 1 / C.
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
MAX_ITER = 2000
SINGLE_THREAD_ROWS = 20_000


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


# scikit-learn's `LogisticRegression()` defaults: raw features, C = 1.
SKLEARN_DEFAULT = _Candidate(False, 1.0)


def candidates(task: str) -> list[_Candidate]:
    grid = [_Candidate(True, c) for c in C_GRID]
    if task != "regression":
        grid.append(SKLEARN_DEFAULT)
    return grid


def _choose(grid, scores: dict, task: str, n_folds: int) -> _Candidate:
    """The candidate to refit: the best cross-validated one, except that for logistic probes scikit-learn's
    default stays unless another beats it by more than the default's standard error (fold spread / sqrt(folds)).
    On a few examples per class the folds are too noisy to tell the candidates apart, and picking the
    luckiest one cost points against the default (Fashion-MNIST at 5 labels/class: 3.9)."""
    best = max(grid, key=lambda c: scores[c.name][0])  # ties: the first, i.e. the stronger regularisation
    if task == "regression":
        return best
    mean, std = scores[SKLEARN_DEFAULT.name]
    return best if scores[best.name][0] > mean + std / np.sqrt(n_folds) + 1e-12 else SKLEARN_DEFAULT


def fit_probe(features, targets, task: str, folds: int = 5, class_weight: str | None = None, seed: int = 0,
              cv_indices=None, n_classes: int | None = None) -> ProbeFit:
    """Fits the probe head, choosing its regularisation by cross-validation.

    Args:
        features: np.ndarray (N, D). Frozen backbone features.
        targets: np.ndarray. Class ids (N,), multi-hot (N, C) or regression targets (N,) / (N, T).
        task: str. "classification", "multilabel" or "regression".
        folds: int. Cross-validation folds; fewer when a class has fewer examples. Defaults to 5.
        class_weight: str or None. "balanced" weighs classes inversely to their frequency. Defaults to None.
        seed: int. Seed of the fold assignment.
        cv_indices: list of (train, validation) index pairs, to use instead of `folds` random folds.
        n_classes: int or None. Classification: the head's width, when the last classes may be absent from
            `targets` (a fold of a tiny set). Defaults to the largest class id + 1.

    Returns:
        ProbeFit, refit on every example with the winning candidate.

    Example:
    >>> fit = fit_probe(train_features, train.targets, "classification")
    >>> assign(head, fit)      # head = recipes.heads.build_head(D, "classification", n_classes)
    """
    from threadpoolctl import threadpool_limits

    # One BLAS thread below SINGLE_THREAD_ROWS: on these small dense problems OpenBLAS's thread hand-offs cost
    # more than they save (per L-BFGS iteration here: 17x faster at 500 rows, 1.8x at 10,000; even at 40,000).
    with threadpool_limits(1 if len(features) < SINGLE_THREAD_ROWS else None):
        return _fit_probe(features, targets, task, folds, class_weight, seed, cv_indices, n_classes)


def _fit_probe(features, targets, task, folds, class_weight, seed, cv_indices, n_classes) -> ProbeFit:
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
        fold_scores: dict[str, list[float]] = {c.name: [] for c in grid}
        for train_idx, val_idx in splits:
            # One solver per fold and standardisation, run along the C grid with warm starts.
            for standardise in dict.fromkeys(c.standardise for c in grid):
                solver = _Solver(x[train_idx], y[train_idx], task, standardise, class_weight, n_classes)
                for candidate in (c for c in grid if c.standardise == standardise):
                    kernel, bias = solver.fit(candidate.c)
                    fold_scores[candidate.name].append(_score(x[val_idx] @ kernel + bias, y[val_idx], task))
        scores = {name: (float(np.mean(v)), float(np.std(v))) for name, v in fold_scores.items()}
        best = _choose(grid, scores, task, len(splits))
    else:  # too few examples to cross-validate (one per class): scikit-learn's default, or ridge at alpha = 1
        best = SKLEARN_DEFAULT if task != "regression" else _Candidate(True, 1.0)
    kernel, bias = _fit(x, y, task, best, class_weight, n_classes)
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
        if counts.max() < 2:  # one example per class: a held-out example's class is never in its fold's training
            return []
    k = int(min(folds, n // 2))
    if k < 2:
        return []
    return list(KFold(k, shuffle=True, random_state=seed).split(np.zeros(n)))


def _standardiser(x, on: bool):
    if not on:
        return np.zeros(x.shape[1]), np.ones(x.shape[1])
    mean, std = x.mean(axis=0), x.std(axis=0)
    return mean, np.where(std > 1e-8, std, 1.0)


def _fit(x, y, task, candidate: _Candidate, class_weight, n_classes: int | None = None):
    return _Solver(x, y, task, candidate.standardise, class_weight, n_classes).fit(candidate.c)


class _Solver:
    """Fits one training set at several regularisation strengths: the standardisation and the span are
    computed once, and each fit starts from the previous one's solution (a warm start along the C path)."""

    def __init__(self, x, y, task, standardise: bool, class_weight, n_classes: int | None = None):
        self.task, self.class_weight = task, class_weight
        self.n_classes = n_classes or (int(np.max(y)) + 1 if task == "classification" else None)
        self.mean, self.std = _standardiser(x, standardise)
        z = (x - self.mean) / self.std
        self.z = z
        self.y = y
        self.warm: dict = {}
        if task != "regression":
            self.coordinates, self.basis = _span(z)

    def fit(self, c: float):
        if self.task == "regression":
            coef, intercept = _ridge(self.z, self.y, 1.0 / c)
        elif self.task == "classification":
            coef, intercept = _logistic(self, c)
        else:
            columns = [_binary_column(self, j, c) for j in range(self.y.shape[1])]
            coef = np.stack([k for k, _ in columns], axis=1)
            intercept = np.array([b for _, b in columns])
        # Fold the standardisation into the layer: ((x - m) / s) @ coef + b = x @ (coef / s) + (b - m/s @ coef)
        kernel = coef / self.std[:, None]
        return kernel, intercept - (self.mean / self.std) @ coef

    def lift(self, coef):
        """Coefficients in the span's coordinates back to feature space."""
        return coef if self.basis is None else self.basis @ coef


def _sample_weights(y, class_weight):
    if class_weight != "balanced":
        return np.ones(len(y))
    counts = np.bincount(y, minlength=int(y.max()) + 1).astype(np.float64)
    present = counts > 0
    per_class = np.zeros_like(counts)
    per_class[present] = len(y) / (present.sum() * counts[present])
    return per_class[y]


def _lbfgs(objective, size, init=None):
    from scipy.optimize import minimize

    start = np.zeros(size) if init is None or len(init) != size else init
    result = minimize(objective, start, jac=True, method="L-BFGS-B",
                      options={"maxiter": MAX_ITER, "gtol": 1e-5, "ftol": 1e-10})
    return result.x


def _span(z):
    """(coordinates, basis): with fewer examples than features, the L2-regularised optimum lies in the span
    of the examples, so the fit runs on their coordinates in an orthonormal basis of it (Z = U S V', fit on
    U S, W = V B): the same objective, exactly, in N dimensions instead of D."""
    if z.shape[0] >= z.shape[1]:
        return z, None
    # From the N x N Gram matrix (an eigendecomposition there is far cheaper than an SVD of Z).
    eigenvalues, u = np.linalg.eigh(z @ z.T)
    keep = eigenvalues > eigenvalues.max() * 1e-12
    singular = np.sqrt(eigenvalues[keep])
    u = u[:, keep]
    return u * singular, (z.T @ u) / singular


def _softmax_fit(z, onehot, c, weights, init=None):
    """Multinomial logistic regression, scikit-learn's objective: 1/2 |W|^2 + C sum_i w_i CE_i, the intercept
    unpenalised, by L-BFGS (in the examples' span when N < D, see `_span`)."""
    n, d = z.shape
    k = onehot.shape[1]

    def unpack(theta):
        return theta[: -k].reshape(-1, k), theta[-k:]

    def objective(theta):
        coef, bias = unpack(theta)
        logits = z @ coef + bias
        logits -= logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=1, keepdims=True))
        probabilities = np.exp(logits - log_norm)
        loss = -np.sum(weights * np.sum(onehot * (logits - log_norm), axis=1))
        residual = c * weights[:, None] * (probabilities - onehot)
        value = 0.5 * np.sum(coef * coef) + c * loss
        grad_coef = z.T @ residual + coef
        return value, np.concatenate([grad_coef.ravel(), residual.sum(axis=0)])

    theta = _lbfgs(objective, d * k + k, init)
    coef, bias = unpack(theta)
    return coef, bias, theta


def _logistic(solver: _Solver, c):
    y = solver.y.astype(np.int64)
    n_classes = solver.n_classes
    present = np.unique(y)
    weights = _sample_weights(y, solver.class_weight)
    kernel = np.zeros((solver.z.shape[1], n_classes))
    bias_out = np.full(n_classes, -1e4)  # a class absent from this fold's training data is never predicted
    if len(present) == 2:  # scikit-learn's binary form: one weight vector, the log-odds of the second class
        coef, bias, solver.warm["binary"] = _binary_fit(solver.coordinates, (y == present[1]).astype(np.float64), c,
                                                        weights, solver.warm.get("binary"))
        kernel[:, present[1]] = solver.lift(coef)
        bias_out[present[0]], bias_out[present[1]] = 0.0, bias
        return kernel, bias_out
    onehot = np.eye(n_classes)[y][:, present]
    coef, bias, solver.warm["softmax"] = _softmax_fit(solver.coordinates, onehot, c, weights, solver.warm.get("softmax"))
    kernel[:, present] = solver.lift(coef)
    bias_out[present] = bias
    return kernel, bias_out


def _binary_fit(z, t, c, weights, init=None):
    """Binary logistic regression, 1/2 |w|^2 + C sum_i w_i log-loss_i, the intercept unpenalised (in the
    examples' span when N < D, like `_softmax_fit`)."""
    n, d = z.shape

    def objective(theta):
        coef, bias = theta[:-1], theta[-1]
        margin = z @ coef + bias
        loss = np.sum(weights * (np.logaddexp(0.0, margin) - t * margin))
        residual = c * weights * (1.0 / (1.0 + np.exp(-margin)) - t)
        value = 0.5 * coef @ coef + c * loss
        grad = z.T @ residual + coef
        return value, np.concatenate([grad, [residual.sum()]])

    theta = _lbfgs(objective, d + 1, init)
    return theta[:-1], float(theta[-1]), theta


def _binary_column(solver: _Solver, column: int, c):
    y = solver.y[:, column].astype(np.int64)
    if y.min() == y.max():  # a label always or never on in these examples: a constant score
        return np.zeros(solver.z.shape[1]), (8.0 if y[0] else -8.0)
    weights = _sample_weights(y, solver.class_weight)
    coef, bias, solver.warm[column] = _binary_fit(solver.coordinates, y.astype(np.float64), c, weights,
                                                  solver.warm.get(column))
    return solver.lift(coef), bias


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
