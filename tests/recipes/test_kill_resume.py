"""Kill anywhere, resume exactly: a 2-stage fine-tuning run of the tiny CNN is SIGKILLed at 15 moments
spread over its life - mid-epoch, while backups, history.csv, the stage checkpoint, best.keras, model.keras,
metrics.json and state.json are being written, between a backup's weights and its record, with a committed
backup damaged on disk - and resumed with `--resume` after each. It must end with exactly one history row
per planned epoch and the metrics of an unkilled run with the same seed, within tolerance.

The write windows are hit deterministically by kill_driver.py, which wraps Keras's save functions and
os.replace in the training process to cut the file being written in half and SIGKILL itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_CNN

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tlkeras_env")]

DRIVER = Path(__file__).with_name("kill_driver.py")
HEAD_EPOCHS, FINE_TUNE_EPOCHS = 3, 5  # stage 0: epochs 0-2 (head only); stage 1: epochs 3-7 (all layers)
EPOCHS = HEAD_EPOCHS + FINE_TUNE_EPOCHS

# In the order the run meets them; each is hit by the process resumed after the one before.
MOMENTS = [
    {"event": "replace", "match": "config.yaml"},  # before state.json exists
    {"event": "batch", "epoch": 0, "batch": 1},  # mid-epoch, nothing backed up yet
    {"event": "save_weights", "match": "backup", "epoch": 1},  # the epoch-1 backup half-written
    {"event": "replace", "match": "history.csv", "epoch": 2},  # history.csv half-written
    {"event": "replace", "match": "epoch_00003.json"},  # backup weights written, its record not
    {"event": "save_weights", "match": "checkpoints/.stage_0."},  # the stage checkpoint half-written
    {"event": "replace", "match": "state.json", "contains": '"stages_done": 1'},  # checkpoint done, state not
    {"event": "batch", "epoch": 3, "batch": 0},  # first batch of the fine-tuning stage
    {"event": "save_weights", "match": "checkpoints/.best.", "min_epoch": 3},  # best weights half-written
    {"event": "replace", "match": "epoch_00006.weights.h5", "after": True},  # weights renamed, no record yet
    {"event": "replace", "match": "epoch_00007.json", "after": True,  # committed, then damaged on disk
     "damage": "backup/stage_1/epoch_00007.weights.h5"},
    {"event": "save_model", "match": "checkpoints/.best."},  # best.keras half-written at the end of stage 1
    {"event": "save_model", "match": "/.model."},  # the final model half-written
    {"event": "replace", "match": "metrics.json"},  # during evaluation
    {"event": "replace", "match": "state.json", "contains": '"finished": true'},  # the very last write
]


def _recipe(tmp_path, colour_folder, colour_test_folder, output_dir):
    recipe = {
        "backbone": TINY_CNN, "seed": 3, "output_dir": str(output_dir),
        "data": {"train": str(colour_folder), "test": str(colour_test_folder), "validation_split": 0.25,
                 "image_size": [32, 32], "batch_size": 8, "cross_validate_below": 0},
        "schedule": {"strategy": "fine_tuning", "lp_ft": False, "head_epochs": HEAD_EPOCHS, "epochs": FINE_TUNE_EPOCHS,
                     "learning_rate": 0.01},
        "callbacks": {"tensorboard": False, "checkpoint": True},
    }
    path = tmp_path / f"{Path(output_dir).name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _drive(recipe, *args, kill=None, report=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KILL_REPORT": str(report or os.devnull)}
    command = [sys.executable, str(DRIVER), str(recipe), *args]
    if kill is not None:
        command += ["--kill", json.dumps({k: v for k, v in kill.items() if k != "damage"})]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env,
                          cwd=Path(__file__).resolve().parents[1])


def _weights(path):
    import tlkeras.layers  # noqa: F401 - registers the layers model.keras uses

    return [np.asarray(w) for w in keras.models.load_model(path, compile=False).get_weights()]


def test_a_run_killed_at_fifteen_moments_resumes_to_the_unkilled_result(tmp_path, colour_folder,
                                                                         colour_test_folder):
    reference_recipe = _recipe(tmp_path, colour_folder, colour_test_folder, tmp_path / "reference")
    reference = _drive(reference_recipe)
    assert reference.returncode == 0, reference.stderr[-3000:]
    reference_run = tmp_path / "reference" / "1"

    recipe = _recipe(tmp_path, colour_folder, colour_test_folder, tmp_path / "killed")
    run = tmp_path / "killed" / "1"
    report = tmp_path / "kill_report.txt"
    for index, moment in enumerate(MOMENTS):
        report.unlink(missing_ok=True)
        killed = _drive(recipe, *(["--resume"] if index else []), kill=moment, report=report)
        assert killed.returncode == -9, f"moment {index} {moment} was never reached: {killed.stderr[-3000:]}"
        assert "Traceback" not in killed.stderr, killed.stderr[-3000:]
        print(f"killed {index}: {report.read_text()}")
        if "damage" in moment:
            damaged = run / moment["damage"]
            damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 3])
    finished = _drive(recipe, "--resume")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "Traceback" not in finished.stderr

    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == list(range(EPOCHS)), "each planned epoch once, in order"
    assert pd.read_csv(reference_run / "history.csv")["epoch"].tolist() == list(range(EPOCHS))
    log = (run / "train.log").read_text()
    assert "Traceback" not in log
    for note in ["does not match its recorded sha256", "history.csv: removed the rows of epoch",
                 "resuming after 6 finished epochs"]:
        assert note in log, note
    assert json.loads((run / "state.json").read_text()) == {"stages_done": 2, "epochs_done": EPOCHS,
                                                           "finished": True}
    assert not (run / "backup").exists()
    assert not [p for p in run.rglob(".*") if ".tmp" in p.name], "temporary files left behind"

    # A resumed epoch sees the same batches (epoch k's order depends only on the seed and k), the same
    # optimizer state and the same Dropout state as in the unkilled run: the result is the same up to float
    # rounding.
    metrics, expected = (json.loads((r / "metrics.json").read_text()) for r in (run, reference_run))
    deltas = {key: abs(metrics[key] - expected[key]) for key in ("accuracy", "f1_macro", "log_loss")
              if isinstance(expected.get(key), float)}
    final, expected_final = history.iloc[-1], pd.read_csv(reference_run / "history.csv").iloc[-1]
    deltas["val_loss"] = abs(final["val_loss"] - expected_final["val_loss"])
    weights = max(float(np.abs(a - b).max()) for a, b in zip(_weights(run / "model.keras"),
                                                              _weights(reference_run / "model.keras"), strict=True))
    print(f"deltas against the unkilled run: {deltas}; largest weight difference {weights:.4g}")
    assert deltas["accuracy"] == 0 and deltas["f1_macro"] == 0, deltas
    assert deltas["val_loss"] < 1e-5 and deltas["log_loss"] < 1e-5, deltas
    assert weights < 1e-4, weights
