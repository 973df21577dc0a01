"""Regression: a linear head, mean squared error, and MAE / RMSE / R² evaluation."""

from __future__ import annotations

import warnings

from tlkeras import plots
from tlkeras.tasks.base import Task, check_rows, fail, float_array, label_names


class Regression(Task):
    name = "regression"
    activation = None
    outputs = ("predictions",)
    item = "target"
    headline = "r2"
    summary = (("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R²"))

    def n_outputs(self, labels, targets):
        return 1 if targets.ndim == 1 else targets.shape[1]

    def loss_and_metrics(self, label_smoothing=0.0, one_hot=False):
        import keras

        return keras.losses.MeanSquaredError(), [keras.metrics.MeanAbsoluteError(name="mae")]

    def postprocess(self, outputs, labels, threshold):
        return {"predictions": outputs}

    def score(self, y_true, y_score, labels, threshold):
        return _score(y_true, y_score, labels)


def _score(y_true, y_score, labels):
    from sklearn import metrics as skm
    from sklearn.exceptions import UndefinedMetricWarning

    y_true = float_array(y_true, "y_true")
    y_score = float_array(y_score, "y_score")
    if y_true.ndim == 1 and y_score.ndim == 2 and y_score.shape[1] == 1:
        y_score = y_score[:, 0]  # a Dense(1) head outputs (N, 1)
    if y_true.ndim not in (1, 2) or y_true.shape != y_score.shape:
        check_rows(y_true, y_score)
        fail("regression y_true and y_score must have the same shape, (N,) or (N, T)",
             f"y_true.shape={y_true.shape}, y_score.shape={y_score.shape}")
    targets_true = y_true.reshape(len(y_true), -1)
    targets_pred = y_score.reshape(len(y_score), -1)
    names = label_names(labels, targets_true.shape[1], "target", y_score.shape)

    notes = []
    if len(y_true) < 2:
        notes.append("R² needs at least 2 samples; it is reported as null")

    def scores(true, pred):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            r2 = skm.r2_score(true, pred) if len(true) >= 2 else None
        return {"mae": skm.mean_absolute_error(true, pred), "rmse": skm.root_mean_squared_error(true, pred), "r2": r2}

    result = {"num_samples": len(y_true), "num_targets": len(names), "labels": names,
              **scores(targets_true, targets_pred)}
    if len(names) > 1:
        result["per_target"] = {name: scores(targets_true[:, t], targets_pred[:, t]) for t, name in enumerate(names)}
    if len(names) > plots.MAX_REGRESSION_PANELS:
        notes.append(f"pred_vs_true.png shows the first {plots.MAX_REGRESSION_PANELS} of {len(names)} targets")
    result["notes"] = notes
    r2_by_target = [result["r2"]] if len(names) == 1 else [result["per_target"][n]["r2"] for n in names]
    figures = [("pred_vs_true.png", "Predicted vs true",
                lambda: plots.predicted_vs_true(targets_true, targets_pred, names, r2_by_target))]
    return result, figures
