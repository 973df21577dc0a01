"""Single-label classification: a softmax head, cross-entropy, and accuracy / F1 / ROC evaluation."""

from __future__ import annotations

import warnings

import numpy as np

from tlkeras import plots
from tlkeras.errors import TlkerasError
from tlkeras.tasks.base import (
    Task,
    check_binary_matrix,
    check_probabilities,
    check_rows,
    fail,
    float_array,
    label_names,
    roc_auc_or_note,
)


class Classification(Task):
    name = "classification"
    activation = "softmax"
    outputs = ("probabilities", "class_id", "label")
    item = "class"
    headline = "accuracy"
    folders = True
    summary = (
        ("accuracy", "Accuracy"),
        ("balanced_accuracy", "Balanced accuracy"),
        ("top_k_accuracy", "Top-k accuracy"),
        ("f1_macro", "Macro F1"),
        ("f1_weighted", "Weighted F1"),
        ("precision_macro", "Macro precision"),
        ("recall_macro", "Macro recall"),
        ("roc_auc", "ROC AUC"),
        ("log_loss", "Log loss"),
    )

    def check_training_data(self, labels, targets, source):
        present = np.unique(targets)
        if len(present) < 2:
            raise TlkerasError(
                f"classification needs at least two classes in the training data; {source} has only "
                f"{[labels[i] for i in present]}: add examples of another class. Received: labels={list(labels)}"
            )

    def loss_and_metrics(self, label_smoothing=0.0, one_hot=False):
        import keras

        if one_hot or label_smoothing:
            return (keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
                    [keras.metrics.CategoricalAccuracy(name="accuracy")])
        return keras.losses.SparseCategoricalCrossentropy(), [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def keras_targets(self, targets, n_outputs, one_hot):
        return np.eye(n_outputs, dtype="float32")[targets] if one_hot else targets

    def postprocess(self, outputs, labels, threshold):
        import tensorflow as tf

        names = tf.constant(list(labels), dtype=tf.string)
        class_id = tf.argmax(outputs, axis=-1, output_type=tf.int64)
        return {"probabilities": outputs, "class_id": class_id, "label": tf.gather(names, class_id)}

    def score(self, y_true, y_score, labels, threshold):
        return _score(y_true, y_score, labels, threshold)


def _prepare(y_true, y_score, labels):
    y_score = float_array(y_score, "y_score")
    if y_score.ndim == 1 or (y_score.ndim == 2 and y_score.shape[1] == 1):
        # One sigmoid unit: the score is P(class 1) of a binary problem.
        positive = y_score.reshape(-1)
        y_score = np.stack([1.0 - positive, positive], axis=1)
    if y_score.ndim != 2:
        fail("y_score must have shape (N, C) for classification", f"y_score.shape={y_score.shape}")
    num_classes = y_score.shape[1]
    names = label_names(labels, num_classes, "class", y_score.shape)
    y_true = float_array(y_true, "y_true")
    if y_true.ndim == 2 and y_true.shape[1] == num_classes and num_classes > 1:
        check_binary_matrix(y_true, "one-hot y_true")
        if not (y_true.sum(axis=1) == 1).all():
            fail("one-hot y_true must have exactly one 1 per row", f"row sums {np.unique(y_true.sum(1))}")
        y_true = y_true.argmax(axis=1)
    if y_true.ndim != 1:
        fail("y_true must hold class ids of shape (N,) for classification",
             f"y_true.shape={y_true.shape}, y_score.shape={y_score.shape}")
    check_rows(y_true, y_score)
    if not (y_true == np.round(y_true)).all() or y_true.min() < 0 or y_true.max() >= num_classes:
        fail(f"y_true must hold integer class ids in [0, {num_classes})",
             f"y_true min={y_true.min():g}, max={y_true.max():g}")
    check_probabilities(y_score, "y_score")
    sums = y_score.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-3):
        fail("y_score rows must sum to 1 for classification; apply softmax to logits, or use "
             "task='multilabel' for independent sigmoid outputs", f"row sums from {sums.min():.4g} to {sums.max():.4g}")
    # float32 softmax rows are off by ~1e-7; scikit-learn's log loss warns unless rows sum to 1 exactly.
    y_score = np.clip(y_score, 0.0, 1.0)
    return y_true.astype(np.int64), y_score / y_score.sum(axis=1, keepdims=True), names


