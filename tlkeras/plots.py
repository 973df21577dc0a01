"""Figures as PNG bytes, drawn on matplotlib's Agg canvas through `matplotlib.figure.Figure`, so pyplot's
global state is never touched: confusion matrices, ROC curves, predicted-vs-true scatters, training curves."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from tlkeras.errors import TlkerasError

# Past this many classes the confusion matrix cells are too small to carry numbers.
MAX_ANNOTATED_CLASSES = 30
MAX_REGRESSION_PANELS = 12
LEARNING_RATE_COLUMNS = ("lr", "learning_rate")


def figure(width: float, height: float):
    """matplotlib.figure.Figure: a figure with constrained layout (rotated ticks and legends stay inside)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def panel_grid(count: int, width: float, height: float):
    """(Figure, axes): up to three panels a row, `count` panels in all."""
    cols = min(count, 3)
    rows = math.ceil(count / cols)
    fig = figure(width * cols, height * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def confusion_matrix(matrix, names) -> bytes:
    """PNG: a row-normalised confusion matrix with counts, true classes as rows."""
    counts = np.asarray(matrix)
    num_classes = len(names)
    row_sums = counts.sum(axis=1, keepdims=True)
    fraction = np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0)
    side = min(3.5 + 0.45 * num_classes, 14.0)
    fig = figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    ticks = np.arange(num_classes)
    labels = [short(n) for n in names]
    ax.set_xticks(ticks, labels=labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, labels=labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (row-normalised, counts in brackets)")
    if num_classes <= MAX_ANNOTATED_CLASSES:
        fontsize = max(6.5, 11 - num_classes / 3.5)
        for i in range(num_classes):
            for j in range(num_classes):
                colour = "white" if fraction[i, j] > 0.5 else "black"
                # Empty cells get a bare 0 so the eye goes to the confusions.
                text = f"{fraction[i, j]:.2f}\n({counts[i, j]})" if counts[i, j] else "0"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=fontsize)
    return png_bytes(fig)


def roc_curves(curves, macro_auc, title: str) -> bytes:
    """PNG: one ROC curve per (name, fpr, tpr, auc); with several, a macro-average curve is added."""
    import matplotlib

    fig = figure(7.5 if len(curves) > 6 else 5.5, 4.8)
    ax = fig.add_subplot()
    colours = matplotlib.colormaps["tab20" if len(curves) > 10 else "tab10"]
    for k, (name, fpr, tpr, auc) in enumerate(curves):
        ax.plot(fpr, tpr, color=colours(k % colours.N), lw=1.4, label=f"{short(name)} (AUC {auc:.3f})")
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
    return png_bytes(fig)


def predicted_vs_true(y_true, y_pred, names, r2_by_target) -> bytes:
    """PNG: a scatter of predictions against targets per target column, with the y = x line."""
    count = min(len(names), MAX_REGRESSION_PANELS)
    fig, axes = panel_grid(count, width=4.2, height=4.0)
    alpha = float(np.clip(300 / len(y_true), 0.15, 0.9))
    for t, ax in enumerate(axes):
        true, pred = y_true[:, t], y_pred[:, t]
        low, high = min(true.min(), pred.min()), max(true.max(), pred.max())
        ax.scatter(true, pred, s=12, alpha=alpha, edgecolors="none")
        ax.plot([low, high], [low, high], color="grey", lw=1, ls="--", label="y = x")
        r2 = "n/a" if r2_by_target[t] is None else f"{r2_by_target[t]:.3f}"
        ax.set_title(f"{short(names[t], 24)} (R² {r2})")
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
        ax.grid(alpha=0.3)
    return png_bytes(fig)


def training_history(history_csv) -> bytes:
    """PNG: the per-epoch curves of a Keras `CSVLogger` file, train against validation.

    Each metric gets one panel with its training curve and, when the file has `val_<metric>`, its
    validation curve. A learning-rate column gets its own panel on a log scale.

    Example:
    >>> Path("history.png").write_bytes(training_history("runs/demo/1/history.csv"))
    """
    path = Path(history_csv)
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
    panels.sort(key=lambda c: (c.removeprefix("val_") != "loss", c in LEARNING_RATE_COLUMNS))
    if not panels:
        raise TlkerasError(f"history CSV has no metric columns besides epoch. Received: columns={columns}")
    fig, axes = panel_grid(len(panels), width=4.6, height=3.3)
    marker = "o" if len(rows) <= 30 else None
    for ax, name in zip(axes, panels, strict=True):
        if name.startswith("val_"):
            ax.plot(epochs, values[name], marker=marker, color="tab:orange", label="val")
        else:
            ax.plot(epochs, values[name], marker=marker, color="tab:blue", label="train")
            if f"val_{name}" in values:
                ax.plot(epochs, values[f"val_{name}"], marker=marker, color="tab:orange", label="val")
        if name in LEARNING_RATE_COLUMNS:
            if np.all(values[name][np.isfinite(values[name])] > 0):
                ax.set_yscale("log")
        else:
            ax.legend(fontsize="small")
        ax.set_title(name.removeprefix("val_"))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return png_bytes(fig)


def _to_float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan
