"""Freezing schedules: which backbone layers train in each stage.

BatchNormalization layers of a pre-trained backbone stay in inference mode whenever they are frozen:
Keras 3 passes `training=True` through nested models during `fit`, so the only switch that keeps their
moving statistics fixed is `trainable = False` on the BN layer itself (keras#20285).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from tlkeras.backbones import flat_layers, group_layers
from tlkeras.errors import TlkerasError
from tlkeras.recipes.config import ScheduleConfig

Unfreeze = int | str | tuple[str, ...]


@dataclass(frozen=True)
class Stage:
    """One `fit` call: how many epochs, what to unfreeze, at what head learning rate."""

    epochs: int
    unfreeze: Unfreeze  # 0 = backbone frozen; N = top N units; "all"; or name prefixes
    learning_rate: float
    train_batchnorm: bool = False


def plan_stages(schedule: ScheduleConfig, n_groups: int) -> list[Stage]:
    """Turns a schedule config into stages. A pure function of its arguments.

    Example:
    >>> plan_stages(ScheduleConfig(strategy="gradual_unfreezing", epochs=3), n_groups=3)
    [Stage(epochs=1, unfreeze=0, ...), Stage(epochs=1, unfreeze=1, ...), Stage(epochs=1, unfreeze=2, ...)]
    """
    lr, epochs, strategy = schedule.learning_rate, schedule.epochs, schedule.strategy
    head_first = [Stage(schedule.head_epochs, 0, lr)] if schedule.head_epochs else []
    if strategy in ("feature_extraction", "auto"):  # auto plans a frozen probe; it may fine-tune later
        return [Stage(epochs, 0, lr)]
    if strategy == "layer_retraining":
        return head_first + [Stage(epochs, schedule.unfreeze, lr)]
    if strategy == "fine_tuning":
        return head_first + [Stage(epochs, "all", lr)]
    if strategy == "contrastive":  # the whole encoder tunes on pairs, then the probe fits on it
        return [Stage(1, "all", schedule.contrastive_learning_rate)]
    if strategy == "weight_init":
        return [Stage(epochs, "all", lr, train_batchnorm=True)]
    if schedule.stages:  # gradual_unfreezing, explicit
        return [Stage(s.epochs, s.unfreeze, s.learning_rate or lr) for s in schedule.stages]
    # gradual_unfreezing, automatic: head only, then one more group per stage, epochs spread evenly
    n_stages = max(1, min(epochs, n_groups + 1))
    per_stage = [epochs // n_stages + (i < epochs % n_stages) for i in range(n_stages)]
    return [Stage(e, i, lr) for i, e in enumerate(per_stage)]


def apply_stage(backbone: keras.Model, stage: Stage, group_prefixes, unit: str = "groups",
                frozen_variables=()) -> list:
    """Sets `trainable` on every backbone layer for `stage`; returns the layers left trainable.

    Args:
        backbone: keras.Model. The feature extractor.
        stage: Stage. What to unfreeze.
        group_prefixes: list of str. The registry entry's `layer_groups`.
        unit: str. "groups" counts `stage.unfreeze` in layer groups, "layers" in weighted layers.
        frozen_variables: list of str. Variables whose path contains one of these never train.
    """
    layers = [layer for layer in flat_layers(backbone) if layer.weights]
    chosen = _select(backbone, layers, stage.unfreeze, group_prefixes, unit)
    backbone.trainable = True  # containers must be trainable for their layers' flags to count
    for layer in layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = id(layer) in chosen and (not is_bn or stage.train_batchnorm)
        for variable in layer.weights:
            if any(part in variable.path for part in frozen_variables):
                variable.trainable = False
    return [layer for layer in layers if layer.trainable]


def _select(backbone, layers, unfreeze: Unfreeze, group_prefixes, unit) -> set[int]:
    if unfreeze == "all":
        return {id(layer) for layer in layers}
    if isinstance(unfreeze, str):
        unfreeze = (unfreeze,)
    if isinstance(unfreeze, tuple):
        chosen = {id(layer) for layer in layers if layer.name.startswith(unfreeze)}
        if not chosen:
            raise TlkerasError(
                f"no layer of {backbone.name} starts with {list(unfreeze)}; its layer groups are "
                f"{list(group_prefixes)}. Received: unfreeze={list(unfreeze)}"
            )
        return chosen
    if unfreeze < 0:
        raise TlkerasError(f"unfreeze counts layers or groups from the top, so it is >= 0. Received: {unfreeze}")
    if unit == "layers":
        # Frozen BN layers never train, so counting them would unfreeze fewer layers than asked.
        units = [[layer] for layer in layers if not isinstance(layer, keras.layers.BatchNormalization)]
    else:
        units = group_layers(backbone, group_prefixes)
    top = units[max(0, len(units) - unfreeze):] if unfreeze else []
    return {id(layer) for group in top for layer in group}


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [layer for layer in flat_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]


def recalibrate_batchnorm(model: keras.Model, batches, max_batches: int = 200) -> int:
    """Re-estimates the moving statistics of `model`'s trainable BN layers with its final weights.

    A short run from scratch changes the weights faster than BN's moving averages (momentum 0.99) follow:
    after a few dozen steps they still mostly hold their initial values, and the model predicts one class
    in inference mode while it fits its training batches. Here each statistic becomes the size-weighted
    average of the batch statistics over `batches` ("precise BN"). Returns the number of batches used.

    Args:
        model: keras.Model. Only its trainable BatchNormalization layers change.
        batches: iterable of input batches, without augmentation.
        max_batches: int. Enough batches for a stable estimate. Defaults to 200.
    """
    layers = [layer for layer in batchnorm_layers(model) if layer.trainable]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    seen = used = 0
    try:
        for batch in batches:
            if used == max_batches:
                break
            size = int(keras.ops.shape(keras.tree.flatten(batch)[0])[0])
            for layer in layers:  # new = old * momentum + batch * (1 - momentum): a running mean
                layer.momentum = seen / (seen + size)
            model(batch, training=True)
            seen += size
            used += 1
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return used
