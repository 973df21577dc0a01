"""Evaluation of model outputs held as numpy arrays: metrics, plots and a self-contained HTML report.

Used at the end of every training run and by `tlkeras evaluate`. Metrics come from scikit-learn and plots
from matplotlib's Agg canvas (through `matplotlib.figure.Figure`, so pyplot's global state is never
touched). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from tlkeras.errors import TlkerasError

TASKS = ("classification", "multilabel", "regression")

# Past this many classes the confusion matrix cells are too small to carry numbers.
_MAX_ANNOTATED_CLASSES = 30
_MAX_REGRESSION_PANELS = 12
_LEARNING_RATE_COLUMNS = ("lr", "learning_rate")


# --------------------------------------------------------------------------------------------- public API


def evaluate_predictions(
    y_true,
    y_score,
    labels,
    task,
    out_dir=None,
    title="",
    threshold=0.5,
    extra=None,
    history_csv=None,
) -> dict:
    """evaluate_predictions: dict. Scores predictions and optionally writes plots, JSON and an HTML report.

    Args:
        y_true: array. "classification": integer class ids (N,) (one-hot (N, C) is also accepted).
            "multilabel": multi-hot (N, C). "regression": targets (N,) or (N, T).
        y_score: array. "classification": class probabilities (N, C); a single column (N,) or (N, 1)
            is read as P(class 1) of a binary problem. "multilabel": sigmoid outputs (N, C).
            "regression": predictions with the shape of `y_true` ((N, 1) is accepted for (N,)).
        labels: list of str or None. One name per class, label or target. Defaults to "0", "1", ...
            (or "target" / "target_0", ... for regression) when None.
        task: str. "classification", "multilabel" or "regression".
        out_dir: str or Path. When given, writes `metrics.json`, the plots (`confusion_matrix.png` and
            `roc.png`, `roc.png`, or `pred_vs_true.png`) and `report.html` there. Defaults to None.
        title: str. Report title. Defaults to "<Task> evaluation".
        threshold: float. Score above which a label is predicted (multilabel) or class 1 is predicted
            (binary classification). Defaults to 0.5.
        extra: dict or None. Run details (config, training time, ...) shown as a key/value table in
            the report. Defaults to None.
        history_csv: str or Path or None. A Keras `CSVLogger` file; when given with `out_dir`, its
            curves are written to `history.png` and embedded in the report. Defaults to None.

    Returns:
        A JSON-serialisable dict of metrics (NaN becomes None). `notes` lists metrics that were skipped
        or need care; `files` lists the files written (empty without `out_dir`).

    Example:
    >>> result = evaluate_predictions([0, 1, 1], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], ["cat", "dog"],
    ...                               "classification", out_dir="runs/demo/eval")
    >>> result["accuracy"], result["roc_auc"]
    (0.6666666666666666, 1.0)
    """
    if task not in TASKS:
        raise TlkerasError(f"task must be one of {', '.join(TASKS)}. Received: task={task!r}")
    if task != "regression" and not 0.0 <= float(threshold) <= 1.0:
        raise TlkerasError(f"threshold must lie in [0, 1]. Received: threshold={threshold!r}")
    if task == "classification":
        result, plots = _evaluate_classification(y_true, y_score, labels, float(threshold))
    elif task == "multilabel":
        result, plots = _evaluate_multilabel(y_true, y_score, labels, float(threshold))
    else:
        result, plots = _evaluate_regression(y_true, y_score, labels)
    result = {"task": task, "title": title or f"{task.capitalize()} evaluation", **result, "files": []}
    if out_dir is None:
        return _jsonable(result)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for name, caption, draw in plots:
        png = draw()
        if png is None:
            continue
        (out / name).write_bytes(png)
        result["files"].append(str(out / name))
        images.append((caption, png))
    if history_csv is not None:
        history_png = write_history_plot(history_csv, out / "history.png")
        result["files"].append(str(history_png))
        images.append(("Training history", history_png.read_bytes()))
    result["files"] += [str(out / "report.html"), str(out / "metrics.json")]
    result = _jsonable(result)
    (out / "report.html").write_text(_render_report(result, images, extra), encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    return result


def write_history_plot(history_csv_path, out_png) -> Path:
    """write_history_plot: Path. Plots the per-epoch curves of a Keras `CSVLogger` file, train vs val.

    Each metric gets one panel with its training curve and, when the file has `val_<metric>`, its
    validation curve. A learning-rate column gets its own panel on a log scale.

    Args:
        history_csv_path: str or Path. The CSV written by `keras.callbacks.CSVLogger` (columns `epoch`,
            `loss`, `val_loss`, `accuracy`, ...: whatever is present).
        out_png: str or Path. Where to write the PNG; parent folders are created.

    Returns:
        The path of the PNG written.

    Example:
    >>> write_history_plot("runs/demo/history.csv", "runs/demo/history.png")
    """
    path = Path(history_csv_path)
    if not path.is_file():
        raise TlkerasError(f"history CSV not found; pass the CSVLogger file of a run. Received: {path}")
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    if not rows:
        raise TlkerasError(f"history CSV has no epochs; train for at least one epoch. Received: {path}")
    columns = list(rows[0])
    values = {col: np.array([_to_float(row.get(col)) for row in rows]) for col in columns}
    # CSVLogger counts epochs from 0 while Keras prints "Epoch 1/N": show the printed numbers.
    epochs = values["epoch"] + 1 if "epoch" in values else np.arange(1, len(rows) + 1)
    panels = [c for c in columns if c != "epoch" and not c.startswith("val_")]
    panels += [c for c in columns if c.startswith("val_") and c[4:] not in columns]
    # CSVLogger sorts columns alphabetically; loss first and the learning rate last read better.
    panels.sort(key=lambda c: (c.removeprefix("val_") != "loss", c in _LEARNING_RATE_COLUMNS))
    if not panels:
        raise TlkerasError(f"history CSV has no metric columns besides epoch. Received: columns={columns}")

    fig, axes = _panel_grid(len(panels), width=4.6, height=3.3)
    marker = "o" if len(rows) <= 30 else None
    for ax, name in zip(axes, panels, strict=True):
        if name.startswith("val_"):
            ax.plot(epochs, values[name], marker=marker, color="tab:orange", label="val")
        else:
            ax.plot(epochs, values[name], marker=marker, color="tab:blue", label="train")
            if f"val_{name}" in values:
                ax.plot(epochs, values[f"val_{name}"], marker=marker, color="tab:orange", label="val")
        if name in _LEARNING_RATE_COLUMNS:
            if np.all(values[name][np.isfinite(values[name])] > 0):
                ax.set_yscale("log")
        else:
            ax.legend(fontsize="small")
        ax.set_title(name.removeprefix("val_"))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(_png_bytes(fig))
    return out


# ------------------------------------------------------------------------------------------ input checks


def _fail(problem, received):
    raise TlkerasError(f"{problem}. Received: {received}")


def _float_array(values, name):
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        _fail(f"{name} must be numeric", f"{name} of type {type(values).__name__}")
    if array.size == 0:
        _fail(f"{name} is empty; evaluate at least one sample", f"{name}.shape={array.shape}")
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        _fail(
            f"{name} contains NaN or infinite values; check the model outputs (a diverged run gives NaN)",
            f"{bad} of {array.size} values are not finite",
        )
    return array


def _check_rows(y_true, y_score):
    if len(y_true) != len(y_score):
        _fail(
            "y_true and y_score must hold the same number of samples",
            f"y_true.shape={y_true.shape}, y_score.shape={y_score.shape}",
        )


def _label_names(labels, count, default_prefix, score_shape):
    if labels is None:
        if default_prefix == "target":
            return ["target"] if count == 1 else [f"target_{i}" for i in range(count)]
        return [str(i) for i in range(count)]
    names = [labels] if isinstance(labels, str) else [str(label) for label in labels]
    if len(names) != count:
        _fail(
            "labels must name one column of y_score each",
            f"len(labels)={len(names)}, y_score.shape={score_shape}",
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        _fail("labels must be unique", f"duplicates={duplicates}")
    return names


def _check_binary_matrix(array, name):
    if not np.isin(array, (0.0, 1.0)).all():
        _fail(f"{name} must hold only 0 and 1", f"values {np.unique(array)[:6].tolist()}...")


def _check_probabilities(y_score, name):
    low, high = float(y_score.min()), float(y_score.max())
    if low < -1e-6 or high > 1 + 1e-6:
        _fail(
            f"{name} must hold probabilities in [0, 1]; apply softmax/sigmoid to logits first",
            f"min={low:.4g}, max={high:.4g}",
        )


# ---------------------------------------------------------------------------------------- classification


def _prepare_classification(y_true, y_score, labels):
    y_score = _float_array(y_score, "y_score")
    if y_score.ndim == 1 or (y_score.ndim == 2 and y_score.shape[1] == 1):
        # One sigmoid unit: the score is P(class 1) of a binary problem.
        positive = y_score.reshape(-1)
        y_score = np.stack([1.0 - positive, positive], axis=1)
    if y_score.ndim != 2:
        _fail("y_score must have shape (N, C) for classification", f"y_score.shape={y_score.shape}")
    num_classes = y_score.shape[1]
    names = _label_names(labels, num_classes, "class", y_score.shape)

    y_true = _float_array(y_true, "y_true")
    if y_true.ndim == 2 and y_true.shape[1] == num_classes and num_classes > 1:
        _check_binary_matrix(y_true, "one-hot y_true")
        if not (y_true.sum(axis=1) == 1).all():
            _fail("one-hot y_true must have exactly one 1 per row", f"row sums {np.unique(y_true.sum(1))}")
        y_true = y_true.argmax(axis=1)
    if y_true.ndim != 1:
        _fail(
            "y_true must hold class ids of shape (N,) for classification",
            f"y_true.shape={y_true.shape}, y_score.shape={y_score.shape}",
        )
    _check_rows(y_true, y_score)
    if not (y_true == np.round(y_true)).all() or y_true.min() < 0 or y_true.max() >= num_classes:
        _fail(
            f"y_true must hold integer class ids in [0, {num_classes})",
            f"y_true min={y_true.min():g}, max={y_true.max():g}",
        )
    _check_probabilities(y_score, "y_score")
    sums = y_score.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-3):
        _fail(
            "y_score rows must sum to 1 for classification; apply softmax to logits, or use "
            "task='multilabel' for independent sigmoid outputs",
            f"row sums from {sums.min():.4g} to {sums.max():.4g}",
        )
    # float32 softmax rows are off by ~1e-7; scikit-learn's log loss warns unless rows sum to 1 exactly.
    y_score = np.clip(y_score, 0.0, 1.0)
    return y_true.astype(np.int64), y_score / y_score.sum(axis=1, keepdims=True), names


def _roc_auc_or_note(is_positive, score, what, notes):
    """ROC AUC of one binary column, or None plus a note when y_true lacks one of the two classes."""
    positives = int(is_positive.sum())
    if positives == 0 or positives == len(is_positive):
        missing = "positive" if positives == 0 else "negative"
        notes.append(f"ROC AUC skipped for {what}: y_true has no {missing} samples")
        return None
    return float(skm.roc_auc_score(is_positive, score))


def _quote(names):
    return ", ".join(repr(n) for n in names)


def _evaluate_classification(y_true, y_score, labels, threshold):
    y_true, y_score, names = _prepare_classification(y_true, y_score, labels)
    num_classes = len(names)
    class_ids = list(range(num_classes))
    if num_classes == 2:
        y_pred = (y_score[:, 1] > threshold).astype(np.int64)
    else:
        y_pred = y_score.argmax(axis=1)
    notes = []
    absent = [names[i] for i in class_ids if not (y_true == i).any()]
    never_predicted = [names[i] for i in class_ids if not (y_pred == i).any()]
    if absent:
        notes.append(
            f"classes absent from y_true: {_quote(absent)}; their recall and F1 count as 0 in the macro "
            "averages"
        )
    if never_predicted:
        notes.append(f"classes never predicted: {_quote(never_predicted)}; their precision counts as 0")

    with warnings.catch_warnings():
        # Absent and never-predicted classes are reported in `notes`; scikit-learn's warnings repeat them.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", UserWarning)
        precision, recall, f1, support = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=class_ids, zero_division=0
        )
        averages = {}
        for average in ("macro", "weighted"):
            p, r, f, _ = skm.precision_recall_fscore_support(
                y_true, y_pred, labels=class_ids, average=average, zero_division=0
            )
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

    per_class_auc = [
        _roc_auc_or_note(y_true == i, y_score[:, i], f"class {names[i]!r}", notes) for i in class_ids
    ]
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
        names[i]: {
            "precision": precision[i],
            "recall": recall[i],
            "f1": f1[i],
            "support": support[i],
            "roc_auc": per_class_auc[i],
        }
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
            return _plot_roc([(names[1], fpr, tpr, roc_auc)], None, "ROC (positive class: " + names[1] + ")")
        curves = [
            (names[i], *skm.roc_curve(y_true == i, y_score[:, i])[:2], per_class_auc[i])
            for i in class_ids
            if per_class_auc[i] is not None
        ]
        return _plot_roc(curves, roc_auc, "ROC one-vs-rest")

    plots = [
        ("confusion_matrix.png", "Confusion matrix",
         lambda: _plot_confusion(result["confusion_matrix"]["matrix"], names)),
        ("roc.png", "ROC curves", draw_roc),
    ]
    return result, plots


# -------------------------------------------------------------------------------------------- multilabel


def _evaluate_multilabel(y_true, y_score, labels, threshold):
    y_score = _float_array(y_score, "y_score")
    y_true = _float_array(y_true, "y_true")
    if y_score.ndim != 2 or y_true.shape != y_score.shape:
        _check_rows(y_true, y_score)
        _fail(
            "multilabel y_true and y_score must both have shape (N, C)",
            f"y_true.shape={y_true.shape}, y_score.shape={y_score.shape}",
        )
    names = _label_names(labels, y_score.shape[1], "label", y_score.shape)
    _check_binary_matrix(y_true, "multilabel y_true")
    _check_probabilities(y_score, "y_score")
    y_true = y_true.astype(np.int64)
    y_pred = (y_score > threshold).astype(np.int64)
    label_ids = list(range(len(names)))

    notes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        precision, recall, f1, support = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=label_ids, zero_division=0
        )
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
                y_true, y_pred, labels=label_ids, average=average, zero_division=0
            )
            result.update({f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f})

    roc_auc = [_roc_auc_or_note(y_true[:, j] == 1, y_score[:, j], f"label {names[j]!r}", notes)
               for j in label_ids]
    average_precision = [
        None if auc is None else float(skm.average_precision_score(y_true[:, j], y_score[:, j]))
        for j, auc in zip(label_ids, roc_auc, strict=True)
    ]
    defined = [j for j in label_ids if roc_auc[j] is not None]
    result["roc_auc_macro"] = float(np.mean([roc_auc[j] for j in defined])) if defined else None
    result["average_precision_macro"] = (
        float(np.mean([average_precision[j] for j in defined])) if defined else None
    )
    if defined and len(defined) < len(names):
        notes.append(
            f"roc_auc_macro and average_precision_macro average the {len(defined)} labels with both classes"
        )
    result["per_label"] = {
        names[j]: {
            "precision": precision[j],
            "recall": recall[j],
            "f1": f1[j],
            "support": support[j],
            "roc_auc": roc_auc[j],
            "average_precision": average_precision[j],
        }
        for j in label_ids
    }
    result["notes"] = notes

    def draw_roc():
        curves = [(names[j], *skm.roc_curve(y_true[:, j], y_score[:, j])[:2], roc_auc[j]) for j in defined]
        return _plot_roc(curves, result["roc_auc_macro"], "ROC per label") if curves else None

    return result, [("roc.png", "ROC curves per label", draw_roc)]


# -------------------------------------------------------------------------------------------- regression


def _evaluate_regression(y_true, y_score, labels):
    y_true = _float_array(y_true, "y_true")
    y_score = _float_array(y_score, "y_score")
    if y_true.ndim == 1 and y_score.ndim == 2 and y_score.shape[1] == 1:
        y_score = y_score[:, 0]  # a Dense(1) head outputs (N, 1)
    if y_true.ndim not in (1, 2) or y_true.shape != y_score.shape:
        _check_rows(y_true, y_score)
        _fail(
            "regression y_true and y_score must have the same shape, (N,) or (N, T)",
            f"y_true.shape={y_true.shape}, y_score.shape={y_score.shape}",
        )
    targets_true = y_true.reshape(len(y_true), -1)
    targets_pred = y_score.reshape(len(y_score), -1)
    names = _label_names(labels, targets_true.shape[1], "target", y_score.shape)

    notes = []
    if len(y_true) < 2:
        notes.append("R² needs at least 2 samples; it is reported as null")

    def scores(true, pred):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            r2 = skm.r2_score(true, pred) if len(true) >= 2 else None
        return {
            "mae": skm.mean_absolute_error(true, pred),
            "rmse": skm.root_mean_squared_error(true, pred),
            "r2": r2,
        }

    result = {
        "num_samples": len(y_true),
        "num_targets": len(names),
        "labels": names,
        **scores(targets_true, targets_pred),
    }
    if len(names) > 1:
        result["per_target"] = {
            name: scores(targets_true[:, t], targets_pred[:, t]) for t, name in enumerate(names)
        }
    if len(names) > _MAX_REGRESSION_PANELS:
        notes.append(f"pred_vs_true.png shows the first {_MAX_REGRESSION_PANELS} of {len(names)} targets")
    result["notes"] = notes
    r2_by_target = [result["r2"]] if len(names) == 1 else [result["per_target"][n]["r2"] for n in names]
    plots = [("pred_vs_true.png", "Predicted vs true",
              lambda: _plot_pred_vs_true(targets_true, targets_pred, names, r2_by_target))]
    return result, plots


# ---------------------------------------------------------------------------------------------- plotting


def _figure(width, height):
    from matplotlib.figure import Figure

    # Constrained layout keeps rotated tick labels and outside legends inside the canvas.
    return Figure(figsize=(width, height), layout="constrained")


def _panel_grid(count, width, height):
    cols = min(count, 3)
    rows = math.ceil(count / cols)
    fig = _figure(width * cols, height * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


def _png_bytes(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _short(name, width=18):
    return name if len(name) <= width else name[: width - 1] + "…"


def _plot_confusion(matrix, names):
    counts = np.asarray(matrix)
    num_classes = len(names)
    row_sums = counts.sum(axis=1, keepdims=True)
    fraction = np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0)
    side = min(3.5 + 0.45 * num_classes, 14.0)
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    ticks = np.arange(num_classes)
    short = [_short(n) for n in names]
    ax.set_xticks(ticks, labels=short, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, labels=short)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (row-normalised, counts in brackets)")
    if num_classes <= _MAX_ANNOTATED_CLASSES:
        fontsize = max(6.5, 11 - num_classes / 3.5)
        for i in range(num_classes):
            for j in range(num_classes):
                colour = "white" if fraction[i, j] > 0.5 else "black"
                # Empty cells get a bare 0 so the eye goes to the confusions.
                text = f"{fraction[i, j]:.2f}\n({counts[i, j]})" if counts[i, j] else "0"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=fontsize)
    return _png_bytes(fig)


def _plot_roc(curves, macro_auc, title):
    """curves: (name, fpr, tpr, auc) per class; with several, a macro-average curve is added."""
    import matplotlib

    fig = _figure(7.5 if len(curves) > 6 else 5.5, 4.8)
    ax = fig.add_subplot()
    colours = matplotlib.colormaps["tab20" if len(curves) > 10 else "tab10"]
    for k, (name, fpr, tpr, auc) in enumerate(curves):
        ax.plot(fpr, tpr, color=colours(k % colours.N), lw=1.4, label=f"{_short(name)} (AUC {auc:.3f})")
    if len(curves) > 1:
        grid = np.linspace(0.0, 1.0, 201)
        mean_tpr = np.mean([np.interp(grid, fpr, tpr) for _, fpr, tpr, _ in curves], axis=0)
        ax.plot(grid, mean_tpr, color="black", lw=2.4, ls="--", label=f"macro average (AUC {macro_auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 6:
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
    else:
        ax.legend(loc="lower right", fontsize="small")
    return _png_bytes(fig)


def _plot_pred_vs_true(y_true, y_pred, names, r2_by_target):
    count = min(len(names), _MAX_REGRESSION_PANELS)
    fig, axes = _panel_grid(count, width=4.2, height=4.0)
    alpha = float(np.clip(300 / len(y_true), 0.15, 0.9))
    for t, ax in enumerate(axes):
        true, pred = y_true[:, t], y_pred[:, t]
        low, high = min(true.min(), pred.min()), max(true.max(), pred.max())
        ax.scatter(true, pred, s=12, alpha=alpha, edgecolors="none")
        ax.plot([low, high], [low, high], color="grey", lw=1, ls="--", label="y = x")
        r2 = "n/a" if r2_by_target[t] is None else f"{r2_by_target[t]:.3f}"
        ax.set_title(f"{_short(names[t], 24)} (R² {r2})")
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
        ax.grid(alpha=0.3)
    return _png_bytes(fig)


# ----------------------------------------------------------------------------------------------- output


def _to_float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


_SUMMARY_ROWS = {
    "classification": [
        ("accuracy", "Accuracy"),
        ("balanced_accuracy", "Balanced accuracy"),
        ("top_k_accuracy", "Top-k accuracy"),
        ("f1_macro", "Macro F1"),
        ("f1_weighted", "Weighted F1"),
        ("precision_macro", "Macro precision"),
        ("recall_macro", "Macro recall"),
        ("roc_auc", "ROC AUC"),
        ("log_loss", "Log loss"),
    ],
    "multilabel": [
        ("subset_accuracy", "Subset accuracy"),
        ("hamming_loss", "Hamming loss"),
        ("f1_micro", "Micro F1"),
        ("f1_macro", "Macro F1"),
        ("f1_weighted", "Weighted F1"),
        ("f1_samples", "Samples F1"),
        ("roc_auc_macro", "Macro ROC AUC"),
        ("average_precision_macro", "Macro average precision"),
    ],
    "regression": [("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R²")],
}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } .meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.92rem; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.7rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f5f8; } tr:nth-child(even) td { background: #fafbfc; }
figure { margin: 1rem 0 2rem; } img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9rem; }
pre { margin: 0; white-space: pre-wrap; word-break: break-word; font-size: 0.85rem; }
.notes li { color: #8a5a00; }
"""


