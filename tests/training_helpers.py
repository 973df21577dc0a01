"""Helpers shared by the recipe tests: small recipes on the tiny test backbones, weight snapshots."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
from conftest import TINY_CNN

from tlkeras.backbones import flat_layers
from tlkeras.recipes import Trainer, parse_recipe
from tlkeras.run_dir import RunDir

MOBILENET = "mobilenet_v3_small_imagenet"  # the shipped keras.applications entry; used with random weights
CONVS = {"stem_conv", "block1_conv", "block2_conv", "top_conv"}
BATCHNORMS = {"stem_bn", "block1_bn", "block2_bn", "top_bn"}
QUIET_TF = {"TF_CPP_MIN_LOG_LEVEL": "3"}


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
    trainer = Trainer.from_recipe(recipe, run=RunDir.create(recipe.output_dir), verbose=0)
    backbone_before, head_before = weights_of(trainer.extractor), weights_of(trainer.head)
    history = trainer.fit()
    return trainer, history, (backbone_before, weights_of(trainer.extractor)), (head_before, weights_of(trainer.head))


def run_python(script: str, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **QUIET_TF},
                          cwd=os.path.dirname(__file__))
