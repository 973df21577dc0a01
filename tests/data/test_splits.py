"""Splitting and fingerprinting examples."""

import os
import warnings

import numpy as np
import pytest

from tlkeras.data import Examples, fingerprint, load_examples, split_examples


def test_stratified_split_keeps_class_balance():
    targets = np.repeat([0, 1, 2], [60, 30, 10])
    examples = Examples([str(i) for i in range(100)], targets, ["a", "b", "c"], "text", "test")
    train, val = split_examples(examples, 0.2, seed=0)
    assert len(val) == 20 and len(train) == 80
    np.testing.assert_array_equal(np.bincount(val.targets), [12, 6, 2])
    assert not set(train.inputs) & set(val.inputs)
    again, _ = split_examples(examples, 0.2, seed=0)
    assert again.inputs == train.inputs


def test_split_with_a_singleton_class_warns_and_falls_back():
    examples = Examples(list("abcdef"), np.array([0, 0, 0, 1, 1, 2]), ["x", "y", "z"], "text", "test")
    with pytest.warns(UserWarning, match="not stratified.*z"):
        train, val = split_examples(examples, 0.5, seed=0)
    assert len(train) + len(val) == 6


def test_regression_split_is_plain():
    examples = Examples(list("abcd"), np.arange(4, dtype=np.float32), ["y"], "text", "t")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, val = split_examples(examples, 0.25, seed=0)
    assert len(val) == 1


def test_fingerprint_changes_with_labels_targets_and_files(image_folder):
    examples = load_examples(image_folder, task="classification")
    first = fingerprint(examples)
    assert fingerprint(load_examples(image_folder, task="classification")) == first
    renamed = Examples(examples.inputs, examples.targets, ["kitten", "dog"], "image", "x")
    assert fingerprint(renamed) != first
    flipped = Examples(examples.inputs, 1 - examples.targets, examples.labels, "image", "x")
    assert fingerprint(flipped) != first
    changed = examples.inputs[0]
    stat = os.stat(changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert fingerprint(examples) != first


def test_text_fingerprint_depends_on_text():
    a = Examples(["ab", "c"], np.array([0, 1]), ["x", "y"], "text", "t")
    b = Examples(["a", "bc"], np.array([0, 1]), ["x", "y"], "text", "t")
    assert fingerprint(a) != fingerprint(b)
