"""The callbacks a recipe asks for, plus one of tlkeras's own."""

from __future__ import annotations

import json
from pathlib import Path

import keras

from tlkeras import files
from tlkeras.recipes.config import CallbacksConfig
from tlkeras.run_dir import RunDir


class BestModelCheckpoint(keras.callbacks.Callback):
    """Keeps the best `model_to_save` by `monitor` as a `.keras` file.

    Unlike `keras.callbacks.ModelCheckpoint`, the model saved need not be the one being fitted: when
    the head trains on cached features, the checkpoint is still the whole backbone + head model.
    Each improvement saves only the weights of the model being fitted (the head alone, on cached features:
    the frozen backbone's 18 MB would cost more than the epoch); the `.keras` file is written once, when
    `fit` ends.

    Args:
        model_to_save: keras.Model. Shares its head layers with the model being fitted.
        path: str. A `.keras` file.
        monitor: str. A logged metric. Defaults to "val_loss".
        mode: str. "min" or "max". Defaults to "min".
        before_save: callable or None. Runs on the best weights just before the `.keras` file is written
            (the trainer re-estimates BN statistics there after training from scratch). Defaults to None.

    Example:
    >>> head.fit(features, y, validation_split=0.2,
    ...          callbacks=[BestModelCheckpoint(full_model, "best.keras")])
    """

    def __init__(self, model_to_save, path, monitor="val_loss", mode="min", before_save=None):
        super().__init__()
        self.before_save = before_save
        self.model_to_save = model_to_save
        self.path = Path(path)
        self.monitor = monitor
        self.mode = mode
        self.best = None

    @property
    def _record(self) -> Path:
        return self.path.with_suffix(".json")

    @property
    def _weights(self) -> Path:
        return self.path.with_suffix(".weights.h5")

    def on_train_begin(self, logs=None):
        # A run fits once per stage, and may be resumed: start from the best value saved so far, so a
        # later stage only replaces the checkpoint with a better model.
        if self.best is None and self._record.exists():
            try:
                self.best = json.loads(self._record.read_text()).get(self.monitor)
            except (OSError, json.JSONDecodeError, AttributeError):
                self.best = None  # a damaged record: the next epoch sets it again
        # A kill between an improvement and the end of fit left best weights the .keras file lacks.
        if self._weights.is_file() and (not self.path.is_file()
                                        or self._weights.stat().st_mtime_ns > self.path.stat().st_mtime_ns):
            self._improved = True

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
            self.best = float(value)
            with files.atomic_path(self._weights) as tmp:
                self.model.save_weights(tmp)
            files.write_json(self._record, {self.monitor: self.best, "epoch": int(epoch)})
            self._improved = True

    def on_train_end(self, logs=None):
        if not getattr(self, "_improved", False):
            return
        current = self.model.get_weights()
        self.model.load_weights(self._weights)
        if self.before_save is not None:
            self.before_save()
        with files.atomic_path(self.path) as tmp:
            self.model_to_save.save(tmp)
        self.model.set_weights(current)
        self._improved = False


def build_callbacks(config: CallbacksConfig, run: RunDir, stage_index: int, full_model, monitor: str,
                    before_best_save=None):
    """The Keras callbacks for one stage of a run.

    Args:
        config: CallbacksConfig. What the recipe enabled.
        run: RunDir. The run directory.
        stage_index: int. Each stage keeps its own backup folder.
        full_model: keras.Model. The backbone + head model, for the best checkpoint.
        monitor: str. "val_loss", or "loss" when there is no validation data.
        before_best_save: callable or None. `BestModelCheckpoint`'s `before_save`.
    """
    from tlkeras.recipes.resume import EpochBackup, EpochHistory

    # History first: at each epoch's end its row is written before the backup that commits the epoch.
    history = EpochHistory(run.history_csv)
    callbacks = [history]
    if config.backup:
        callbacks.append(EpochBackup(run.backup_dir(stage_index), history))
    if config.checkpoint:
        callbacks.append(BestModelCheckpoint(full_model, run.best_model, monitor, before_save=before_best_save))
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(run.tensorboard_dir), write_graph=False))
    if config.early_stopping:
        es = config.early_stopping
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=_available(es.monitor, monitor), patience=es.patience,
            restore_best_weights=es.restore_best_weights))
    if config.reduce_on_plateau:
        rp = config.reduce_on_plateau
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=_available(rp.monitor, monitor), factor=rp.factor, patience=rp.patience, min_lr=rp.min_lr))
    return callbacks


def _available(wanted: str, monitor: str) -> str:
    # Without validation data there is no val_* metric; fall back to its training twin.
    if wanted.startswith("val_") and not monitor.startswith("val_"):
        return wanted[len("val_"):]
    return wanted
