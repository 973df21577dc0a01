"""Optimizers with per-variable learning-rate multipliers (discriminative learning rates).

Keras optimizers use one learning rate for every variable. These subclasses scale it per variable,
so a pre-trained backbone can learn 10x slower than a fresh head. Adam-family updates are invariant to
the gradient's scale, so scaling gradients would not do this: the learning rate itself must change.
"""

from __future__ import annotations

import keras


class _LayerwiseLearningRate:
    """Mixin: `lr_multipliers` maps variable paths to a factor on the learning rate (default 1)."""

    def __init__(self, *args, lr_multipliers=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_multipliers = dict(lr_multipliers or {})
        self._multiplier_by_key = {}

    def build(self, variables):
        super().build(variables)
        self._multiplier_by_key = {
            self._var_key(v): self.lr_multipliers[v.path] for v in variables if v.path in self.lr_multipliers
        }

    def update_step(self, gradient, variable, learning_rate):
        factor = self._multiplier_by_key.get(self._var_key(variable))
        if factor is not None:
            learning_rate = learning_rate * factor
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "lr_multipliers": self.lr_multipliers}


@keras.saving.register_keras_serializable(package="tlkeras")
class LayerwiseAdamW(_LayerwiseLearningRate, keras.optimizers.AdamW):
    """AdamW with per-variable learning-rate multipliers."""


@keras.saving.register_keras_serializable(package="tlkeras")
class LayerwiseAdam(_LayerwiseLearningRate, keras.optimizers.Adam):
    """Adam with per-variable learning-rate multipliers."""


@keras.saving.register_keras_serializable(package="tlkeras")
class LayerwiseSGD(_LayerwiseLearningRate, keras.optimizers.SGD):
    """SGD with momentum 0.9 and per-variable learning-rate multipliers."""

    def __init__(self, *args, momentum=0.9, **kwargs):
        super().__init__(*args, momentum=momentum, **kwargs)


OPTIMIZERS = {"adamw": LayerwiseAdamW, "adam": LayerwiseAdam, "sgd": LayerwiseSGD}


def make_optimizer(name: str, learning_rate, weight_decay: float, backbone_variables, multiplier: float):
    """Builds the optimizer named in the recipe; `backbone_variables` learn at `multiplier` × LR.

    Example:
    >>> opt = make_optimizer("adamw", 1e-3, 1e-4, backbone.trainable_variables, multiplier=0.1)
    """
    multipliers = {v.path: multiplier for v in backbone_variables} if multiplier != 1.0 else {}
    kwargs = {"weight_decay": weight_decay} if name in ("adamw", "sgd") and weight_decay else {}
    return OPTIMIZERS[name](learning_rate=learning_rate, lr_multipliers=multipliers, **kwargs)
