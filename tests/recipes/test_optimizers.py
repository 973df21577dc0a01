"""Discriminative learning rates and warm-up schedules."""

import keras
import numpy as np
import pytest

from tlkeras.recipes.lr_schedules import WarmupSchedule
from tlkeras.recipes.optimizers import LayerwiseAdamW, LayerwiseSGD, make_optimizer


@pytest.mark.parametrize("make, exact", [
    (lambda: LayerwiseSGD(learning_rate=0.1, momentum=0.0, lr_multipliers={"slow/kernel": 0.1}), True),
    (lambda: LayerwiseAdamW(learning_rate=0.1, weight_decay=0.0, lr_multipliers={"slow/kernel": 0.1}), False),
], ids=["sgd", "adamw"])
def test_layerwise_optimizer_scales_the_update_of_chosen_variables(make, exact):
    optimizer = make()
    slow, fast = keras.layers.Dense(3, name="slow"), keras.layers.Dense(3, name="fast")
    slow.build((None, 4))
    fast.build((None, 4))
    fast.kernel.assign(slow.kernel)
    before = keras.ops.convert_to_numpy(slow.kernel).copy()
    gradient = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    optimizer.apply_gradients([(gradient, slow.kernel), (gradient, fast.kernel)])

    slow_step = keras.ops.convert_to_numpy(slow.kernel) - before
    fast_step = keras.ops.convert_to_numpy(fast.kernel) - before
    assert np.abs(fast_step).min() > 0
    np.testing.assert_allclose(slow_step, 0.1 * fast_step, rtol=1e-5 if exact else 1e-2, atol=1e-7)


def test_make_optimizer_slows_only_the_backbone_variables():
    backbone, head = keras.layers.Dense(2, name="backbone_dense"), keras.layers.Dense(2, name="head_dense")
    backbone.build((None, 2))
    head.build((None, 2))
    optimizer = make_optimizer("adamw", 1e-3, 1e-4, backbone.trainable_variables, multiplier=0.1)
    assert isinstance(optimizer, LayerwiseAdamW)
    assert optimizer.lr_multipliers == {"backbone_dense/kernel": 0.1, "backbone_dense/bias": 0.1}
    assert make_optimizer("sgd", 1e-3, 0.0, backbone.trainable_variables, multiplier=1.0).lr_multipliers == {}


def test_layerwise_optimizer_and_schedule_round_trip_through_config_and_keras_file(tmp_path):
    schedule = WarmupSchedule(0.01, total_steps=20, warmup_steps=4, kind="one_cycle")
    optimizer = LayerwiseAdamW(learning_rate=schedule, lr_multipliers={"body/kernel": 0.1})
    clone = LayerwiseAdamW.from_config(keras.optimizers.serialize(optimizer)["config"])
    assert clone.lr_multipliers == {"body/kernel": 0.1}
    assert clone.get_config()["learning_rate"] == optimizer.get_config()["learning_rate"]
    sgd = LayerwiseSGD.from_config(LayerwiseSGD(momentum=0.0, lr_multipliers={"a": 2.0}).get_config())
    assert (sgd.momentum, sgd.lr_multipliers) == (0.0, {"a": 2.0})

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="body"), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    x, y = np.ones((8, 4), "float32"), np.zeros((8, 1), "float32")
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer, LayerwiseAdamW)
    assert loaded.optimizer.lr_multipliers == {"body/kernel": 0.1}
    assert loaded.optimizer.get_config()["learning_rate"]["class_name"] == "WarmupSchedule"
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    loaded.fit(x, y, epochs=1, verbose=0)  # and it keeps training


def test_warmup_schedule_curves():
    cosine = WarmupSchedule(1.0, total_steps=110, warmup_steps=10)
    values = [float(cosine(step)) for step in (0, 5, 10, 60, 110, 500)]
    np.testing.assert_allclose(values, [0.0, 0.5, 1.0, 0.5, 0.0, 0.0], atol=1e-6)
    one_cycle = WarmupSchedule(1.0, total_steps=110, warmup_steps=10, kind="one_cycle")
    np.testing.assert_allclose([float(one_cycle(s)) for s in (0, 10, 110)], [1 / 25, 1.0, 1e-4], rtol=1e-4)
