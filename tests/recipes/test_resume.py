"""tlkeras.recipes.resume on a two-layer model: backups checked before they are trusted, history.csv cut
back to the epochs restored, stage checkpoints that fall back, resumes that refuse a changed recipe.
(The whole-run kill test is test_kill_resume.py.)"""

from __future__ import annotations

import json
import logging

import keras
import numpy as np
import pytest

from tlkeras.errors import TlkerasError
from tlkeras.recipes.resume import EpochBackup, EpochHistory, open_run, restore_stages
from tlkeras.run_dir import RunDir, read_history

X = np.linspace(-1, 1, 32, dtype="float32").reshape(16, 2)
Y = (X[:, :1] * 3 - X[:, 1:]).astype("float32")


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4), keras.layers.Dropout(0.3),
                              keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.05), "mse")
    return model


def _fit(model, directory, epochs, initial_epoch=0):
    history = EpochHistory(directory / "history.csv")
    model.fit(X, Y, batch_size=4, epochs=epochs, initial_epoch=initial_epoch, verbose=0, shuffle=False,
              callbacks=[history, EpochBackup(directory / "backup", history)])
    return history


def test_a_resumed_fit_continues_from_the_newest_good_backup(tmp_path, caplog):
    model = _model()
    _fit(model, tmp_path, epochs=3)
    assert [r["epoch"] for r in read_history(tmp_path / "history.csv")] == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == [
        "epoch_00002.json", "epoch_00002.weights.h5", "epoch_00003.json", "epoch_00003.weights.h5"]
    assert model._initial_epoch is None, "a later fit of the same model must start where it is told"

    # A damaged newest backup (as a disk error would leave it): the one before is used, and said so.
    newest = tmp_path / "backup" / "epoch_00003.weights.h5"
    newest.write_bytes(newest.read_bytes()[:100])
    resumed = _model(seed=1)
    with caplog.at_level(logging.INFO, logger="tlkeras"):
        _fit(resumed, tmp_path, epochs=4)
    assert "epoch_00003.weights.h5 does not match its recorded sha256" in caplog.text
    assert "resuming after 2 finished epochs" in caplog.text
    assert "removed the rows of epoch 2" in caplog.text
    rows = read_history(tmp_path / "history.csv")
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3], "epoch 2 trained again, logged once"


def test_a_resume_restores_optimizer_and_dropout_state_exactly(tmp_path):
    straight = _model()
    straight.fit(X, Y, batch_size=4, epochs=4, verbose=0, shuffle=False)
    killed = _model()
    _fit(killed, tmp_path, epochs=2)
    resumed = _model(seed=7)  # another initialisation: everything must come from the backup
    _fit(resumed, tmp_path, epochs=4)
    for a, b in zip(straight.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(resumed.optimizer.iterations.numpy()) == 16


def test_history_rows_lost_from_the_file_come_back_from_the_backup(tmp_path, caplog):
    _fit(_model(), tmp_path, epochs=3)
    (tmp_path / "history.csv").write_text("epoch,loss\n0,1.0\n")  # rows 1 and 2 gone
    with caplog.at_level(logging.INFO, logger="tlkeras"):
        _fit(_model(), tmp_path, epochs=3)
    assert "history.csv lacked the rows of epochs 1-2; restored them from the backup" in caplog.text
    assert [r["epoch"] for r in read_history(tmp_path / "history.csv")] == [0, 1, 2]


def test_a_damaged_stage_checkpoint_falls_back_to_the_stage_before(tmp_path, caplog):
    run = RunDir.create(tmp_path / "runs")
    model = _model()
    run.checkpoints_dir.mkdir()
    for stage in (0, 1):
        model.save_weights(run.stage_checkpoint(stage))
    run.write_state({"stages_done": 2, "epochs_done": 5, "finished": False})
    run.stage_checkpoint(1).write_bytes(b"\x89HDF\r\n\x1a\n cut short")
    with caplog.at_level(logging.INFO, logger="tlkeras"):
        state = restore_stages(_model(seed=3), run, [2, 3, 4])
    assert state["stages_done"] == 1 and state["epochs_done"] == 2
    assert json.loads(run.state_file.read_text())["stages_done"] == 1
    assert "the checkpoint of stage 1 (stage_1.weights.h5) is unusable" in caplog.text
    run.stage_checkpoint(0).unlink()
    assert restore_stages(_model(), run, [2, 3, 4])["stages_done"] == 0
    assert "resuming from the start of the run (epoch 0)" in caplog.text


def test_resume_refuses_a_changed_recipe_and_accepts_a_run_killed_before_its_state(tmp_path, colour_folder):
    from training_helpers import make_recipe

    recipe = make_recipe(colour_folder, tmp_path / "runs")
    run = RunDir.create(recipe.output_dir)
    assert open_run(recipe, True, "abc").path == run.path, "a run killed before state.json resumes"
    run.write_start(recipe.to_dict(), _spec(), ["a", "b"], "abc", [])
    (run.path / ".state.json.x1y2.tmp").write_text("{")
    assert open_run(recipe, True, "abc").path == run.path
    assert not (run.path / ".state.json.x1y2.tmp").exists(), "a kill's temporary file is cleared"
    changed = make_recipe(colour_folder, tmp_path / "runs", "schedule.epochs=3")
    with pytest.raises(TlkerasError, match=r"recipe changed .*\(schedule.epochs\).*drop --resume"):
        open_run(changed, True, "abc")
    with pytest.raises(TlkerasError, match="training data changed"):
        open_run(recipe, True, "another")
    assert open_run(make_recipe(colour_folder, tmp_path / "runs", "callbacks.progress=false"), True, "abc")


def _spec():
    from tlkeras.inputs import InputSpec

    return InputSpec("image", image_size=(32, 32))
