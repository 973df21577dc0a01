"""The one head every recipe puts on a backbone's pooled features."""

from __future__ import annotations

import keras

from tlkeras import tasks


def build_head(feature_dim: int, task: str, n_outputs: int, hidden_units=(), dropout: float = 0.2,
               activation: str = "relu") -> keras.Model:
    """A small MLP from pooled features to the task's outputs, as its own model so it can train on
    cached features and then sit on top of the backbone with the same weights.

    Args:
        feature_dim: int. Size of the backbone's pooled features.
        task: str. A task name; the output activation is the task's (softmax, sigmoid, linear).
        n_outputs: int. Classes, labels or regression targets.
        hidden_units: list of int. Hidden Dense layers. Defaults to none: a linear probe.
        dropout: float. Dropout before each Dense layer. Defaults to 0.2.
        activation: str. Activation of the hidden layers. Defaults to "relu".

    Example:
    >>> head = build_head(1280, "classification", n_outputs=10)
    """
    features = keras.Input(shape=(feature_dim,), name="features")
    x = features
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dropout(dropout, name=f"head_dropout_{i}")(x) if dropout else x
        x = keras.layers.Dense(units, activation=activation, name=f"head_dense_{i}")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 outputs keep the softmax stable under mixed precision.
    outputs = keras.layers.Dense(n_outputs, activation=tasks.get(task).activation, dtype="float32", name="outputs")(x)
    return keras.Model(features, outputs, name="head")