def predicted_classes(y_score: np.ndarray, threshold: float) -> np.ndarray:
    """np.ndarray: class ids; a binary problem predicts class 1 above `threshold`, others take the arg-max."""
    if y_score.shape[1] == 2:
        return (y_score[:, 1] > threshold).astype(np.int64)
    return y_score.argmax(axis=1)


def _quote(names):
    return ", ".join(repr(n) for n in names)


def _score(y_true, y_score, labels, threshold):
    from sklearn import metrics as skm
    from sklearn.exceptions import UndefinedMetricWarning

    y_true, y_score, names = _prepare(y_true, y_score, labels)
    num_classes = len(names)
    class_ids = list(range(num_classes))
    y_pred = predicted_classes(y_score, threshold)
    notes = []
    absent = [names[i] for i in class_ids if not (y_true == i).any()]
    never_predicted = [names[i] for i in class_ids if not (y_pred == i).any()]
    if absent:
        notes.append(f"classes absent from y_true: {_quote(absent)}; their recall and F1 count as 0 in the macro "
                     "averages")
    if never_predicted:
        notes.append(f"classes never predicted: {_quote(never_predicted)}; their precision counts as 0")

    with warnings.catch_warnings():
        # Absent and never-predicted classes are reported in `notes`; scikit-learn's warnings repeat them.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", UserWarning)
        precision, recall, f1, support = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=class_ids, zero_division=0)
        averages = {}
        for average in ("macro", "weighted"):
            p, r, f, _ = skm.precision_recall_fscore_support(
                y_true, y_pred, labels=class_ids, average=average, zero_division=0)
            averages.update({f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f})
        result = {
            "num_samples": len(y_true),
            "num_classes": num_classes,
            "labels": names,
            "accuracy": skm.accuracy_score(y_true, y_pred),
            "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
        }
        if num_classes > 2:
            # k = C would always score 1.0, so stop one short of it for 3 to 5 classes.
            top_k = min(5, num_classes - 1)
            result["top_k"] = top_k
            result["top_k_accuracy"] = skm.top_k_accuracy_score(y_true, y_score, k=top_k, labels=class_ids)
        result["log_loss"] = skm.log_loss(y_true, y_score, labels=class_ids)

    per_class_auc = [roc_auc_or_note(y_true == i, y_score[:, i], f"class {names[i]!r}", notes) for i in class_ids]
    defined = [auc for auc in per_class_auc if auc is not None]
    if num_classes == 2:
        roc_auc, roc_average = per_class_auc[1], "binary (positive class: labels[1])"
        notes[:] = [n for n in notes if not n.startswith("ROC AUC skipped for class")]
        if roc_auc is None:
            notes.append("ROC AUC skipped: y_true holds a single class")
    else:
        roc_auc = float(np.mean(defined)) if defined else None
        roc_average = "macro one-vs-rest"
        if defined and len(defined) < num_classes:
            notes.append(f"roc_auc is the one-vs-rest macro average over the {len(defined)} classes with AUC")
    result.update(averages)
    result.update({"roc_auc": roc_auc, "roc_auc_average": roc_average})
    result["per_class"] = {
        names[i]: {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": support[i],
                   "roc_auc": per_class_auc[i]}
        for i in class_ids
    }
    result["confusion_matrix"] = {
        "labels": names,
        "matrix": skm.confusion_matrix(y_true, y_pred, labels=class_ids),
        "rows": "true class",
        "columns": "predicted class",
    }
    result["notes"] = notes

    def draw_roc():
        if num_classes == 2:
            if roc_auc is None:
                return None
            fpr, tpr, _ = skm.roc_curve(y_true == 1, y_score[:, 1])
            return plots.roc_curves([(names[1], fpr, tpr, roc_auc)], None, "ROC (positive class: " + names[1] + ")")
        curves = [(names[i], *skm.roc_curve(y_true == i, y_score[:, i])[:2], per_class_auc[i])
                  for i in class_ids if per_class_auc[i] is not None]
        return plots.roc_curves(curves, roc_auc, "ROC one-vs-rest")

    figures = [
        ("confusion_matrix.png", "Confusion matrix",
         lambda: plots.confusion_matrix(result["confusion_matrix"]["matrix"], names)),
        ("roc.png", "ROC curves", draw_roc),
    ]
    return result, figures
