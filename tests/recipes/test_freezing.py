"""Freezing schedules: each trains exactly what it unfreezes; BatchNorm statistics stay fixed unless trained."""

import json

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_CNN
from training_helpers import BATCHNORMS, CONVS, MOBILENET, changed, fit, make_recipe

from tlkeras import backbones
from tlkeras.errors import TlkerasError
from tlkeras.recipes import freezing
from tlkeras.recipes.config import ScheduleConfig, StageConfig
from tlkeras.recipes.freezing import Stage, apply_stage, plan_stages

pytestmark = pytest.mark.usefixtures("tlkeras_env")


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
    # An MLP head trains by epochs in every strategy (a linear head would be fitted as a probe, LP-FT first):
    # these are the staged schedules' mechanics.
    trainer, history, (before, after), (head_before, head_after) = fit(
        make_recipe(colour_folder, tmp_path / "run", "head.hidden_units=[8]", *overrides))

    assert changed(head_before, head_after), "the head did not train"
    moved = changed(before, after)
    assert {key.split("/")[0] for key in moved if "_conv/" in key} == trained_convs
    # The Keras 3 trap: fit() runs nested BN layers in training mode unless they are frozen themselves.
    statistics = {f"{bn}/{stat}" for bn in BATCHNORMS for stat in ("moving_mean", "moving_variance")}
    assert (moved & statistics) == (statistics if bn_trains else set())
    if trained_convs:  # the backbone learns at the discriminative rate, the head at the full one
        multipliers = trainer.model.optimizer.lr_multipliers
        assert set(multipliers) == {v.path for v in trainer.extractor.trainable_variables}
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
    logged = pd.read_csv(trainer.run.path / "history.csv")
    assert logged["epoch"].tolist() == [0, 1, 2, 3]  # one epoch counter across the stages
    assert json.loads((trainer.run.path / "state.json").read_text()) == {"stages_done": 3, "epochs_done": 4,
                                                                         "finished": False}
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
    trainer, *_ = fit(recipe)
    batches = trainer.dataset(trainer.splits.train, False, False, 8)
    best = keras.models.load_model(trainer.run.best_model)
    for model in (trainer.extractor, best):  # the final model, and the best epoch's as saved
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


@pytest.mark.slow
def test_fine_tuning_mobilenet_v3_keeps_its_batchnorm_statistics(colour_folder, tmp_path):
    _, _, (before, after), (head_before, head_after) = fit(make_recipe(
        colour_folder, tmp_path / "run", "schedule.strategy=fine_tuning", "schedule.lp_ft=false", "backbone_weights=random",
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
