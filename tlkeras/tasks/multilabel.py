"""Multi-label classification: independent sigmoid outputs, binary cross-entropy, per-label evaluation."""

from __future__ import annotations

import warnings

import numpy as np

from tlkeras import plots
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

LABEL_SEPARATOR = ","  # joins the predicted names in the serving output `label`


class Multilabel(Task):
    name = "multilabel"
    activation = "sigmoid"
    outputs = ("scores", "predicted", "label")
    item = "label"
    headline = "f1_macro"
    summary = (
        ("subset_accuracy", "Subset accuracy"),
        ("hamming_loss", "Hamming loss"),
        ("f1_micro", "Micro F1"),
        ("f1_macro", "Macro F1"),
        ("f1_weighted", "Weighted F1"),
        ("f1_samples", "Samples F1"),
        ("roc_auc_macro", "Macro ROC AUC"),
        ("average_precision_macro", "Macro average precision"),
    )

    def loss_and_metrics(self, label_smoothing=0.0, one_hot=False):
        import keras

        return (keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
                [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc", multi_label=True)])

    def postprocess(self, outputs, labels, threshold):
        import tensorflow as tf

        names = tf.constant(list(labels), dtype=tf.string)
        predicted = outputs >= threshold
        # Keeps to core ops (no ragged reduce): join "name," for each hit, then drop the final separator.
        pieces = tf.where(predicted, names + LABEL_SEPARATOR, "")
        joined = tf.strings.reduce_join(pieces, axis=-1)
        label = tf.strings.regex_replace(joined, f"{LABEL_SEPARATOR}$", "")
        return {"scores": outputs, "predicted": predicted, "label": label}

    def score(self, y_true, y_score, labels, threshold):
        return _score(y_true, y_score, labels, threshold)


def _score(y_true, y_score, labels, threshold):
    from sklearn import metrics as skm
    from sklearn.exceptions import UndefinedMetricWarning

    y_score = float_array(y_score, "y_score")
    y_true = float_array(y_true, "y_true")
    if y_score.ndim != 2 or y_true.shape != y_score.shape:
        check_rows(y_true, y_score)
        fail("multilabel y_true and y_score must both have shape (N, C)",
             f"y_true.shape={y_true.shape}, y_score.shape={y_score.shape}")
    names = label_names(labels, y_score.shape[1], "label", y_score.shape)
    check_binary_matrix(y_true, "multilabel y_true")
    check_probabilities(y_score, "y_score")
    y_true = y_true.astype(np.int64)
    y_pred = (y_score > threshold).astype(np.int64)
    label_ids = list(range(len(names)))

    notes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        precision, recall, f1, support = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=label_ids, zero_division=0)
        result = {
            "num_samples": len(y_true),
            "num_labels": len(names),
            "labels": names,
            "threshold": threshold,
            "subset_accuracy": skm.accuracy_score(y_true, y_pred),
            "hamming_loss": skm.hamming_loss(y_true, y_pred),
        }
        for average in ("micro", "macro", "weighted", "samples"):
            p, r, f, _ = skm.precision_recall_fscore_support(
                y_true, y_pred, labels=label_ids, average=average, zero_division=0)
            result.update({f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f})

    roc_auc = [roc_auc_or_note(y_true[:, j] == 1, y_score[:, j], f"label {names[j]!r}", notes) for j in label_ids]
    average_precision = [None if auc is None else float(skm.average_precision_score(y_true[:, j], y_score[:, j]))
                         for j, auc in zip(label_ids, roc_auc, strict=True)]
    defined = [j for j in label_ids if roc_auc[j] is not None]
    result["roc_auc_macro"] = float(np.mean([roc_auc[j] for j in defined])) if defined else None
    result["average_precision_macro"] = float(np.mean([average_precision[j] for j in defined])) if defined else None
    if defined and len(defined) < len(names):
        notes.append(f"roc_auc_macro and average_precision_macro average the {len(defined)} labels with both classes")
    result["per_label"] = {
        names[j]: {"precision": precision[j], "recall": recall[j], "f1": f1[j], "support": support[j],
                   "roc_auc": roc_auc[j], "average_precision": average_precision[j]}
        for j in label_ids
    }
    result["notes"] = notes

    def draw_roc():
        curves = [(names[j], *skm.roc_curve(y_true[:, j], y_score[:, j])[:2], roc_auc[j]) for j in defined]
        return plots.roc_curves(curves, result["roc_auc_macro"], "ROC per label") if curves else None

    return result, [("roc.png", "ROC curves per label", draw_roc)]
