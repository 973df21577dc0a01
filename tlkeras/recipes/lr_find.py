"""The learning-rate range test: raise the learning rate exponentially for a few hundred steps,
record the loss, and suggest the rate where the loss falls fastest."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np

from tlkeras import files


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
    """Runs the range test for the first stage of a `Trainer`; saves lr_find.png/.json into `out_dir`.

    Returns:
        dict with `suggested_learning_rate`, `learning_rates` and `losses`.
    """
    stage = trainer.stages()[0]
    model, data = trainer.training_setup(stage)
    trainer.compile(model, stage, steps=steps)
    weights = model.get_weights()
    test = _RangeTest(start, end, steps)
    model.fit(data.repeat(), steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0, callbacks=[test])
    model.set_weights(weights)  # the test must not leave its traces in the model
    rates = test.rates[: len(test.losses)]
    suggestion = suggest_learning_rate(rates, test.losses)
    result = {"suggested_learning_rate": suggestion, "learning_rates": rates.tolist(), "losses": test.losses}
    files.write_json(out_dir / "lr_find.json", result)
    files.write_bytes(out_dir / "lr_find.png", _plot(rates, test.losses, suggestion))
    return result


def _plot(rates, losses, suggestion) -> bytes:
    from tlkeras import plots

    figure = plots.figure(6, 4)
    axes = figure.subplots()
    axes.plot(rates, losses)
    axes.axvline(suggestion, color="red", linestyle="--", label=f"suggested {suggestion:.2g}")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    axes.legend()
    return plots.png_bytes(figure)
