"""How well a backbone's frozen features suit a task, before any training: LogME.

LogME (You et al., ICML 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning")
fits, for each target y (one column per class, one-vs-rest, or per regression output), the Bayesian
linear model y = F w + noise with prior w ~ N(0, I / alpha) and noise ~ N(0, I / beta), and scores the
features by the log marginal evidence log p(y | F, alpha, beta) at the alpha and beta that maximise it,
divided by N and averaged over targets. Higher is better; the evidence, unlike the likelihood, does not
grow by overfitting.

With A = alpha I + beta F'F and m = beta A^-1 F'y the evidence is

    N/2 log beta + D/2 log alpha - N/2 log 2 pi - beta/2 |Fm - y|^2 - alpha/2 |m|^2 - 1/2 log det A

and its maximum satisfies the fixed point gamma = sum_i beta s_i^2 / (alpha + beta s_i^2),
alpha = gamma / |m|^2, beta = (N - gamma) / |Fm - y|^2 (MacKay's evidence approximation), which LogME
iterates. Everything there depends on F only through its singular values s_i and the projections
z = U'y of y on its left singular vectors, so one decomposition serves every target and iteration.

How it is computed here: a QR factorisation of [F | Y], streamed over blocks of rows (so N can be large
and F a memory map), gives R = [[R11, Z], [0, R22]]; one SVD of the small R11 (min(N, D) x D) gives the
s_i, and U'y = U11' Z. The part of y outside F's column space, |R22|^2, comes out of the same
factorisation rather than as |y|^2 - |U'y|^2, which cancels. Nothing forms F'F (which squares the
condition number), and the same code serves N < D (then D - N eigenvalues of F'F are zero and enter
log det A as (D - N) log alpha) and N > D. With N < D the features can fit the targets exactly, and the
best beta may be infinite: the iteration then stops when the evidence has settled at its supremum.

Example:
>>> logme(features, labels)  # features (N, D), labels (N,) class ids
-0.71
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlkeras.errors import TlkerasError

_BLOCK_ROWS = 8192


@dataclass(frozen=True)
class LogMEResult:
    """LogME of features for a task, with the fitted model of each target.

    Attributes:
        score: float. Mean over targets of the maximum log evidence divided by N.
        evidence: np.ndarray. (K,) that value for each target (class, one-vs-rest, or output column).
        alpha: np.ndarray. (K,) prior precision of the weights at the maximum.
        beta: np.ndarray. (K,) noise precision at the maximum.
        iterations: np.ndarray. (K,) fixed-point iterations run.
        converged: np.ndarray. (K,) bool, whether alpha and beta settled to `tol`.
    """

    score: float
    evidence: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray


def logme(features, labels=None, *, targets=None) -> float:
    """float: The LogME score of `features` for a task (see `logme_result`)."""
    return logme_result(features, labels, targets=targets).score


def logme_result(
    features,
    labels=None,
    *,
    targets=None,
    max_iterations: int = 500,
    tol: float = 1e-10,
    block_rows: int = _BLOCK_ROWS,
) -> LogMEResult:
    """LogME of `features`, for class `labels` (one-vs-rest) or for regression `targets`.

    Args:
        features: array (N, D), e.g. a memory map from `cached_features`; read `block_rows` rows at a time.
        labels: array (N,) of class ids (any values); each class becomes a 0/1 target. Defaults to None.
        targets: array (N,) or (N, K) of real targets, instead of `labels`. Defaults to None.
        max_iterations: int. Fixed-point iterations at most, per target. Defaults to 500.
        tol: float. Stop when alpha and beta, or the evidence, change by less than this, relatively.
            Defaults to 1e-10.
        block_rows: int. Rows per block of the streamed factorisation. Defaults to 8192.

    Returns:
        A `LogMEResult`; its `score` is the paper's LogME (mean over targets of evidence / N).
    """
    if (labels is None) == (targets is None):
        raise TlkerasError("pass exactly one of labels (classification) or targets (regression). Received: "
                           f"labels={'set' if labels is not None else None}, "
                           f"targets={'set' if targets is not None else None}")
    n = len(features)
    if features.ndim != 2 or n == 0:
        raise TlkerasError(f"features must be a non-empty 2-D array (N, D). Received: shape={features.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise TlkerasError(f"labels must have one class id per row of features ({n}). Received: "
                               f"labels.shape={labels.shape}")
        classes = np.unique(labels)
        y = (labels[:, None] == classes[None, :]).astype(np.float64)
    else:
        y = np.asarray(targets, dtype=np.float64)
        y = y[:, None] if y.ndim == 1 else y
        if y.ndim != 2 or len(y) != n:
            raise TlkerasError(f"targets must have shape (N,) or (N, K) with N={n}. Received: "
                               f"targets.shape={np.shape(targets)}")
    singular, projections, outside = _spectrum(features, y, block_rows)
    fits = [_maximise_evidence(singular, projections[:, k], outside[k], n, features.shape[1],
                               max_iterations, tol) for k in range(y.shape[1])]
    evidence, alpha, beta, iterations, converged = (np.asarray(v) for v in zip(*fits, strict=True))
    return LogMEResult(float(evidence.mean()), evidence, alpha, beta, iterations, converged)


def _spectrum(features, y: np.ndarray, block_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Singular values s of F, z = U'Y (one column per target) and |Y - U U'Y|^2 per target."""
    n, d = features.shape
    k = y.shape[1]
    r = None
    for start in range(0, n, block_rows):
        block = np.hstack([np.asarray(features[start:start + block_rows], dtype=np.float64),
                           y[start:start + block_rows]])
        r = np.linalg.qr(block if r is None else np.vstack([r, block]), mode="r")
    if not np.isfinite(r).all():
        raise TlkerasError("features hold NaN or infinite values. Received: a non-finite QR factor")
    p = min(n, d)
    r11, z, r22 = r[:p, :d], r[:p, d:], r[p:, d:]
    u, s, _ = np.linalg.svd(r11, full_matrices=False)
    outside = (r22 ** 2).sum(axis=0) if len(r22) else np.zeros(k)
    return s, u.T @ z, outside


