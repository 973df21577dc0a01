"""Contrastive fine-tuning of an encoder, SetFit-style (Tunstall et al., 2022): pairs drawn from the labelled
set (same class -> 1, other class -> 0), a cosine-similarity loss on the pooled embeddings, one epoch; the
probe head is then fitted on the tuned embeddings.

Every example gets, per iteration, one partner of its own class and one of another, so the pairs stay
balanced whatever the class sizes. The number of steps grows with the data; `max_steps` caps it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import keras
import numpy as np

from tlkeras.errors import TlkerasError

log = logging.getLogger("tlkeras")


@dataclass(frozen=True)
class Pairs:
    """Index pairs into a labelled set and their similarity targets (1.0 same class, 0.0 other)."""

    first: np.ndarray
    second: np.ndarray
    similar: np.ndarray

    def __len__(self) -> int:
        return len(self.first)


def make_pairs(targets, iterations: int = 20, seed: int = 0, max_pairs: int | None = None) -> Pairs:
    """Pairs: for each example and iteration, one same-class and one other-class partner, shuffled.

    Args:
        targets: np.ndarray (N,). Class ids.
        iterations: int. Rounds over the data. Defaults to 20 (SetFit's default).
        seed: int. Seed of the draw.
        max_pairs: int. Keep at most this many pairs (a random subset, still balanced). Defaults to all.

    Example:
    >>> pairs = make_pairs(np.array([0, 0, 1, 1]), iterations=1)
    >>> len(pairs), pairs.similar.mean()
    (8, 0.5)
    """
    y = np.asarray(targets).astype(np.int64)
    classes = np.unique(y)
    if len(classes) < 2:
        raise TlkerasError("contrastive fine-tuning needs at least two classes to draw other-class pairs")
    members = {c: np.flatnonzero(y == c) for c in classes}
    if all(len(m) < 2 for m in members.values()):
        raise TlkerasError("contrastive fine-tuning needs a class with two examples to draw same-class pairs")
    rng = np.random.default_rng(seed)
    first, second, similar = [], [], []
    for _ in range(iterations):
        for i, label in enumerate(y):
            own = members[label]
            if len(own) > 1:
                partner = i
                while partner == i:
                    partner = own[rng.integers(len(own))]
                first.append(i), second.append(partner), similar.append(1.0)
            others = np.flatnonzero(y != label)
            first.append(i), second.append(others[rng.integers(len(others))]), similar.append(0.0)
    order = rng.permutation(len(first))
    pairs = Pairs(np.asarray(first)[order], np.asarray(second)[order], np.asarray(similar, np.float32)[order])
    if max_pairs is not None and len(pairs) > max_pairs:
        pairs = _balanced_subset(pairs, max_pairs, rng)
    return pairs


def _balanced_subset(pairs: Pairs, size: int, rng) -> Pairs:
    same, other = np.flatnonzero(pairs.similar == 1), np.flatnonzero(pairs.similar == 0)
    half = size // 2
    keep = np.concatenate([rng.choice(same, min(half, len(same)), replace=False),
                           rng.choice(other, min(size - min(half, len(same)), len(other)), replace=False)])
    keep = rng.permutation(keep)
    return Pairs(pairs.first[keep], pairs.second[keep], pairs.similar[keep])


def tune(extractor, kind, spec, preprocessor, inputs, targets, *, iterations: int = 20, batch_size: int = 16,
         learning_rate: float = 2e-5, max_steps: int | None = None, seed: int = 0, verbose: int = 0) -> dict:
    """Fine-tunes `extractor` in place on contrastive pairs of `inputs`; returns the loss history.

    Args:
        extractor: keras.Model. The kind's canonical inputs -> pooled embeddings.
        kind: InputKind. Builds the paired dataset.
        spec: InputSpec.
        preprocessor: the tokenizer (texts) or None.
        inputs: list of str. The labelled inputs.
        targets: np.ndarray (N,). Class ids.
        iterations, batch_size, learning_rate: SetFit's recipe. Defaults to 20, 16, 2e-5.
        max_steps: int. Cap on optimizer steps (pairs = steps x batch). Defaults to no cap.
        seed: int.
        verbose: int. Keras progress.

    Returns:
        dict with "loss" per epoch (one epoch), "pairs" and "steps".
    """
    import tensorflow as tf

    pairs = make_pairs(targets, iterations, seed, max_pairs=max_steps * batch_size if max_steps else None)
    items = [inputs[i] for i in pairs.first], [inputs[i] for i in pairs.second]
    first = kind.dataset(items[0], None, spec, batch_size, preprocessor=preprocessor)
    second = kind.dataset(items[1], None, spec, batch_size, preprocessor=preprocessor)
    labels = tf.data.Dataset.from_tensor_slices(pairs.similar).batch(batch_size)
    data = tf.data.Dataset.zip(((first, second), labels)).prefetch(tf.data.AUTOTUNE)

    model = _siamese(extractor)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    steps = -(-len(pairs) // batch_size)
    log.info("contrastive fine-tuning on %d pairs (%d steps of %d, %d same-class)", len(pairs), steps, batch_size,
             int(pairs.similar.sum()))
    history = model.fit(data, epochs=1, verbose=verbose)
    return {"loss": history.history["loss"], "pairs": len(pairs), "steps": steps}


def _siamese(extractor):
    def inputs_like(model, suffix):
        structure = model.input
        if isinstance(structure, dict):
            return {k: keras.Input(shape=v.shape[1:], dtype=v.dtype, name=f"{k}_{suffix}") for k, v in structure.items()}
        return keras.Input(shape=structure.shape[1:], dtype=structure.dtype, name=f"input_{suffix}")

    a, b = inputs_like(extractor, "a"), inputs_like(extractor, "b")
    cosine = CosineSimilarity(name="cosine")([extractor(a), extractor(b)])
    return keras.Model([a, b], cosine, name="contrastive")


@keras.saving.register_keras_serializable(package="tlkeras")
class CosineSimilarity(keras.layers.Layer):
    """The cosine of two batches of vectors, row by row: (B, D), (B, D) -> (B,)."""

    def call(self, pair):
        x, y = pair
        x = keras.ops.normalize(x, axis=-1)
        y = keras.ops.normalize(y, axis=-1)
        return keras.ops.sum(x * y, axis=-1)
