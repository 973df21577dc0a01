"""`Examples`: a labelled set of inputs as tlkeras reads it, whatever the input kind."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tlkeras.errors import TlkerasError


@dataclass
class Examples:
    """A labelled set of inputs.

    Attributes:
        inputs: list[str]. File paths (images, audio) or the texts themselves.
        targets: np.ndarray. int64 class ids (N,) for classification, float32 multi-hot (N, C) for
            multilabel, float32 (N,) or (N, T) for regression.
        labels: list[str]. Class names in id order; for regression, the target column names.
        kind: str. The input kind's name ("image", "text").
        source: str. Where the examples came from, for messages.
        task: str. The task's name. Defaults to None, inferred from `targets`: integer ids mean
            classification, 0/1 rows as wide as `labels` mean multilabel, anything else regression.
        notes: list[str]. What reading skipped or converted, for the run's log. Nothing is dropped silently.
    """

    inputs: list[str]
    targets: np.ndarray
    labels: list[str]
    kind: str
    source: str
    task: str | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if len(self.inputs) != len(self.targets):
            raise TlkerasError(f"inputs and targets differ in length; Received: len(inputs)={len(self.inputs)}, "
                               f"len(targets)={len(self.targets)}")
        if self.task is None:
            self.task = _infer_task(self.targets, self.labels)

    def __len__(self) -> int:
        return len(self.inputs)

    def select(self, indices: Sequence[int] | np.ndarray) -> Examples:
        """Examples: the examples at `indices` (positions or a boolean mask), in that order."""
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        indices = indices.astype(np.int64)
        return dataclasses.replace(self, inputs=[self.inputs[i] for i in indices], targets=self.targets[indices],
                                   labels=list(self.labels), notes=list(self.notes))

    def class_counts(self) -> np.ndarray:
        """np.ndarray: examples per class (classification) or per label (multilabel)."""
        if self.targets.ndim == 1:
            return np.bincount(self.targets.astype(np.int64), minlength=len(self.labels))
        return self.targets.sum(axis=0)


def _infer_task(targets: np.ndarray, labels: list[str]) -> str:
    if np.issubdtype(targets.dtype, np.integer):
        return "classification"
    if targets.ndim == 2 and targets.shape[1] == len(labels) and np.isin(targets, (0, 1)).all():
        return "multilabel"
    return "regression"
