"""Surviving a kill anywhere: epoch backups written atomically and checked before they are trusted,
history.csv kept at one row per epoch, and fall-backs that say what they did.

A run killed at any moment resumes (`tlkeras train RECIPE --resume`) from the newest state that checks out,
in this order: the backup of the last finished epoch, the backup of the epoch before it, the checkpoint of
the last finished stage, an earlier stage's checkpoint, the start of the run. Each fall-back is one line in
train.log, never a traceback. A backup holds the model's weights, the optimizer's state (its step count,
so learning-rate schedules continue) and the random-number state of layers such as Dropout, so a resumed
epoch trains as the killed one would have, up to the order of the data (tf.data reshuffles each epoch from
where its iterator starts).
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

from tlkeras import files
from tlkeras.errors import TlkerasError
from tlkeras.run_dir import RunDir, read_history, write_history

log = logging.getLogger("tlkeras")

# Recipe keys that change how a run looks, not what it computes: resuming with another value is fine.
COSMETIC_KEYS = frozenset({"callbacks.progress"})


class EpochHistory(keras.callbacks.Callback):
    """history.csv with exactly one row per epoch: rewritten whole and atomically after each epoch, and
    cut back to the epochs actually restored when a run resumes. Replaces Keras's `CSVLogger`, whose
    appends log an epoch twice when a resumed run trains it again, and leave half a row when killed.

    Args:
        path: str or Path. The history.csv file; its rows from earlier stages are kept.

    Example:
    >>> history = EpochHistory("runs/a/1/history.csv")
    >>> model.fit(data, epochs=3, callbacks=[history, EpochBackup("runs/a/1/backup/stage_0", history)])
    """

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)
        self.rows: list[dict] = []

    def on_train_begin(self, logs=None):
        self.rows = read_history(self.path)

    def on_epoch_begin(self, epoch, logs=None):
        self.keep_before(epoch)

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": int(epoch), **{key: _plain(value) for key, value in (logs or {}).items()}}
        self.rows = [r for r in self.rows if r["epoch"] < epoch] + [row]
        write_history(self.path, self.rows)

    def keep_before(self, epoch: int, saved_rows=None) -> None:
        """Drops the rows of `epoch` and later (they are trained again); fills in earlier rows the file lost
        from `saved_rows`, the copy a backup keeps."""
        kept = [r for r in self.rows if r["epoch"] < epoch]
        dropped = sorted(r["epoch"] for r in self.rows if r["epoch"] >= epoch)
        have = {r["epoch"] for r in kept}
        lost = [r for r in (saved_rows or []) if r.get("epoch", epoch) < epoch and r["epoch"] not in have]
        if not dropped and not lost:
            return
        if dropped:
            log.info("history.csv: removed the rows of %s, which train again after the resume", _span(dropped))
        if lost:
            log.warning("history.csv lacked the rows of %s; restored them from the backup",
                        _span([r["epoch"] for r in lost]))
        self.rows = sorted(kept + lost, key=lambda r: r["epoch"])
        write_history(self.path, self.rows)


class EpochBackup(keras.callbacks.Callback):
    """Keras's `BackupAndRestore`, made safe against kills: after every epoch it writes the weights (with
    the optimizer state) atomically, then a small record naming them with their sha256, the layers'
    random-number state and the history so far. The record is the commit: a kill before it leaves the
    previous backup in force. On `fit`, the newest backup whose weights match their record is loaded and
    training continues after its epoch; a damaged one is reported and the one before is tried.

    Args:
        directory: str or Path. The stage's backup folder.
        history: EpochHistory or None. Its rows go into each backup and come back on restore. Defaults
            to None.
        keep: int. Backups kept; the older ones are deleted. Defaults to 2.

    Example:
    >>> model.fit(data, epochs=10, callbacks=[EpochBackup("runs/a/1/backup/stage_0")])
    """

    def __init__(self, directory, history: EpochHistory | None = None, keep: int = 2):
        super().__init__()
        self.directory = Path(directory)
        self.history = history
        self.keep = keep
        self.restored = False  # set by `restore_epoch`, which restores before fit to pick fit's first epoch

    def on_train_begin(self, logs=None):
        if self.restored:
            return
        epoch = self.restore()
        if epoch is not None:
            # How Keras's own BackupAndRestore moves fit's first epoch: fit reads it after on_train_begin.
            self.model._initial_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self.save(epoch + 1)

    def on_train_end(self, logs=None):
        # Keras leaves it on the model, where the next stage's fit would start from it.
        self.model._initial_epoch = None

    # ------------------------------------------------------------------------------------------- files
    def _record(self, epoch: int) -> Path:
        return self.directory / f"epoch_{epoch:05d}.json"

    def _weights(self, epoch: int) -> Path:
        return self.directory / f"epoch_{epoch:05d}.weights.h5"

    def records(self) -> list[int]:
        """list of int: the epochs with a backup record, newest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.glob("epoch_*.json"):
            try:
                found.append(int(path.stem.removeprefix("epoch_")))
            except ValueError:
                continue
        return sorted(found, reverse=True)

    def save(self, epoch: int) -> None:
        """Backs up the model as it is after `epoch` epochs."""
        weights = self._weights(epoch)
        with files.atomic_path(weights) as tmp:
            self.model.save_weights(tmp)
        record = {"epoch": epoch, "weights": weights.name, "sha256": files.sha256_file(weights),
                  "random_state": _random_state(self.model),
                  "history": list(self.history.rows) if self.history is not None else None}
        files.write_json(self._record(epoch), record)
        for old in self.records()[self.keep:]:
            self._record(old).unlink(missing_ok=True)  # the record first: weights without one are never used
            self._weights(old).unlink(missing_ok=True)
        kept = {self._weights(e).name for e in self.records()}
        for orphan in self.directory.glob("epoch_*.weights.h5"):
            if orphan.name not in kept:
                orphan.unlink(missing_ok=True)

    def restore(self) -> int | None:
        """int or None: loads the newest usable backup into the model and returns its epoch count; None
        when there is none (the stage starts from its beginning)."""
        epochs = self.records()
        for epoch in epochs:
            record, problem = self._check(epoch)
            if problem is None:
                snapshot = _snapshot(self.model)
                try:
                    optimizer = getattr(self.model, "optimizer", None)
                    if optimizer is not None and not optimizer.built:
                        optimizer.build(self.model.trainable_variables)  # so its saved state loads too
                    self.model.load_weights(self._weights(epoch))
                    _set_random_state(self.model, record.get("random_state") or [])
                except Exception as err:  # noqa: BLE001 - any failure means: try the backup before
                    _restore_snapshot(self.model, snapshot)
                    problem = f"it does not load: {_first_line(err)}"
            if problem is not None:
                log.warning("backup %s/%s is unusable (%s); trying an older state", self.directory.name,
                            self._weights(epoch).name, problem)
                continue
            log.info("resuming after %d finished epochs, from backup %s/%s", epoch, self.directory.name,
                     self._weights(epoch).name)
            if self.history is not None:
                self.history.keep_before(epoch, record.get("history"))
            return epoch
        if epochs:
            log.warning("no usable backup in %s: the stage starts again from its beginning", self.directory.name)
        return None

    def _check(self, epoch: int) -> tuple[dict, str | None]:
        try:
            record = json.loads(self._record(epoch).read_text())
            name, digest = record["weights"], record["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            return {}, f"its record is damaged: {_first_line(err)}"
        weights = self.directory / name
        if not weights.is_file():
            return record, f"{name} is missing"
        if files.sha256_file(weights) != digest:
            return record, f"{name} does not match its recorded sha256 (written only in part?)"
        return record, None


def restore_epoch(model, callbacks: list, default: int) -> int:
    """int: the epoch a stage's fit starts at: after the newest good backup among `callbacks` (loaded into
    `model` now, so the data pipeline can start at that epoch), else `default`, the stage's first epoch.

    Example:
    >>> first = restore_epoch(model, callbacks, stage_start)
    >>> model.fit(epochs_from(first), initial_epoch=first, epochs=stage_end, callbacks=callbacks)
    """
    for callback in callbacks:
        if isinstance(callback, EpochBackup):
            callback.set_model(model)
            if callback.history is not None:
                callback.history.set_model(model)
                callback.history.on_train_begin()  # its rows, for the backup to cut back or repair
            epoch = callback.restore()
            callback.restored = True
            if epoch is not None:
                return max(epoch, default)
    return default


def restore_stages(model, run: RunDir | None, stage_epochs: list[int]) -> dict:
    """dict: the run's state (`stages_done`, `epochs_done`), after loading the checkpoint of its last
    finished stage into `model`. A checkpoint that does not open falls back to the stage before, or to
    the start of the run, with a line in train.log; the state is rewritten to match.

    Args:
        model: keras.Model. The model the stage checkpoints were saved from.
        run: RunDir or None. None (a run kept in memory) starts fresh.
        stage_epochs: list of int. The planned epochs of each stage.
    """
    if run is None:
        return {"stages_done": 0, "epochs_done": 0, "finished": False}
    state = run.state()
    recorded = done = min(max(int(state.get("stages_done") or 0), 0), len(stage_epochs))
    initial = _snapshot(model) if done else None
    while done > 0:
        path = run.stage_checkpoint(done - 1)
        problem = weights_file_problem(path)
        if problem is None:
            try:
                model.load_weights(path)
                _continue_random_state(model, run.backup_dir(done - 1), sum(stage_epochs[:done]))
                break
            except Exception as err:  # noqa: BLE001 - any failure means: fall back a stage
                _restore_snapshot(model, initial)
                problem = f"it does not load: {_first_line(err)}"
        log.warning("the checkpoint of stage %d (%s) is unusable (%s)", done - 1, path.name, problem)
        done -= 1
    if done != recorded:
        epochs = sum(stage_epochs[:done])
        log.warning("resuming from %s (epoch %d)", f"the end of stage {done - 1}" if done else "the start of the run",
                    epochs)
        state = {"stages_done": done, "epochs_done": epochs, "finished": False}
        run.write_state(state)
        run.remove_backups(range(done + 1, len(stage_epochs)))  # they continued from the lost checkpoint
    # Finished stages never train again; the last one's final backup still gives the next its Dropout state.
    run.remove_backups(range(done - 1))
    return {**state, "stages_done": done, "epochs_done": int(state.get("epochs_done") or 0)}


def _continue_random_state(model, backup_dir: Path, epoch: int) -> None:
    """Gives `model` the layers' random state of the backup taken at `epoch` (a finished stage's last), so a
    stage started again from its checkpoint draws the Dropout masks the uninterrupted run drew."""
    backup = EpochBackup(backup_dir)
    if epoch not in backup.records():
        return
    record, problem = backup._check(epoch)
    if problem is None and record.get("random_state") is not None:
        _set_random_state(model, record["random_state"])


def weights_file_problem(path: Path) -> str | None:
    """str or None: why a Keras `.weights.h5` file cannot be trusted (missing, not HDF5, cut short), or
    None when every array in it reads back."""
    import h5py

    if not Path(path).is_file():
        return "missing"
    try:
        with h5py.File(path, "r") as handle:
            handle.visititems(lambda _, node: node[()] if isinstance(node, h5py.Dataset) else None)
    except Exception as err:  # noqa: BLE001 - h5py raises OSError, KeyError, ValueError, RuntimeError
        return f"not a readable HDF5 file: {_first_line(err)}"
    return None


def open_run(recipe, resume: bool, data_fingerprint: str) -> RunDir:
    """RunDir: where a run writes. A new numbered run, or with `resume` the latest unfinished one, which
    must have been started by the same recipe on the same data. In a multi-worker cluster only the chief
    writes the run directory; the other workers write a temporary one (the Keras multi-worker pattern: each
    worker runs the same callbacks, one keeps the files).

    Raises:
        TlkerasError: nothing to resume, the recipe or the data changed, or `resume` in a multi-worker run.
    """
    from tlkeras.recipes import distribute

    if resume and recipe.distribution == "multi_worker":
        raise TlkerasError("--resume does not support distribution: multi_worker (each worker would need the "
                           "chief's backups): drop --resume to start a new run")
    if not distribute.is_chief(recipe.distribution):
        scratch = tempfile.mkdtemp(prefix="tlkeras-worker-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        return RunDir.create(scratch)
    if not resume:
        return RunDir.create(recipe.output_dir)
    run = RunDir.for_resume(recipe.output_dir)
    if run.config_file.is_file():
        changed = _changed_keys(run.recipe_config(), recipe.to_dict())
        if changed:
            key, old, new = changed[0]
            raise TlkerasError(f"the recipe changed since {run.path} started ({', '.join(k for k, _, _ in changed)}): "
                               f"undo the change to resume, or drop --resume to start a new run. "
                               f"Received: {key}={new!r} (the run has {old!r})")
    previous = run.data_fingerprint()
    if previous and previous != data_fingerprint:
        raise TlkerasError(f"the training data changed since {run.path} started (files added, removed or modified): "
                           "restore it to resume, or drop --resume to start a new run")
    return run


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    changed = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_keys(a, b, f"{name}.")
        elif a != b and name not in COSMETIC_KEYS:
            changed.append((name, a, b))
    return changed


# ----------------------------------------------------------------------------------------- helpers
def _all_variables(model) -> list:
    variables = list(model.variables)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "built", False):
        variables += list(optimizer.variables)
    return variables


def _snapshot(model) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v)) for v in _all_variables(model)]


