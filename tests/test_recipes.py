"""Recipes end to end: each transfer-learning technique trains a tiny backbone and is checked by what it
changes (weights, batch-norm statistics, history, cache files, run directory), not by how it does it.

Most tests train `test_tiny_cnn` (4 conv+BN groups, a local .keras file from the test catalog) on 32x32
images for one or two epochs; see conftest.py for the data and the catalog.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import COLOURS, TINY_BERT, TINY_CNN, write_colour_folder, write_image

from tlkeras import backbones
from tlkeras.backbones import flat_layers
from tlkeras.errors import TlkerasError
from tlkeras.recipes import Trainer, features, freezing, load_recipe, parse_recipe, train
from tlkeras.recipes.augment import build_label_mixer, build_pixel_augmenter
from tlkeras.recipes.callbacks import BestModelCheckpoint
from tlkeras.recipes.config import AugmentConfig, ScheduleConfig, StageConfig
from tlkeras.recipes.data import image_dataset, load_examples
from tlkeras.recipes.freezing import Stage, apply_stage, plan_stages
from tlkeras.recipes.lr_schedules import WarmupSchedule
from tlkeras.recipes.optimizers import LayerwiseAdamW, LayerwiseSGD, make_optimizer
from tlkeras.schema import SchemaError

pytestmark = pytest.mark.usefixtures("tlkeras_env")

MOBILENET = "mobilenet_v3_small_imagenet"  # the shipped keras.applications entry; used with random weights
CONVS = {"stem_conv", "block1_conv", "block2_conv", "top_conv"}
BATCHNORMS = {"stem_bn", "block1_bn", "block2_bn", "top_bn"}
QUIET_TF = {"TF_CPP_MIN_LOG_LEVEL": "3"}


# ----------------------------------------------------------------------------------------------- helpers
def make_recipe(train_data, out_dir, *overrides, backbone=TINY_CNN):
    """A small recipe on `train_data`, changed by `--set`-style overrides."""
    raw = {
        "backbone": backbone,
        "data": {"train": str(train_data), "validation_split": 0.25, "image_size": [32, 32], "batch_size": 8},
        "schedule": {"epochs": 1},
        "callbacks": {"tensorboard": False, "checkpoint": False},
        "output_dir": str(out_dir),
    }
    return parse_recipe(raw, list(overrides))


def weights_of(model) -> dict[str, np.ndarray]:
    """Every weight of `model`, as "layer/variable" -> a copy of its value."""
    return {f"{layer.name}/{w.name}": keras.ops.convert_to_numpy(w).copy()
            for layer in flat_layers(model) for w in layer.weights}


def changed(before: dict, after: dict) -> set[str]:
    return {key for key in before if not np.array_equal(before[key], after[key])}


def fit(recipe):
    """Prepares and fits a recipe (no evaluation); returns the trainer, the history and the backbone and
    head weights before and after."""
    trainer = Trainer(recipe, verbose=0)
    trainer.prepare()
    backbone_before, head_before = weights_of(trainer.backbone), weights_of(trainer.head)
    history = trainer.fit()
    return trainer, history, (backbone_before, weights_of(trainer.backbone)), (head_before, weights_of(trainer.head))


@pytest.fixture
def backbone_passes(monkeypatch):
    """Counts backbone passes over a dataset (what the feature cache saves): one list item, the number
    of examples, per pass."""
    passes = []
    extract = features.extract

    def counting(backbone, dataset, verbose=1):
        result = extract(backbone, dataset, verbose=verbose)
        passes.append(len(result))
        return result

    monkeypatch.setattr(features, "extract", counting)
    return passes


@pytest.fixture
def without_recipe_classes(monkeypatch):
    """Unregisters tlkeras.recipes' Keras classes (optimizers, schedules), as in a process that imported
    only tlkeras.backbones, e.g. a serving process."""
    registered = keras.saving.get_custom_objects()
    for name, obj in list(registered.items()):
        if getattr(obj, "__module__", "").startswith("tlkeras.recipes"):
            monkeypatch.delitem(registered, name)


def run_python(script: str, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **QUIET_TF},
                          cwd=os.path.dirname(__file__))


# ------------------------------------------------------------------------------ freezing schedules
ALL = "all"
SCHEDULES = {
    # id: (overrides, conv layers that must change, whether BN statistics must change)
    "feature_extraction": ([], set(), False),
    "feature_extraction_uncached": (["data.cache_features=false"], set(), False),
    "layer_retraining_top2_groups": (["schedule.strategy=layer_retraining", "schedule.unfreeze=2"],
                                     {"block2_conv", "top_conv"}, False),
    "layer_retraining_top1_layer": (["schedule.strategy=layer_retraining", "schedule.unfreeze=1",
                                     "schedule.unfreeze_unit=layers"], {"top_conv"}, False),
    "layer_retraining_by_name": (["schedule.strategy=layer_retraining", "schedule.unfreeze=[block1]"],
                                 {"block1_conv"}, False),
    "gradual_unfreezing_auto": (["schedule.strategy=gradual_unfreezing", "schedule.epochs=3"],
                                {"block2_conv", "top_conv"}, False),
    "fine_tuning": (["schedule.strategy=fine_tuning", "schedule.head_epochs=1"], CONVS, False),
    "weight_init": (["schedule.strategy=weight_init"], CONVS, True),
}


@pytest.mark.parametrize("overrides, trained_convs, bn_trains", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_schedule_trains_exactly_what_it_unfreezes(colour_folder, tmp_path, overrides, trained_convs, bn_trains):
    trainer, history, (before, after), (head_before, head_after) = fit(
        make_recipe(colour_folder, tmp_path / "run", *overrides))

    assert changed(head_before, head_after), "the head did not train"
    moved = changed(before, after)
    assert {key.split("/")[0] for key in moved if "_conv/" in key} == trained_convs
    # The Keras 3 trap: fit() runs nested BN layers in training mode unless they are frozen themselves.
    statistics = {f"{bn}/{stat}" for bn in BATCHNORMS for stat in ("moving_mean", "moving_variance")}
    assert (moved & statistics) == (statistics if bn_trains else set())
    if trained_convs:  # the backbone learns at the discriminative rate, the head at the full one
        multipliers = trainer.model.optimizer.lr_multipliers
        assert set(multipliers) == {v.path for v in trainer.backbone.trainable_variables}
        assert set(multipliers.values()) == {0.1}
    assert len(history["loss"]) == trainer.recipe.schedule.epochs + trainer.recipe.schedule.head_epochs


def test_gradual_unfreezing_with_explicit_stages(colour_folder, tmp_path, monkeypatch):
    unfrozen = []
    real_apply_stage = freezing.apply_stage

    def spy(backbone, stage, *args, **kwargs):
        layers = real_apply_stage(backbone, stage, *args, **kwargs)
        unfrozen.append(sorted(layer.name for layer in layers))
        return layers

    monkeypatch.setattr(freezing, "apply_stage", spy)
    stages = "[{epochs: 1, unfreeze: 0}, {epochs: 1, unfreeze: 1}, {epochs: 2, unfreeze: all}]"
    trainer, history, (before, after), _ = fit(make_recipe(
        colour_folder, tmp_path / "run", "schedule.strategy=gradual_unfreezing", f"schedule.stages={stages}"))

    assert unfrozen == [[], ["top_conv"], sorted(CONVS)]
    assert len(history["loss"]) == 4
    logged = pd.read_csv(trainer.run_dir / "history.csv")
    assert logged["epoch"].tolist() == [0, 1, 2, 3]  # one epoch counter across the stages
    assert json.loads((trainer.run_dir / "state.json").read_text()) == {"stages_done": 3, "epochs_done": 4}
    assert {key.split("/")[0] for key in changed(before, after) if "_conv/" in key} == CONVS


def test_recalibrate_batchnorm_sets_exact_statistics_and_keeps_momentum_and_frozen_layers():
    trained, frozen = keras.layers.BatchNormalization(), keras.layers.BatchNormalization()
    model = keras.Sequential([keras.Input((2,)), trained, keras.layers.Dense(2), frozen])
    frozen.trainable = False
    rng = np.random.default_rng(0)
    batches = [rng.normal([5.0, -3.0], [2.0, 0.5], size=(n, 2)).astype("float32") for n in (16, 16, 4)]

    used = freezing.recalibrate_batchnorm(model, batches, max_batches=10)

    assert used == 3 and trained.momentum == frozen.momentum == 0.99
    sizes = np.array([len(b) for b in batches])[:, None]
    expected_mean = (np.array([b.mean(0) for b in batches]) * sizes).sum(0) / sizes.sum()
    expected_var = (np.array([b.var(0) for b in batches]) * sizes).sum(0) / sizes.sum()
    np.testing.assert_allclose(trained.moving_mean.numpy(), expected_mean, rtol=1e-5)
    np.testing.assert_allclose(trained.moving_variance.numpy(), expected_var, rtol=1e-4)
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), np.zeros(2))
    assert freezing.recalibrate_batchnorm(model, batches, max_batches=2) == 2


@pytest.mark.parametrize("recalibrate", [True, False])
def test_weight_init_ends_with_batchnorm_statistics_of_the_final_weights(colour_folder, tmp_path, recalibrate):
    recipe = make_recipe(colour_folder, tmp_path / "run", "schedule.strategy=weight_init", "backbone_weights=random",
                         "schedule.epochs=2", "callbacks.checkpoint=true",
                         f"schedule.recalibrate_batchnorm={str(recalibrate).lower()}")
    trainer = Trainer(recipe, verbose=0)
    trainer.prepare()
    trainer.fit()
    batches = trainer.dataset(trainer.splits.train, False, False, 8)
    best = keras.models.load_model(tmp_path / "run" / "checkpoints" / "best.keras")
    for model in (trainer.backbone, best):  # the final model, and the best epoch's as saved
        bn = freezing.batchnorm_layers(model)[0]
        after_fit = bn.moving_mean.numpy().copy()
        freezing.recalibrate_batchnorm(model, batches)
        assert np.allclose(after_fit, bn.moving_mean.numpy(), rtol=1e-4, atol=1e-6) == recalibrate, model.name


def test_plan_stages_spreads_epochs_over_one_more_group_per_stage():
    stages = plan_stages(ScheduleConfig(strategy="gradual_unfreezing", epochs=5, learning_rate=0.01), n_groups=3)
    assert [(s.epochs, s.unfreeze, s.learning_rate) for s in stages] == [
        (2, 0, 0.01), (1, 1, 0.01), (1, 2, 0.01), (1, 3, 0.01)]
    # Fewer epochs than groups: one epoch per stage, from the head down as far as the epochs go.
    assert [(s.epochs, s.unfreeze) for s in plan_stages(
        ScheduleConfig(strategy="gradual_unfreezing", epochs=2), n_groups=6)] == [(1, 0), (1, 1)]


def test_plan_stages_for_each_strategy():
    def plan(**kwargs):
        return [(s.epochs, s.unfreeze, s.train_batchnorm) for s in plan_stages(ScheduleConfig(**kwargs), 4)]

    assert plan(strategy="feature_extraction", epochs=3) == [(3, 0, False)]
    assert plan(strategy="layer_retraining", epochs=3, unfreeze=2) == [(3, 2, False)]
    assert plan(strategy="fine_tuning", epochs=3, head_epochs=2) == [(2, 0, False), (3, "all", False)]
    assert plan(strategy="weight_init", epochs=3) == [(3, "all", True)]
    explicit = plan_stages(ScheduleConfig(strategy="gradual_unfreezing", learning_rate=0.01, stages=(
        StageConfig(epochs=2, unfreeze=0), StageConfig(epochs=1, unfreeze=("block2",), learning_rate=0.001))), 4)
    assert explicit == [Stage(2, 0, 0.01), Stage(1, ("block2",), 0.001)]


def test_apply_stage_unfreezes_groups_from_the_top_and_never_frozen_batchnorm():
    backbone = backbones.load(TINY_CNN)
    groups = ["stem", "block1", "block2", "top"]

    def trainable(unfreeze, unit="groups", train_batchnorm=False):
        stage = Stage(1, unfreeze, 1e-3, train_batchnorm)
        return {layer.name for layer in apply_stage(backbone, stage, groups, unit)}

    assert trainable(0) == set()
    assert trainable(1) == {"top_conv"}
    assert trainable(3) == {"block1_conv", "block2_conv", "top_conv"}
    assert trainable(6) == CONVS  # more groups than the backbone has: all of them
    assert trainable(2, unit="layers") == {"block2_conv", "top_conv"}  # BN layers are not counted
    assert trainable(("stem", "top")) == {"stem_conv", "top_conv"}
    assert trainable("all", train_batchnorm=True) == CONVS | BATCHNORMS
    with pytest.raises(TlkerasError, match="stem.*block1.*Received: unfreeze=\\['head'\\]"):
        trainable(("head",))
    with pytest.raises(TlkerasError, match="Received: -1"):
        trainable(-1)


# ------------------------------------------------------------------------------ discriminative LR
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


# ------------------------------------------------------------------------------------ feature cache
def test_feature_cache_computes_each_split_once_and_reuses_it(colour_folder, colour_test_folder, tmp_path,
                                                               backbone_passes, tlkeras_env):
    holdout = write_colour_folder(tmp_path / "holdout", per_class=1, seed=9000)
    splits = [f"data.validation={colour_test_folder}", f"data.test={holdout}"]

    result = train(make_recipe(colour_folder, tmp_path / "run1", *splits, "schedule.epochs=3"), verbose=0)
    assert len(result.history["loss"]) == 3
    assert sorted(backbone_passes) == [3, 6, 24]  # test, validation, train: once each, not once per epoch
    assert len(list((tlkeras_env / "features").glob("*.npy"))) == 3
    assert not list((tlkeras_env / "features").glob("*.tmp"))

    backbone_passes.clear()  # another head on the same backbone and data: nothing to compute
    train(make_recipe(colour_folder, tmp_path / "run2", *splits, "head.hidden_units=[8]", "schedule.epochs=2"),
          verbose=0)
    assert backbone_passes == []

    backbone_passes.clear()  # one more training image: the training features are recomputed
    write_image(colour_folder / "red" / "extra.png", COLOURS["red"], seed=77)
    fit(make_recipe(colour_folder, tmp_path / "run3", *splits))
    assert backbone_passes == [25]

    backbone_passes.clear()  # another input size: every split is recomputed
    trainer, *_ = fit(make_recipe(colour_folder, tmp_path / "run4", *splits, "data.image_size=[24, 24]"))
    assert sorted(backbone_passes) == [6, 25]

    backbone_passes.clear()  # the same backbone name registered again with other weights: recomputed
    trainer.entry = dataclasses.replace(trainer.entry, weights_sha256="0" * 64)
    trainer.cached_features(trainer.splits.validation)
    assert backbone_passes == [6]


def test_cached_head_predicts_like_the_whole_model(colour_folder, tmp_path):
    trainer, *_ = fit(make_recipe(colour_folder, tmp_path / "run"))
    assert trainer.uses_feature_cache()
    examples = trainer.splits.validation
    whole = trainer.model.predict(trainer.dataset(examples, False, targets=False), verbose=0)
    np.testing.assert_allclose(trainer.predict(examples), whole, rtol=1e-4, atol=1e-6)


# -------------------------------------------------------------------------------------- augmentation
def _batch(n=8, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 32, 32, 3)).astype("float32")


@pytest.mark.parametrize("option", [
    {"flip": "horizontal"}, {"flip": "horizontal_and_vertical"}, {"rotation": 0.25}, {"zoom": 0.5},
    {"contrast": 0.8}, {"translation": 0.3}, {"rand_augment": True}, {"random_erasing": 1.0},
], ids=lambda option: next(iter(option)))
def test_pixel_augmentation_changes_images_inside_tf_data(option):
    import tensorflow as tf

    augmenter = build_pixel_augmenter(AugmentConfig(**option), seed=3)
    images = _batch()
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(8).map(lambda x: augmenter(x, training=True))
    out = next(iter(dataset)).numpy()
    assert out.shape == images.shape
    changed_images = [not np.allclose(a, b, atol=1e-3) for a, b in zip(images, out, strict=True)]
    assert any(changed_images)
    assert np.isfinite(out).all() and out.min() >= -1e-3 and out.max() <= 255 + 1e-3


def test_no_augmentation_builds_nothing():
    assert build_pixel_augmenter(AugmentConfig()) is None
    assert build_label_mixer(AugmentConfig()) is None


@pytest.mark.parametrize("option", [{"mixup": 0.4}, {"cutmix": 1.0}, {"mixup": 0.4, "cutmix": 1.0}],
                         ids=["mixup", "cutmix", "both"])
def test_label_mixing_makes_soft_labels_that_sum_to_one(option):
    import tensorflow as tf

    mix = build_label_mixer(AugmentConfig(**option), seed=1)
    classes = np.arange(16) % 4
    images = np.stack([np.full((32, 32, 3), 60.0 * c, "float32") for c in classes])  # one colour per class
    labels = np.eye(4, dtype="float32")[classes]
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16).map(mix)
    out_images, out_labels = (t.numpy() for t in next(iter(dataset)))

    np.testing.assert_allclose(out_labels.sum(axis=1), 1.0, atol=1e-5)
    assert ((out_labels > 1e-3) & (out_labels < 1 - 1e-3)).any(), "no label was mixed"
    assert not np.allclose(out_images, images)


def test_training_with_every_augmentation_skips_the_cache_and_leaves_evaluation_data_alone(
        colour_folder, tmp_path, backbone_passes, tlkeras_env):
    augment = ["augment.flip=horizontal", "augment.rotation=0.1", "augment.zoom=0.1", "augment.contrast=0.2",
               "augment.translation=0.1", "augment.rand_augment=true", "augment.random_erasing=0.5",
               "augment.mixup=0.2", "augment.cutmix=1.0"]
    trainer, history, *_ = fit(make_recipe(colour_folder, tmp_path / "run", *augment))

    assert len(history["loss"]) == 1 and np.isfinite(history["loss"]).all()
    assert backbone_passes == [] and not (tlkeras_env / "features").exists()  # augmented pixels: no cache
    x, y = next(iter(trainer.dataset(trainer.splits.train, training=True)))
    assert y.shape == (8, 3)  # one-hot targets, for the mixed labels
    examples = trainer.splits.validation
    seen = np.concatenate([x for x, _ in trainer.dataset(examples, training=False)])
    plain = np.concatenate([x for x, _ in image_dataset(examples.inputs, examples.targets, (32, 32), 8)])
    np.testing.assert_array_equal(seen, plain)
    assert trainer.predict(examples).shape == (len(examples), 3)


# ------------------------------------------------------------------- run directory, images, reloading
def test_run_directory_holds_every_artifact_and_a_reloadable_model(colour_folder, colour_test_folder, tmp_path,
                                                                    monkeypatch, without_recipe_classes):
    predictions = {}
    real_predict = Trainer.predict

    def spy(self, examples):
        predictions["evaluation"] = real_predict(self, examples)
        return predictions["evaluation"]

    monkeypatch.setattr(Trainer, "predict", spy)
    recipe = make_recipe(colour_folder, tmp_path / "run", "schedule.strategy=fine_tuning", "schedule.epochs=2",
                         f"data.test={colour_test_folder}", "callbacks.checkpoint=true",
                         "callbacks.tensorboard=true", "name=colours")
    result = train(recipe, verbose=0)
    run = result.run_dir

    for name in ["config.yaml", "labels.json", "history.csv", "checkpoints/best.keras", "model.keras",
                 "metrics.json", "confusion_matrix.png", "roc.png", "report.html"]:
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").rglob("*tfevents*"))
    assert "stage 0: 2 epochs" in (run / "train.log").read_text()
    assert not (run / "backup").exists(), "empty BackupAndRestore folders were left behind"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["input"] == {"kind": "image", "image_size": [32, 32]}
    assert config["backbone"] == TINY_CNN and config["schedule"]["strategy"] == "fine_tuning"
    assert json.loads((run / "labels.json").read_text()) == ["blue", "green", "red"]
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [0, 1]
    metrics = json.loads((run / "metrics.json").read_text())
    # Grey, RGBA, JPEG and odd-sized images all reach the model: none of the 6 test images is dropped.
    assert metrics["split"] == "test" and metrics["num_samples"] == 6
    assert "colours" in (run / "report.html").read_text()

    # Reloads with only the backbones' custom layers registered (recipe classes were unregistered above).
    model = keras.models.load_model(run / "model.keras")
    test_images = load_examples(colour_test_folder, task="classification").inputs
    pixels = image_dataset(test_images, None, (32, 32), batch_size=8)
    assert model.input_shape == (None, 32, 32, 3)
    np.testing.assert_allclose(model.predict(pixels, verbose=0), predictions["evaluation"], rtol=1e-4, atol=1e-6)
    best = keras.models.load_model(run / "checkpoints" / "best.keras")
    assert best.predict(pixels, verbose=0).shape == (6, 3)


def test_best_checkpoint_is_not_replaced_by_a_worse_later_stage(tmp_path):
    # As on cached features: the head is fitted, the checkpoint is the frozen "backbone" + that head.
    head = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    full = keras.Sequential([keras.Input((1,)), keras.layers.Rescaling(2.0), head])
    path = tmp_path / "checkpoints" / "best.keras"

    def epoch(callback, index, val_loss, weight):
        head.layers[0].kernel.assign([[weight]])  # stands for what that epoch learned
        callback.on_epoch_end(index, {"val_loss": val_loss})

    def saved_output():
        return float(keras.models.load_model(path).predict(np.ones((1, 1)), verbose=0)[0, 0])

    def stage():  # each stage (and a resumed run) builds a new callback; fit attaches the fitted model
        callback = BestModelCheckpoint(full, path)
        callback.set_model(head)
        callback.on_train_begin()
        return callback

    first_stage = stage()
    epoch(first_stage, 0, 1.0, 1.0)
    epoch(first_stage, 1, 0.5, 2.0)
    epoch(first_stage, 2, 0.7, 3.0)
    first_stage.on_train_end()
    assert saved_output() == 4.0, "the best epoch's head behind the frozen layers"
    assert float(head.layers[0].kernel.numpy()[0, 0]) == 3.0, "saving the best must not change the model"
    second_stage = stage()
    epoch(second_stage, 3, 0.8, 4.0)
    second_stage.on_train_end()
    assert saved_output() == 4.0
    epoch(second_stage, 4, 0.4, 5.0)
    second_stage.on_train_end()
    assert saved_output() == 10.0


@pytest.mark.parametrize("task, overrides, outputs, metric", [
    ("multilabel", ["data.label_column=tags", "schedule.strategy=fine_tuning"], 4, "subset_accuracy"),
    ("regression", ["data.label_column=[brightness, redness]"], 2, "r2"),
], ids=["multilabel", "regression"])
def test_multilabel_and_regression_train_end_to_end(image_table, tmp_path, task, overrides, outputs, metric):
    recipe = make_recipe(image_table, tmp_path / "run", f"task={task}", "data.path_column=path", *overrides)
    result = train(recipe, verbose=0)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["num_samples"] == 5 and isinstance(metrics[metric], float)
    model = keras.models.load_model(result.run_dir / "model.keras")
    assert model.output_shape == (None, outputs)
    if task == "multilabel":
        assert json.loads((result.run_dir / "labels.json").read_text()) == ["blue", "bright", "green", "red"]


def test_text_recipe_fine_tunes_a_tiny_bert(text_csv, tmp_path, without_recipe_classes):
    recipe = parse_recipe({
        "backbone": TINY_BERT, "data": {"train": str(text_csv), "validation_split": 0.25, "batch_size": 8},
        "schedule": {"strategy": "fine_tuning", "epochs": 1, "learning_rate": 0.01},
        "callbacks": {"tensorboard": False}, "output_dir": str(tmp_path / "run")})
    trainer, history, (before, after), _ = fit(recipe)
    assert any(key.startswith("transformer_layer_0/") for key in changed(before, after))
    trainer.inference_model.save(tmp_path / "model.keras")
    assert yaml.safe_load((trainer.run_dir / "config.yaml").read_text())["input"] == {
        "kind": "text", "sequence_length": 16}

    model = keras.models.load_model(tmp_path / "model.keras")
    tokens = trainer.tokenizer(np.array(["the movie was good", "awful very sad"]))
    assert tokens["token_ids"].shape == (2, 16)
    np.testing.assert_allclose(model.predict(tokens, verbose=0), trainer.model.predict(tokens, verbose=0),
                               rtol=1e-5)


# ------------------------------------------------------------------------------------------- resume
def test_resume_continues_an_interrupted_run_where_it_stopped(colour_folder, tmp_path):
    raw = {"backbone": TINY_CNN, "output_dir": str(tmp_path / "run"),
           "data": {"train": str(colour_folder), "validation_split": 0.25, "image_size": [32, 32], "batch_size": 8},
           "schedule": {"strategy": "fine_tuning", "epochs": 4},
           "callbacks": {"tensorboard": False, "checkpoint": False}}
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw))
    killed = run_python("""
        import os, sys
        import keras
        from tlkeras import recipes

        def die_at_epoch_2(self, epoch, logs=None):  # epochs 0 and 1 are done and backed up
            if epoch == 2:
                os._exit(17)

        keras.callbacks.CSVLogger.on_epoch_begin = die_at_epoch_2
        recipes.train(recipes.load_recipe(sys.argv[1]), verbose=0)
        """, recipe_file)
    assert killed.returncode == 17, killed.stderr[-3000:]
    run = tmp_path / "run"
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [0, 1]
    assert not (run / "model.keras").exists()

    result = train(load_recipe(recipe_file), resume=True, verbose=0)
    assert len(result.history["loss"]) == 2  # epochs 2 and 3 only
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [0, 1, 2, 3]
    assert json.loads((run / "state.json").read_text()) == {"stages_done": 1, "epochs_done": 4}
    assert (run / "model.keras").is_file() and (run / "metrics.json").is_file()


def test_run_directory_guards(colour_folder, tmp_path):
    with pytest.raises(TlkerasError, match="nothing to resume"):
        Trainer(make_recipe(colour_folder, tmp_path / "new"), resume=True).prepare()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(TlkerasError, match="not a tlkeras run"):
        Trainer(make_recipe(colour_folder, tmp_path / "mine")).prepare()
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


# ------------------------------------------------------------------------------------- distribution
def test_mirrored_strategy_trains_on_two_logical_cpus(colour_folder, tmp_path):
    result = run_python("""
        import json, sys
        from tlkeras.recipes.distribute import use_logical_cpus

        use_logical_cpus(2)  # before TensorFlow sets up its devices
        from test_recipes import changed, fit, make_recipe

        trainer, history, (before, after), _ = fit(make_recipe(
            sys.argv[1], sys.argv[2], "distribution=mirrored", "schedule.strategy=fine_tuning"))
        print(json.dumps({"replicas": trainer.strategy.num_replicas_in_sync, "epochs": len(history["loss"]),
                          "changed": len(changed(before, after))}))
        """, colour_folder, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"replicas": 2, "epochs": 1, "changed": 4}


# ---------------------------------------------------------------------------------------- the schema
BASE = {"backbone": TINY_CNN, "data": {"train": "images"}}


def test_unknown_key_gets_a_did_you_mean():
    with pytest.raises(SchemaError, match="unknown key 'schedul'; did you mean 'schedule'"):
        parse_recipe({**BASE, "schedul": {"epochs": 3}})
    with pytest.raises(SchemaError, match="unknown key 'data.batchsize'; did you mean 'batch_size'"):
        parse_recipe({**BASE, "data": {"train": "images", "batchsize": 8}})


def test_wrong_type_names_the_key():
    with pytest.raises(SchemaError, match="'schedule.epochs' must be int. Received: schedule.epochs='ten'"):
        parse_recipe({**BASE, "schedule": {"epochs": "ten"}})
    with pytest.raises(SchemaError, match="schedule.strategy"):
        parse_recipe(BASE, ["schedule.strategy=fine_tune"])


def test_overrides_set_nested_values_and_leave_the_input_alone():
    raw = {**BASE, "schedule": {"epochs": 10}, "head": None}
    recipe = parse_recipe(raw, ["schedule.epochs=3", "data.image_size=[40, 48]", "head.hidden_units=[8]",
                                "augment.flip=horizontal", "schedule.learning_rate=1e-2"])
    assert recipe.schedule.epochs == 3 and recipe.data.image_size == (40, 48)
    assert recipe.head.hidden_units == (8,) and recipe.augment.flip == "horizontal"
    assert recipe.schedule.learning_rate == 0.01
    assert raw == {**BASE, "schedule": {"epochs": 10}, "head": None}
    assert parse_recipe(raw).schedule.epochs == 10
    with pytest.raises(SchemaError, match="key=value"):
        parse_recipe(BASE, ["schedule.epochs"])
    with pytest.raises(SchemaError, match="'epochs' is not a section"):
        parse_recipe(BASE, ["schedule.epochs=3", "schedule.epochs.max=4"])


def test_missing_backbone_or_training_data_is_an_error():
    with pytest.raises(SchemaError, match="needs 'backbone'"):
        parse_recipe({"data": {"train": "images"}})
    with pytest.raises(SchemaError, match="needs 'data.train'"):
        parse_recipe({"backbone": TINY_CNN})


def test_reduce_on_plateau_with_a_learning_rate_schedule_is_refused():
    # Keras cannot set a scheduled learning rate: the run would crash at its first plateau.
    with pytest.raises(SchemaError, match="reduce_on_plateau.*lr_schedule"):
        parse_recipe(BASE, ["schedule.lr_schedule=cosine", "callbacks.reduce_on_plateau={patience: 1}"])


def test_load_recipe_reads_paths_relative_to_the_file_and_names_it_in_errors(tmp_path):
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({**BASE, "data": {"train": "images", "test": "test"}}))
    recipe = load_recipe(tmp_path / "recipe.yaml", ["schedule.epochs=2"])
    assert recipe.data.train == str((tmp_path / "images").resolve())
    assert recipe.data.test == str((tmp_path / "test").resolve())
    assert recipe.schedule.epochs == 2
    # YAML 1.1 reads 3e-4 as a string; a recipe means a learning rate.
    (tmp_path / "lr.yaml").write_text("backbone: x\ndata: {train: t}\nschedule: {learning_rate: 3e-4}\n")
    assert load_recipe(tmp_path / "lr.yaml").schedule.learning_rate == 3e-4
    (tmp_path / "bad.yaml").write_text("backbone: x\ndata: {train: t}\nhead: {dropuot: 0.1}\n")
    with pytest.raises(SchemaError, match="bad.yaml: unknown key 'head.dropuot'; did you mean 'dropout'"):
        load_recipe(tmp_path / "bad.yaml")


# ------------------------------------------------------------------- a real keras.applications model
@pytest.mark.slow
def test_fine_tuning_mobilenet_v3_keeps_its_batchnorm_statistics(colour_folder, tmp_path):
    _, _, (before, after), (head_before, head_after) = fit(make_recipe(
        colour_folder, tmp_path / "run", "schedule.strategy=fine_tuning", "backbone_weights=random",
        backbone=MOBILENET))
    moved = changed(before, after)
    assert not {key for key in moved if "moving_" in key}
    assert {key for key in moved if key.endswith("/kernel") or key.endswith("/depthwise_kernel")}
    assert changed(head_before, head_after)


def test_layer_retraining_on_mobilenet_v3_unfreezes_a_contiguous_top():
    from tlkeras import registry

    entry = registry.get(MOBILENET)
    backbone = backbones.load(MOBILENET, weights=False, image_size=(32, 32))
    names = [layer.name for layer in apply_stage(backbone, Stage(1, 2, 1e-3), entry.layer_groups)]
    # The top two groups start at expanded_conv_8_: every block above it trains too.
    assert {name.split("_depthwise")[0].split("_expand")[0].split("_project")[0].split("_squeeze")[0]
            for name in names} == {"expanded_conv_8", "expanded_conv_9", "expanded_conv_10", "conv_1"}
