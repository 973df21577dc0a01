"""The tf.data plumbing every input kind shares: slices, shuffling, mapping over inputs, batching."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tlkeras.errors import TlkerasError


def slices(inputs, targets):
    """tf.data.Dataset of inputs, or of (input, target) pairs."""
    import tensorflow as tf

    if targets is None:
        return tf.data.Dataset.from_tensor_slices(inputs)
    targets = np.asarray(targets)
    if len(targets) != len(inputs):
        raise TlkerasError(f"inputs and targets differ in length. Received: len(inputs)={len(inputs)}, "
                           f"len(targets)={len(targets)}")
    return tf.data.Dataset.from_tensor_slices((inputs, targets))


def shuffled(ds, size: int, shuffle: bool, seed: int, repeat: bool):
    # Shuffle before decoding, so the buffer holds every example's path (or compact array) and the whole
    # set is mixed; shuffle before repeat, so epochs differ yet never overlap.
    if shuffle:
        ds = ds.shuffle(max(size, 1), seed=seed, reshuffle_each_iteration=True)
    return ds.repeat() if repeat else ds


def map_inputs(ds, fn: Callable, has_targets: bool):
    """Applies `fn` to the inputs of each element, leaving targets as they are."""
    import tensorflow as tf

    if has_targets:
        return ds.map(lambda x, y: (fn(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def finish(ds, has_targets: bool, augment: Callable | None):
    """Adds the batch-level `augment(inputs, targets)` step, if any, and prefetching."""
    import tensorflow as tf

    if augment is not None:
        if not has_targets:
            raise TlkerasError("augmentation needs targets: pass them with the inputs")
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
