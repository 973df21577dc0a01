"""Learning-rate schedules with warmup. The curves are pure functions of (start, end, position)."""

from __future__ import annotations

import math

import keras
from keras import ops


def linear(start: float, end: float, pos: float) -> float:
    return start + (end - start) * pos


def cosine(start: float, end: float, pos: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * pos)) / 2


@keras.saving.register_keras_serializable(package="tlkeras")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `peak`, then cosine decay.

    Args:
        peak: float. The highest learning rate.
        total_steps: int. Steps in the stage.
        warmup_steps: int. Steps of linear warmup. Defaults to 0.
        kind: str. "cosine" warms up from 0 and decays to 0; "one_cycle" warms up from peak/25 and
            decays to peak/1e4, as in the one-cycle policy.

    Example:
    >>> schedule = WarmupSchedule(1e-3, total_steps=100, warmup_steps=10)
    >>> float(schedule(10))
    0.001
    """

    def __init__(self, peak, total_steps, warmup_steps=0, kind="cosine"):
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.kind = kind

    def __call__(self, step):
        start, end = (self.peak / 25, self.peak / 1e4) if self.kind == "one_cycle" else (0.0, 0.0)
        step = ops.cast(step, "float32")
        warm = ops.maximum(float(self.warmup_steps), 1.0)
        decay = ops.maximum(float(self.total_steps - self.warmup_steps), 1.0)
        warm_pos = ops.minimum(step / warm, 1.0)
        decay_pos = ops.clip((step - self.warmup_steps) / decay, 0.0, 1.0)
        warming = start + (self.peak - start) * warm_pos
        decaying = end + (self.peak - end) * (1 + ops.cos(math.pi * decay_pos)) / 2
        return ops.where(step < self.warmup_steps, warming, decaying)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "kind": self.kind}
