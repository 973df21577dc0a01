"""LogME: it ranks features that separate classes above noise, equals the evidence computed densely,
sits at a maximum of the evidence, and ignores the order of examples."""

from __future__ import annotations

import numpy as np
import pytest

from tlkeras.errors import TlkerasError
from tlkeras.features import logme, logme_result

# (N, D): fewer examples than dimensions, more, and many more (several blocks of the streamed QR).
SHAPES = [(40, 120), (300, 12), (2500, 24)]


def classes_and_features(n, d, classes=4, separation=2.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    means = rng.normal(0, separation, (classes, d))
    separable = (means[labels] + rng.normal(0, 1, (n, d))).astype(np.float32)
    noise = rng.normal(0, 1, (n, d)).astype(np.float32)
    return labels, separable, noise


def dense_log_evidence(f, y, alpha, beta):
    """log p(y | F, alpha, beta) written out with D x D matrices: A = alpha I + beta F'F,
    m = beta A^-1 F'y."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    return (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
            - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * m @ m - np.linalg.slogdet(a)[1] / 2)


def marginal_log_density(f, y, alpha, beta):
    """The same evidence as the density of y under its marginal N(0, I / beta + F F' / alpha)."""
    n = len(y)
    c = np.eye(n) / beta + f @ f.T / alpha
    return -(n * np.log(2 * np.pi) + np.linalg.slogdet(c)[1] + y @ np.linalg.solve(c, y)) / 2


@pytest.mark.parametrize("n,d", SHAPES)
def test_features_that_separate_the_classes_score_higher_than_noise(n, d):
    labels, separable, noise = classes_and_features(n, d)
    weak = separable * 0.1 + noise  # some signal, buried
    scores = [logme(x, labels) for x in (separable, weak, noise)]
    assert scores[0] > scores[1] > scores[2], scores


@pytest.mark.parametrize("n,d", SHAPES)
def test_the_evidence_equals_the_dense_formula_at_the_converged_alpha_and_beta(n, d):
    labels, separable, _ = classes_and_features(n, d)
    result = logme_result(separable, labels, block_rows=1000)
    assert result.converged.all() and result.evidence.shape == (4,)
    f = separable.astype(np.float64)
    for k in range(4):
        y = (labels == k).astype(np.float64)
        alpha, beta = result.alpha[k], result.beta[k]
        assert abs(dense_log_evidence(f, y, alpha, beta) / n - result.evidence[k]) < 1e-6
        if n <= 300:  # the N x N form is the independent check; too big beyond that
            assert abs(marginal_log_density(f, y, alpha, beta) / n - result.evidence[k]) < 1e-6
    assert result.score == pytest.approx(result.evidence.mean(), abs=1e-12)


@pytest.mark.parametrize("n,d", SHAPES)
def test_the_fixed_point_is_a_maximum_of_the_evidence(n, d):
    labels, separable, _ = classes_and_features(n, d)
    result = logme_result(separable, labels)
    f = separable.astype(np.float64)
    y = (labels == 1).astype(np.float64)
    alpha, beta = result.alpha[1], result.beta[1]
    best = dense_log_evidence(f, y, alpha, beta)
    for scale in (1.05, 0.95):
        assert dense_log_evidence(f, y, alpha * scale, beta) < best
        if n > d:
            assert dense_log_evidence(f, y, alpha, beta * scale) < best
            assert dense_log_evidence(f, y, alpha * scale, beta * scale) < best
        else:
            # With N < D the features interpolate the targets: the best noise precision is infinite and
            # the evidence is flat in beta at the supremum it has reached.
            assert beta > 1e6 * alpha
            assert abs(dense_log_evidence(f, y, alpha, beta * scale) - best) / n < 1e-5


@pytest.mark.parametrize("n,d", SHAPES)
def test_the_order_of_examples_does_not_matter(n, d):
    labels, separable, _ = classes_and_features(n, d)
    order = np.random.default_rng(7).permutation(n)
    assert logme(separable[order], labels[order]) == pytest.approx(logme(separable, labels), abs=1e-9)


def test_regression_targets_and_label_values_are_accepted():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(200, 10))
    y = f @ rng.normal(size=10) + rng.normal(0, 0.1, 200)
    assert logme(f, targets=y) > logme(f, targets=rng.permutation(y))
    labels, separable, _ = classes_and_features(100, 8)
    names = np.array(["cat", "dog", "owl", "yak"])[labels]
    assert logme(separable, names) == pytest.approx(logme(separable, labels), abs=1e-12)
    with pytest.raises(TlkerasError, match="exactly one of labels"):
        logme(f)
    with pytest.raises(TlkerasError, match="labels.shape=\\(199,\\)"):
        logme(f, np.zeros(199))


def test_a_rank_deficient_feature_set_still_scores():
    labels, separable, _ = classes_and_features(150, 6)
    repeated = np.hstack([separable, separable, np.zeros((150, 3), np.float32)])  # rank 6 of 15
    result = logme_result(repeated, labels)
    assert np.isfinite(result.evidence).all()
    assert result.score < logme(separable, labels) + 0.5
