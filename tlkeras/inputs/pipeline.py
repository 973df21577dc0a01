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


def epochs(inputs, targets, seed: int, first_epoch: int, make_epoch: Callable):
    """tf.data.Dataset: epoch `first_epoch`, then the next, without end, each `make_epoch` (e.g. decode and
    batch) applied to every example once, in an order that depends only on `seed` and the epoch's number.

    `Dataset.shuffle` draws a new order for each iterator made, so the order of epoch k depends on how many
    iterators came before: a resumed run, or Keras building a distributed model from a batch, sees other
    orders. Here epoch k's order is the same in a fresh, a resumed and a multi-worker run; train on it with
    `fit(steps_per_epoch=...)`.

    Example:
    >>> ds = epochs(paths, labels, seed=0, first_epoch=3, make_epoch=lambda d: d.map(decode).batch(32))
    """
    import tensorflow as tf

    size = len(inputs)
    x = tf.constant(list(inputs))
    y = None if targets is None else tf.constant(np.asarray(targets))
    if y is not None and len(targets) != size:
        raise TlkerasError(f"inputs and targets differ in length. Received: len(inputs)={size}, "
                           f"len(targets)={len(targets)}")

    def one_epoch(epoch):
        order = tf.random.experimental.stateless_shuffle(tf.range(size, dtype=tf.int64),
                                                         seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        picked = tf.data.Dataset.from_tensor_slices(order)
        picked = picked.map(lambda i: tf.gather(x, i)) if y is None else picked.map(lambda i: (tf.gather(x, i),
                                                                                                tf.gather(y, i)))
        return make_epoch(picked)

    return tf.data.Dataset.range(first_epoch, 2**62).flat_map(one_epoch)


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