def _cell(value):
    if value is None:
        return '<td class="num">—</td>'
    if isinstance(value, float):
        return f'<td class="num">{value:.4f}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    if isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)
        return f"<td><pre>{html.escape(text)}</pre></td>"
    return f"<td>{html.escape(str(value))}</td>"


def _table(header, rows):
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _render_report(result, images, extra):
    task = result["task"]
    parts = [f"<h1>{html.escape(result['title'])}</h1>"]
    count = result.get("num_classes") or result.get("num_labels") or result.get("num_targets")
    kind = {"classification": "classes", "multilabel": "labels", "regression": "targets"}[task]
    parts.append(f'<p class="meta">{task} · {result["num_samples"]} samples · {count} {kind}</p>')

    summary = []
    for key, name in _SUMMARY_ROWS[task]:
        if key not in result:
            continue
        if key == "top_k_accuracy":
            name = f"Top-{result['top_k']} accuracy"
        if key == "roc_auc":
            name = f"ROC AUC ({result['roc_auc_average']})"
        summary.append([f"<td>{html.escape(name)}</td>", _cell(result[key])])
    parts += ["<h2>Summary</h2>", _table(["metric", "value"], summary)]

    if result["notes"]:
        items = "".join(f"<li>{html.escape(note)}</li>" for note in result["notes"])
        parts.append(f'<h2>Notes</h2><ul class="notes">{items}</ul>')

    per_item = result.get("per_class") or result.get("per_label") or result.get("per_target")
    if per_item:
        columns = list(next(iter(per_item.values())))
        rows = [[f"<td>{html.escape(name)}</td>"] + [_cell(m[c]) for c in columns] for name, m in per_item.items()]
        item = {"classification": "class", "multilabel": "label", "regression": "target"}[task]
        parts += [f"<h2>Per {item}</h2>", _table([item] + columns, rows)]

    if images:
        parts.append("<h2>Plots</h2>")
        for caption, png in images:
            data = base64.b64encode(png).decode("ascii")
            parts.append(
                f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )

    if extra:
        rows = [[f"<td>{html.escape(str(k))}</td>", _cell(_jsonable(v))] for k, v in extra.items()]
        parts += ["<h2>Run details</h2>", _table(["key", "value"], rows)]

    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(result['title'])}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
