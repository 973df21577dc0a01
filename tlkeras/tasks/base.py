"""`Task`: what a task means, in one place. Subclasses (one module per task) fill in the head's
activation, the loss and metrics, the serving outputs and the evaluator; shared input checks for the
evaluators live here too."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from tlkeras.errors import TlkerasError

Plot = tuple[str, str, Callable[[], bytes | None]]  # (file name, caption, draw -> PNG bytes or None)


class Task:
    """One task. Subclasses set the attributes and implement the methods.

    Attributes:
        name: str. "classification", "multilabel" or "regression".
        activation: str or None. The head's output activation.
        outputs: tuple of str. The serving signature's output names.
        item: str. What one output column is called in reports ("class", "label", "target").
        summary: tuple of (metric key, title). The headline metrics of a report, in order.
        headline: str. The one metric that ranks models on this task (higher is better).
        folders: bool. Whether an image/audio folder (one subfolder per class) can hold its data.
    """

    name: str = ""
    activation: str | None = None
    outputs: tuple[str, ...] = ()
    item: str = ""
    summary: tuple[tuple[str, str], ...] = ()
    headline: str = ""
    folders: bool = False

    def n_outputs(self, labels: Sequence[str], targets: np.ndarray) -> int:
        """int: The head's width for training data with these `labels` and `targets`."""
        return len(labels)

    def loss_and_metrics(self, label_smoothing: float = 0.0, one_hot: bool = False):
        """(keras loss, list of keras metrics). `one_hot`: targets come as one-hot rows (MixUp, CutMix)."""
        raise NotImplementedError

    def keras_targets(self, targets: np.ndarray, n_outputs: int, one_hot: bool) -> np.ndarray:
        """np.ndarray: targets in the form `loss_and_metrics(one_hot=one_hot)` expects."""
        return targets

    def postprocess(self, outputs, labels: Sequence[str], threshold: float) -> dict:
        """dict of tf.Tensor: the named serving outputs for a batch of head outputs."""
        raise NotImplementedError

    def score(self, y_true, y_score, labels, threshold: float) -> tuple[dict, list[Plot]]:
        """(metrics, plots): the evaluation of numpy predictions (see `tlkeras.evaluation`)."""
        raise NotImplementedError

    def check_training_data(self, labels: Sequence[str], targets: np.ndarray, source: str) -> None:
        """Raises when training data cannot train this task (e.g. classification with one class)."""

    def __repr__(self) -> str:
        return f"Task({self.name!r})"


# ------------------------------------------------------------------------------------ evaluator checks


def fail(problem: str, received) -> None:
    raise TlkerasError(f"{problem}. Received: {received}")


def float_array(values, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        fail(f"{name} must be numeric", f"{name} of type {type(values).__name__}")
    if array.size == 0:
        fail(f"{name} is empty; evaluate at least one sample", f"{name}.shape={array.shape}")
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        fail(f"{name} contains NaN or infinite values; check the model outputs (a diverged run gives NaN)",
             f"{bad} of {array.size} values are not finite")
    return array


def check_rows(y_true: np.ndarray, y_score: np.ndarray) -> None:
    if len(y_true) != len(y_score):
        fail("y_true and y_score must hold the same number of samples",
             f"y_true.shape={y_true.shape}, y_score.shape={y_score.shape}")


def label_names(labels, count: int, default_prefix: str, score_shape) -> list[str]:
    if labels is None:
        if default_prefix == "target":
            return ["target"] if count == 1 else [f"target_{i}" for i in range(count)]
        return [str(i) for i in range(count)]
    names = [labels] if isinstance(labels, str) else [str(label) for label in labels]
    if len(names) != count:
        fail("labels must name one column of y_score each", f"len(labels)={len(names)}, y_score.shape={score_shape}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        fail("labels must be unique", f"duplicates={duplicates}")
    return names


def check_binary_matrix(array: np.ndarray, name: str) -> None:
    if not np.isin(array, (0.0, 1.0)).all():
        fail(f"{name} must hold only 0 and 1", f"values {np.unique(array)[:6].tolist()}...")


def check_probabilities(y_score: np.ndarray, name: str) -> None:
    low, high = float(y_score.min()), float(y_score.max())
    if low < -1e-6 or high > 1 + 1e-6:
        fail(f"{name} must hold probabilities in [0, 1]; apply softmax/sigmoid to logits first",
             f"min={low:.4g}, max={high:.4g}")


def roc_auc_or_note(is_positive, score, what: str, notes: list) -> float | None:
    """ROC AUC of one binary column, or None plus a note when y_true lacks one of the two classes."""
    from sklearn import metrics as skm

    positives = int(is_positive.sum())
    if positives == 0 or positives == len(is_positive):
        missing = "positive" if positives == 0 else "negative"
        notes.append(f"ROC AUC skipped for {what}: y_true has no {missing} samples")
        return None
    return float(skm.roc_auc_score(is_positive, score))


def jsonable(value):
    """Plain JSON data: numpy values become Python ones, NaN and infinities become None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
