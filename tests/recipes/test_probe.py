"""The probe head: converged, regularised by cross-validation, and an ordinary Keras Dense layer."""

import numpy as np
import pytest

from tlkeras.recipes import probe
from tlkeras.recipes.heads import build_head


def _blobs(n_per_class=20, classes=4, dim=40, informative=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2.0, (classes, informative))
    y = np.repeat(np.arange(classes), n_per_class)
    x = np.concatenate([centres[y] + rng.normal(0, 1.5, (len(y), informative)),
                        rng.normal(0, 3.0, (len(y), dim - informative)) * rng.uniform(0.1, 10, dim - informative)], 1)
    return x.astype("float32"), y


def test_probe_matches_or_beats_scikit_learn_on_held_out_data():
    from sklearn.linear_model import LogisticRegression

    wins = []
    for seed in range(5):
        x, y = _blobs(seed=seed)
        x_test, y_test = _blobs(n_per_class=200, seed=seed)
        x_test = x_test[:, :]  # the same centres: _blobs draws them from the seed first
        reference = LogisticRegression(max_iter=2000).fit(x, y).score(x_test, y_test)
        fit = probe.fit_probe(x, y, "classification", seed=seed)
        ours = float(np.mean(probe.predict(fit, x_test, "classification").argmax(1) == y_test))
        wins.append(ours - reference)
    assert np.mean(wins) >= -0.005, wins


def test_the_default_candidate_reaches_scikit_learn_s_optimum():
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs()
    x = x.astype(np.float64)
    kernel, bias = probe._fit(x, y, "classification", probe._Candidate(False, 1.0), None)
    expected = LogisticRegression(max_iter=5000, tol=1e-8).fit(x, y).predict_proba(x)  # converged tightly
    z = x @ kernel + bias
    np.testing.assert_allclose(probe._activate(z, "classification"), expected, atol=1e-4)


def test_cross_validation_scores_every_candidate_and_refits_on_all_data():
    x, y = _blobs()
    fit = probe.fit_probe(x, y, "classification", folds=4)
    assert fit.folds == 4 and set(fit.cv_scores) == {c.name for c in probe.candidates("classification")}
    best = max(fit.cv_scores, key=lambda k: fit.cv_scores[k][0])
    assert fit.choice == best != probe.SKLEARN_DEFAULT.name  # these blobs' scales make standardising clearly better
    # Refit on all 80 examples: training accuracy of the winner, not of one fold's model.
    assert np.mean(probe.predict(fit, x, "classification").argmax(1) == y) >= max(m for m, _ in fit.cv_scores.values())


@pytest.mark.parametrize("task", ["classification", "multilabel", "regression"])
def test_keras_head_with_probe_weights_predicts_like_the_probe(task):
    x, y = _blobs(classes=3)
    targets = {"classification": y, "multilabel": np.eye(3, dtype="float32")[y],
               "regression": np.stack([y * 1.0, x[:, 0]], 1).astype("float32")}[task]
    fit = probe.fit_probe(x, targets, task, folds=3)
    head = build_head(x.shape[1], task, fit.kernel.shape[1], dropout=0.0)
    probe.assign(head, fit)
    np.testing.assert_allclose(head.predict(x, verbose=0), probe.predict(fit, x, task), rtol=1e-4, atol=1e-5)


def test_ridge_matches_scikit_learn_at_the_chosen_alpha():
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    x, y = _blobs()
    target = (x[:, :3] @ np.array([1.0, -2.0, 0.5]) + np.random.default_rng(1).normal(0, 0.1, len(x)))
    fit = probe.fit_probe(x, target, "regression")
    c = float(fit.choice.split("C=")[1])
    z = StandardScaler().fit_transform(x)
    expected = Ridge(alpha=1.0 / c).fit(z, target).predict(z)
    np.testing.assert_allclose(probe.predict(fit, x, "regression")[:, 0], expected, rtol=1e-4, atol=1e-4)


def test_a_binary_problem_uses_two_softmax_columns():
    x, y = _blobs(classes=2)
    fit = probe.fit_probe(x, y, "classification")
    assert fit.kernel.shape == (x.shape[1], 2)
    proba = probe.predict(fit, x, "classification")
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    assert np.mean(proba.argmax(1) == y) > 0.8


def test_a_subset_lacking_the_last_class_still_fills_the_whole_head():
    x, y = _blobs(classes=4)
    keep = y < 3  # a fold of a tiny set: class 3 absent from its training part
    fit = probe.fit_probe(x[keep], y[keep], "classification", folds=2, n_classes=4)
    assert fit.kernel.shape == (x.shape[1], 4) and fit.bias.shape == (4,)
    head = build_head(x.shape[1], "classification", 4)
    probe.assign(head, fit)
    assert not (probe.predict(fit, x, "classification").argmax(1) == 3).any()  # the absent class is never predicted


def test_one_example_per_class_is_scikit_learn_s_default():
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs(n_per_class=1, classes=5)
    x = x.astype(np.float64)  # scikit-learn stops early on float32
    fit = probe.fit_probe(x, y, "classification")
    assert fit.folds == 0 and fit.choice == probe.SKLEARN_DEFAULT.name
    x_test = _blobs(n_per_class=50, classes=5)[0].astype(np.float64)
    expected = LogisticRegression(max_iter=5000, tol=1e-8).fit(x, y).predict_proba(x_test)
    ours = probe.predict(fit, x_test, "classification")
    np.testing.assert_array_equal(ours.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(ours, expected, atol=0.02)  # both converged; features up to 30 apart in scale


def test_a_candidate_replaces_the_default_only_when_it_wins_by_more_than_a_standard_error():
    grid = probe.candidates("classification")
    default = probe.SKLEARN_DEFAULT.name
    scores = {c.name: (0.70, 0.05) for c in grid}
    scores["standardised, C=0.1"] = (0.74, 0.05)  # +4 points; the default's standard error over 4 folds: 2.5
    assert probe._choose(grid, scores, "classification", 4).name == "standardised, C=0.1"
    scores["standardised, C=0.1"] = (0.72, 0.05)  # +2 points: inside the fold noise
    assert probe._choose(grid, scores, "classification", 4).name == default
    scores[default] = (0.75, 0.0)  # the default is best outright
    assert probe._choose(grid, scores, "classification", 4).name == default
