"""Splitting examples (validation splits, stratified samples, k folds) and fingerprinting them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings

import numpy as np

from tlkeras import inputs
from tlkeras.data.examples import Examples
from tlkeras.errors import TlkerasError


def split_examples(examples: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    """Splits off a validation set, stratified by class for classification.

    Stratifying needs two examples of every class and at least one per class on each side; otherwise the
    split is plain and a `UserWarning` says why.

    Args:
        examples: Examples.
        fraction: float. Share of examples for validation, in (0, 1).
        seed: int. Seed of the shuffle.

    Returns:
        `(train, val)`, each in the original order.

    Example:
    >>> train, val = split_examples(load_examples("flowers", task="classification"), 0.2, seed=0)
    """
    from sklearn.model_selection import train_test_split

    n = len(examples)
    n_val = math.ceil(fraction * n) if 0 < fraction < 1 else 0
    if not 0 < n_val < n:
        raise TlkerasError(f"the validation fraction must leave at least one example on each side of the split of "
                           f"{n} examples. Received: fraction={fraction}")
    stratify = None
    if examples.task == "classification":
        counts = np.bincount(examples.targets)
        present = np.flatnonzero(counts)
        rare = [examples.labels[i] for i in present if counts[i] < 2]
        if rare:
            warnings.warn(f"validation split is not stratified: classes with one example: {rare[:5]}", stacklevel=2)
        elif min(n_val, n - n_val) < len(present):
            warnings.warn(f"validation split is not stratified: {len(present)} classes do not fit in "
                          f"{min(n_val, n - n_val)} examples", stacklevel=2)
        else:
            stratify = examples.targets
    train_idx, val_idx = train_test_split(np.arange(n), test_size=n_val, random_state=seed, stratify=stratify)
    train = dataclasses.replace(examples.select(np.sort(train_idx)), source=f"{examples.source} (train split)")
    val = dataclasses.replace(examples.select(np.sort(val_idx)),
                              source=f"{examples.source} (validation split, {fraction:g})")
    return train, val


def stratified_sample(examples: Examples, size: int, seed: int) -> Examples:
    """Examples: at most `size` examples, keeping each class's share (classification), in original order."""
    if size >= len(examples):
        return examples
    rng = np.random.default_rng(seed)
    if examples.task != "classification":
        return examples.select(np.sort(rng.choice(len(examples), size, replace=False)))
    counts = np.bincount(examples.targets, minlength=len(examples.labels))
    quota = np.maximum(1, np.floor(counts / counts.sum() * size)).astype(int) * (counts > 0)
    chosen = []
    for cls in np.flatnonzero(counts):
        members = np.flatnonzero(examples.targets == cls)
        chosen += list(rng.choice(members, min(quota[cls], len(members)), replace=False))
    return examples.select(np.sort(np.asarray(chosen)))


def fold_indices(examples: Examples, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """list of (train indices, validation indices): `folds`-fold cross-validation, stratified for
    classification when every class has at least `folds` examples."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if examples.task == "classification" and np.bincount(examples.targets).max() >= folds:
        counts = np.bincount(examples.targets)
        if counts[counts > 0].min() >= folds:
            splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
            return list(splitter.split(np.zeros(len(examples)), examples.targets))
    return list(KFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(examples))))


def fingerprint(examples: Examples) -> str:
    """str: a sha256 hex digest of the examples, stable across runs.

    Inputs count as their kind says (files by path, size and modification time, so no file is read; texts
    by their content). Targets, labels, kind and task count too.
    """
    kind = inputs.get(examples.kind)
    digest = hashlib.sha256()
    header = {"kind": examples.kind, "task": examples.task, "labels": list(examples.labels)}
    digest.update(json.dumps(header, sort_keys=True).encode())
    targets = np.ascontiguousarray(examples.targets)
    digest.update(f"{targets.dtype.str}{targets.shape}".encode())
    digest.update(targets.tobytes())
    for item in examples.inputs:
        data = kind.fingerprint_item(item)
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()