def _maximise_evidence(s, z, outside: float, n: int, d: int, max_iterations: int, tol: float):
    """(evidence / n, alpha, beta, iterations, converged) for one target, by LogME's fixed point.

    It stops when alpha and beta, or the evidence, change by less than `tol` relatively. The second
    matters when the features carry nothing about the target: then the best weights are zero, alpha
    grows without bound and the evidence approaches its supremum.
    """
    sigma = s ** 2
    tiny = np.finfo(np.float64).tiny
    alpha, beta = 1.0, 1.0
    evidence = log_evidence_from_spectrum(s, z, outside, n, d, alpha, beta)
    converged = False
    iterations = 0
    while iterations < max_iterations:
        iterations += 1
        t = alpha + beta * sigma
        gamma = float((beta * sigma / t).sum())
        weight_norm = float(((beta * s * z / t) ** 2).sum())
        residual = float(((alpha * z / t) ** 2).sum() + outside)
        new_alpha = min(gamma / max(weight_norm, tiny), 1e300)
        new_beta = min((n - gamma) / max(residual, tiny), 1e300)
        change = max(abs(new_alpha - alpha) / alpha, abs(new_beta - beta) / beta)
        alpha, beta = new_alpha, new_beta
        previous, evidence = evidence, log_evidence_from_spectrum(s, z, outside, n, d, alpha, beta)
        if change < tol or abs(evidence - previous) <= tol * abs(evidence):
            converged = True
            break
    return evidence / n, alpha, beta, iterations, converged


def log_evidence_from_spectrum(s, z, outside: float, n: int, d: int, alpha: float, beta: float) -> float:
    """float: log p(y | F, alpha, beta) from F's singular values `s`, z = U'y and |y - U U'y|^2."""
    sigma = s ** 2
    t = alpha + beta * sigma
    weight_norm = float(((beta * s * z / t) ** 2).sum())
    residual = float(((alpha * z / t) ** 2).sum() + outside)
    log_det = float(np.log(t).sum()) + (d - len(s)) * np.log(alpha)
    return float(n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
                 - beta / 2 * residual - alpha / 2 * weight_norm - log_det / 2)