def _restore_snapshot(model, snapshot) -> None:
    if snapshot is None:
        return
    for variable, value in zip(_all_variables(model), snapshot, strict=False):
        variable.assign(value)


def _random_variables(model) -> list:
    # Layers' seed generators (Dropout, random augmentation) are variables, but not weights: save_weights
    # leaves them out, and a resumed run would replay the first epoch's dropout masks. Their names carry a
    # process-wide counter, so they are matched by position, which the architecture fixes.
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def _random_state(model) -> list[list]:
    return [keras.ops.convert_to_numpy(v).tolist() for v in _random_variables(model)]


def _set_random_state(model, state: list) -> None:
    variables = _random_variables(model)
    if len(variables) != len(state):
        log.warning("the backup's random state does not fit the model (%d values for %d generators): Dropout "
                    "masks continue from a fresh state", len(state), len(variables))
        return
    for variable, value in zip(variables, state, strict=True):
        variable.assign(np.asarray(value, dtype=keras.backend.standardize_dtype(variable.dtype)))


def _plain(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _span(epochs: list[int]) -> str:
    if len(epochs) == 1:
        return f"epoch {epochs[0]}"
    if epochs == list(range(epochs[0], epochs[-1] + 1)):
        return f"epochs {epochs[0]}-{epochs[-1]}"
    return f"epochs {', '.join(map(str, epochs))}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


__all__ = ["EpochBackup", "EpochHistory", "open_run", "restore_epoch", "restore_stages", "weights_file_problem"]
