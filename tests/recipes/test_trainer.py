"""Recipes end to end: each transfer-learning technique trains a tiny backbone and is checked by what it
changes (weights, batch-norm statistics, history, cache files, run directory), not by how it does it.

Most tests train `test_tiny_cnn` (4 conv+BN groups, a local .keras file from the test catalog) on 32x32
images for one or two epochs; see conftest.py for the data and the catalog.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_BERT, TINY_CNN
from training_helpers import changed, fit, make_recipe, run_python

from tlkeras import inputs
from tlkeras.data import load_examples
from tlkeras.errors import TlkerasError
from tlkeras.inputs import InputSpec
from tlkeras.recipes import Trainer, load_recipe, parse_recipe, train
from tlkeras.recipes.callbacks import BestModelCheckpoint

pytestmark = pytest.mark.usefixtures("tlkeras_env")



# ------------------------------------------------------------------- run directory, images, reloading
def test_run_directory_holds_every_artifact_and_a_reloadable_model(colour_folder, colour_test_folder, tmp_path,
                                                                    monkeypatch, without_recipe_classes):
    predictions = {}
    real_predict = Trainer.predict

    def spy(self, examples):
        predictions["evaluation"] = real_predict(self, examples)
        return predictions["evaluation"]

    monkeypatch.setattr(Trainer, "predict", spy)
    recipe = make_recipe(colour_folder, tmp_path / "run", "schedule.strategy=fine_tuning", "schedule.lp_ft=false",
                         "schedule.epochs=2",
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
    pixels = inputs.get("image").dataset(test_images, None, InputSpec("image", image_size=(32, 32)), 8)
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
    ("multilabel", ["data.label_column=tags", "schedule.strategy=fine_tuning", "schedule.lp_ft=false"], 4,
     "subset_accuracy"),
    ("regression", ["data.label_column=[brightness, redness]"], 2, "r2"),
], ids=["multilabel", "regression"])
def test_multilabel_and_regression_train_end_to_end(image_table, tmp_path, task, overrides, outputs, metric):
    recipe = make_recipe(image_table, tmp_path / "run", f"task={task}", "data.path_column=path",
                         "data.cross_validate_below=0", *overrides)
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
        "schedule": {"strategy": "fine_tuning", "lp_ft": False, "epochs": 1, "learning_rate": 0.01},
        "callbacks": {"tensorboard": False}, "output_dir": str(tmp_path / "run")})
    trainer, history, (before, after), _ = fit(recipe)
    assert any(key.startswith("transformer_layer_0/") for key in changed(before, after))
    trainer.inference_model.save(tmp_path / "model.keras")
    assert trainer.spec.to_dict() == {"kind": "text", "sequence_length": 16}

    model = keras.models.load_model(tmp_path / "model.keras")
    tokens = trainer.backbone.preprocessor(np.array(["the movie was good", "awful very sad"]))
    assert tokens["token_ids"].shape == (2, 16)
    np.testing.assert_allclose(model.predict(tokens, verbose=0), trainer.model.predict(tokens, verbose=0),
                               rtol=1e-5)


# ------------------------------------------------------------------------------------------- resume
def test_resume_continues_an_interrupted_run_where_it_stopped(colour_folder, tmp_path):
    raw = {"backbone": TINY_CNN, "output_dir": str(tmp_path / "run"),
           "data": {"train": str(colour_folder), "validation_split": 0.25, "image_size": [32, 32], "batch_size": 8},
           "schedule": {"strategy": "fine_tuning", "lp_ft": False, "epochs": 4},
           "callbacks": {"tensorboard": False, "checkpoint": False}}
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw))
    killed = run_python("""
        import os, sys
        from tlkeras import recipes
        from tlkeras.recipes.resume import EpochHistory

        def die_at_epoch_2(self, epoch, logs=None):  # epochs 0 and 1 are done and backed up
            if epoch == 2:
                os._exit(17)

        EpochHistory.on_epoch_begin = die_at_epoch_2
        recipes.train(recipes.load_recipe(sys.argv[1]), verbose=0)
        """, recipe_file)
    assert killed.returncode == 17, killed.stderr[-3000:]
    run = tmp_path / "run" / "1"
    assert (tmp_path / "run" / "latest").resolve() == run.resolve()
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [0, 1]
    assert not (run / "model.keras").exists()

    result = train(load_recipe(recipe_file), resume=True, verbose=0)
    assert len(result.history["loss"]) == 2  # epochs 2 and 3 only
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [0, 1, 2, 3]
    assert json.loads((run / "state.json").read_text()) == {"stages_done": 1, "epochs_done": 4, "finished": True}
    assert result.run_dir == run
    assert (run / "model.keras").is_file() and (run / "metrics.json").is_file()


def test_run_directory_guards(colour_folder, tmp_path):
    with pytest.raises(TlkerasError, match="nothing to resume"):
        train(make_recipe(colour_folder, tmp_path / "new"), resume=True, verbose=0)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(TlkerasError, match="not tlkeras runs"):
        train(make_recipe(colour_folder, tmp_path / "mine"), verbose=0)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_each_training_writes_a_new_run_and_keeps_the_old_ones(colour_folder, tmp_path):
    recipe = make_recipe(colour_folder, tmp_path / "runs")
    first = train(recipe, verbose=0)
    first_metrics = (first.run_dir / "metrics.json").read_text()
    second = train(recipe, verbose=0)
    assert (first.run_dir.name, second.run_dir.name) == ("1", "2")
    assert (first.run_dir / "metrics.json").read_text() == first_metrics, "the first run was touched"
    assert (tmp_path / "runs" / "latest").resolve() == second.run_dir.resolve()
    with pytest.raises(TlkerasError, match="finished; drop --resume"):
        train(recipe, resume=True, verbose=0)


# ------------------------------------------------------------------------------------- distribution
def test_mirrored_strategy_trains_on_two_logical_cpus(colour_folder, tmp_path):
    result = run_python("""
        import json, sys
        from tlkeras.recipes.distribute import use_logical_cpus

        use_logical_cpus(2)  # before TensorFlow sets up its devices
        from training_helpers import changed, fit, make_recipe

        trainer, history, (before, after), _ = fit(make_recipe(
            sys.argv[1], sys.argv[2], "distribution=mirrored", "schedule.strategy=fine_tuning", "schedule.lp_ft=false"))
        print(json.dumps({"replicas": trainer.strategy.num_replicas_in_sync, "epochs": len(history["loss"]),
                          "changed": len(changed(before, after))}))
        """, colour_folder, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"replicas": 2, "epochs": 1, "changed": 4}


