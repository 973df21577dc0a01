"""The learning-rate range test: raise the learning rate exponentially for a few hundred steps,
record the loss, and suggest the rate where the loss falls fastest."""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import numpy as np


class _RangeTest(keras.callbacks.Callback):
    def __init__(self, start, end, steps):
        super().__init__()
        self.rates = np.geomspace(start, end, steps)
        self.losses: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate.assign(self.rates[min(batch, len(self.rates) - 1)])

    def on_train_batch_end(self, batch, logs=None):
        loss = float(logs["loss"])
        self.losses.append(loss)
        best = min(self.losses)
        if not math.isfinite(loss) or (batch > 10 and loss > 4 * best) or batch + 1 >= len(self.rates):
            self.model.stop_training = True


def suggest_learning_rate(rates, losses, smoothing: float = 0.9) -> float:
    """The rate at the steepest descent of the smoothed loss curve. A pure function of its inputs.

    Example:
    >>> suggest_learning_rate(np.geomspace(1e-5, 1, 50), losses)
    """
    smoothed, average = [], 0.0
    for i, loss in enumerate(losses):
        average = smoothing * average + (1 - smoothing) * loss
        smoothed.append(average / (1 - smoothing ** (i + 1)))
    smoothed = np.asarray(smoothed)
    rates = np.asarray(rates[: len(smoothed)])
    if len(smoothed) < 4:
        return float(rates[0])
    # Ignore the last, diverging tail: it would always be "steepest" in absolute terms.
    end = max(3, int(np.argmin(smoothed)) + 1)
    slopes = np.gradient(smoothed[:end], np.log10(rates[:end]))
    return float(rates[int(np.argmin(slopes))])


def lr_find(trainer, out_dir: Path, start: float = 1e-6, end: float = 1.0, steps: int = 100) -> dict:
    """Runs the range test for the first stage of a prepared `Trainer`; saves lr_find.png/.json.

    Returns:
        dict with `suggested_learning_rate`, `learning_rates` and `losses`.
    """
    import tensorflow as tf

    from tlkeras.recipes.freezing import apply_stage

    stage = trainer.stages()[0]
    batch_size = trainer.recipe.data.batch_size
    if trainer.uses_feature_cache():
        model = trainer.head_on_features
        pairs = (trainer.cached_features(trainer.splits.train), trainer._targets(trainer.splits.train))
        data = tf.data.Dataset.from_tensor_slices(pairs).shuffle(len(pairs[0])).batch(batch_size)
    else:
        model = trainer.model
        apply_stage(trainer.backbone, stage, trainer.entry.layer_groups, trainer.recipe.schedule.unfreeze_unit)
        data = trainer.dataset(trainer.splits.train, training=True)
    trainer._compile(model, stage, steps=steps)
    weights = model.get_weights()
    test = _RangeTest(start, end, steps)
    model.fit(data.repeat(), steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0, callbacks=[test])
    model.set_weights(weights)  # the test must not leave its traces in the model
    rates = test.rates[: len(test.losses)]
    suggestion = suggest_learning_rate(rates, test.losses)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"suggested_learning_rate": suggestion, "learning_rates": rates.tolist(), "losses": test.losses}
    (out_dir / "lr_find.json").write_text(json.dumps(result, indent=1))
    _plot(rates, test.losses, suggestion, out_dir / "lr_find.png")
    return result


def _plot(rates, losses, suggestion, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    axes.plot(rates, losses)
    axes.axvline(suggestion, color="red", linestyle="--", label=f"suggested {suggestion:.2g}")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
