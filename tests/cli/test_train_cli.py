"""`tlkeras train | evaluate | lr-find` as a user runs them: a recipe file, the CLI, a run directory."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import TINY_CNN

from tlkeras.recipes.lr_find import suggest_learning_rate

pytestmark = pytest.mark.usefixtures("tlkeras_env")


def tlkeras(*args, cwd):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "tlkeras", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def recipe_file(tmp_path, colour_folder, colour_test_folder):
    recipe = {
        "backbone": TINY_CNN,
        "data": {"train": os.path.relpath(colour_folder, tmp_path), "test": str(colour_test_folder),
                 "validation_split": 0.25, "batch_size": 8},
        "schedule": {"strategy": "feature_extraction", "epochs": 2, "learning_rate": 0.01},
        "callbacks": {"tensorboard": False},
        "output_dir": "runs/colours",
        "export": {"base_dir": "models", "name": "colours"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_train_evaluate_export_from_a_recipe_file(tmp_path, recipe_file):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    trained = tlkeras("train", str(recipe_file), "--set", "schedule.epochs=3", "--set", "head.hidden_units=[8]",
                      "--verbose", "0", cwd=elsewhere)
    assert trained.returncode == 0, trained.stderr[-2000:]
    run_dir = tmp_path / "runs" / "colours" / "1"  # relative to the recipe file, not the working directory
    printed = json.loads(trained.stdout.splitlines()[0])
    assert printed["accuracy"] == round(json.loads((run_dir / "metrics.json").read_text())["accuracy"], 4)
    assert len(open(run_dir / "history.csv").read().splitlines()) == 1 + 3
    assert (tmp_path / "models" / "colours" / "1" / "saved_model.pb").exists()

    evaluated = tlkeras("evaluate", str(run_dir.parent), cwd=elsewhere)  # the output_dir: its latest run
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    metrics = json.loads((run_dir / "evaluation" / "1" / "metrics.json").read_text())
    assert metrics["accuracy"] == json.loads((run_dir / "metrics.json").read_text())["accuracy"]
    assert (run_dir / "evaluation" / "1" / "report.html").exists()


def test_lr_find_saves_a_plot_and_suggests_a_rate(tmp_path, recipe_file):
    found = tlkeras("lr-find", str(recipe_file), "--steps", "30", cwd=tmp_path)
    assert found.returncode == 0, found.stderr[-2000:]
    out = tmp_path / "runs" / "colours" / "lr_find" / "1"
    result = json.loads((out / "lr_find.json").read_text())
    at = result["learning_rates"].index(result["suggested_learning_rate"])
    assert min(result["losses"][at:]) < result["losses"][0], "the loss never fell from the suggested rate on"
    assert len(result["losses"]) >= 10 and (out / "lr_find.png").stat().st_size > 0
    assert not (tmp_path / "runs" / "colours" / "1").exists(), "lr-find must not create or touch a run"
    assert "suggested learning rate" in found.stdout


def test_suggest_learning_rate_finds_the_steepest_descent():
    rates = np.geomspace(1e-5, 1, 60)
    # Loss flat, then falling fastest around 1e-3, then diverging.
    losses = 2 - 1.5 / (1 + np.exp(-(np.log10(rates) + 3) * 4)) + np.where(rates > 0.1, (rates - 0.1) * 50, 0)
    assert 3e-4 < suggest_learning_rate(rates, losses, smoothing=0.0) < 3e-3


@pytest.mark.parametrize("override, message", [
    ("schedule.strategy=fine_tunning", "must be one of"),
    ("schedul.epochs=3", "did you mean 'schedule'"),
    ("schedule.epochs=three", "'schedule.epochs' must be int"),
    ("backbone=efficientnet_lite0", "did you mean 'efficientnet_lite0_imagenet'"),
])
def test_bad_recipes_fail_in_one_line_with_exit_code_2(tmp_path, recipe_file, override, message):
    result = tlkeras("train", str(recipe_file), "--set", override, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr


def test_resume_without_a_run_names_the_fix(tmp_path, recipe_file):
    result = tlkeras("train", str(recipe_file), "--resume", cwd=tmp_path)
    assert result.returncode == 2 and "drop --resume" in result.stderr
