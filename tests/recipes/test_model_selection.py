"""Small-data model selection and LP-FT: cross-validation instead of a held-out split below the threshold,
a refit on every example, the probe kept when fine-tuning hurts, balanced classes, mirrored views."""

import json

import numpy as np
import pytest
from training_helpers import make_recipe

from tlkeras.recipes import probe as probe_lib
from tlkeras.recipes import train

pytestmark = pytest.mark.usefixtures("tlkeras_env")


@pytest.fixture
def probe_calls(monkeypatch):
    calls = []
    real = probe_lib.fit_probe

    def spy(features, targets, task, **kwargs):
        fit = real(features, targets, task, **kwargs)
        calls.append({"rows": len(features), "folds": fit.folds, "class_weight": kwargs.get("class_weight")})
        return fit

    monkeypatch.setattr(probe_lib, "fit_probe", spy)
    return calls


def test_below_the_threshold_choices_are_cross_validated_and_the_refit_sees_every_example(colour_folder, tmp_path,
                                                                                          probe_calls):
    result = train(make_recipe(colour_folder, tmp_path / "run"), verbose=0)  # 24 images, validation_split 0.25
    assert probe_calls[-1]["rows"] == 24 and probe_calls[-1]["folds"] >= 2
    log = (result.run_dir / "train.log").read_text()
    assert "no validation split is held out" in log and "cross-validated" in log
    selection = json.loads((result.run_dir / "metrics.json").read_text())["selection"]
    assert selection["kept"] == "probe" and selection["probe"]["folds"] >= 2
    assert len(selection["probe"]["cv_scores"]) == len(probe_lib.candidates("classification"))


@pytest.mark.parametrize("head, schedule, cross_validates", [
    ([], {}, True), ([8], {}, False), ([], {"strategy": "gradual_unfreezing"}, False),
    ([], {"strategy": "fine_tuning"}, True), ([], {"strategy": "fine_tuning", "lp_ft": False}, False),
    ([], {"strategy": "contrastive"}, True)])
def test_only_paths_that_cross_validate_give_up_the_validation_split(head, schedule, cross_validates):
    from tlkeras import inputs
    from tlkeras.recipes.config import parse_recipe
    from tlkeras.recipes.trainer import _selects_by_cross_validation

    recipe = parse_recipe({"backbone": "test_tiny_cnn", "data": {"train": "unused"}, "head": {"hidden_units": head},
                           "schedule": schedule})
    assert _selects_by_cross_validation(recipe, inputs.get("image")) is cross_validates


def test_a_hidden_layer_head_on_small_data_keeps_a_validation_split(colour_folder, tmp_path):
    result = train(make_recipe(colour_folder, tmp_path / "run", "head.hidden_units=[8]"), verbose=0)
    log = (result.run_dir / "train.log").read_text()
    assert "no cross-validated path" in log and "25% is held out for validation" in log
    assert "val_loss" in (result.run_dir / "history.csv").read_text().splitlines()[0]


def test_above_the_threshold_a_validation_split_is_held_out(colour_folder, tmp_path, probe_calls):
    result = train(make_recipe(colour_folder, tmp_path / "run", "data.cross_validate_below=10"), verbose=0)
    assert probe_calls[-1]["rows"] == 18  # 24 minus the 25% validation split
    assert "validation_score" in json.loads((result.run_dir / "metrics.json").read_text())["selection"]["probe"]


@pytest.mark.parametrize("mode", ["cross_validation", pytest.param("validation", marks=pytest.mark.slow)])
def test_lp_ft_keeps_the_probe_when_fine_tuning_hurts(colour_folder, tmp_path, mode):
    # A learning rate this large wrecks the backbone in one epoch: fine-tuning must lose to the probe.
    overrides = ["schedule.strategy=fine_tuning", "schedule.epochs=1", "schedule.learning_rate=10",
                 "schedule.backbone_lr_multiplier=100", "schedule.optimizer=sgd", "schedule.finetune_folds=2"]
    if mode == "validation":
        overrides.append("data.cross_validate_below=10")
    recipe = make_recipe(colour_folder, tmp_path / "run", *overrides)
    probe_only = train(make_recipe(colour_folder, tmp_path / "probe_run", *overrides[4:],
                                   *(["data.cross_validate_below=10"] if mode == "validation" else [])), verbose=0)
    result = train(recipe, verbose=0)
    selection = json.loads((result.run_dir / "metrics.json").read_text())["selection"]
    assert selection["kept"] == "probe", selection
    assert "probe is kept" in selection["reason"] and "probe is kept" in (result.run_dir / "train.log").read_text()
    # Kept means the pre-trained backbone and the probe: the same predictions as a plain probe run.
    assert result.metrics["accuracy"] == pytest.approx(probe_only.metrics["accuracy"], abs=1e-6)


@pytest.mark.slow
def test_imbalanced_classes_get_balanced_weights_by_default(colour_folder, tmp_path, probe_calls):
    for extra in sorted((colour_folder / "red").iterdir())[2:]:  # red keeps 2 of 8 images
        extra.unlink()
    result = train(make_recipe(colour_folder, tmp_path / "run"), verbose=0)
    assert probe_calls[-1]["class_weight"] == "balanced"
    assert "balanced class weights" in (result.run_dir / "train.log").read_text()
    train(make_recipe(colour_folder, tmp_path / "run2", "data.class_weight=none"), verbose=0)
    assert probe_calls[-1]["class_weight"] is None


def test_flip_on_cached_features_trains_on_each_image_and_its_mirror(colour_folder, tmp_path, probe_calls,
                                                                    backbone_passes):
    result = train(make_recipe(colour_folder, tmp_path / "run", "augment.flip=horizontal", "augment.tta=true"),
                   verbose=0)
    assert probe_calls[-1]["rows"] == 2 * 24
    assert sorted(backbone_passes) == [24, 24], backbone_passes  # each view extracted once, then cached
    assert result.metrics["num_samples"] == 24
    backbone_passes.clear()  # a second run reuses both views from the cache
    train(make_recipe(colour_folder, tmp_path / "run", "augment.flip=horizontal", "augment.tta=true"), verbose=0)
    assert backbone_passes == []
    assert np.isfinite(result.metrics["accuracy"])


@pytest.mark.slow
def test_tta_without_flip_training_still_evaluates_what_the_saved_model_averages(colour_folder, tmp_path,
                                                                                backbone_passes):
    train(make_recipe(colour_folder, tmp_path / "run", "augment.tta=true"), verbose=0)
    # Training on the originals only; evaluation also on the mirrors, as the TTA model.keras and export do.
    assert sorted(backbone_passes) == [24, 24], backbone_passes
