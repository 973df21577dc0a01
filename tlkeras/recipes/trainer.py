"""`train(recipe)`: backbone + head + freezing schedule + augmentation + callbacks -> a run directory.

`Trainer.from_recipe` reads the data and builds every model; the `Trainer` it returns is complete, so any
of its methods can be called (lr_find calls `training_setup`). What a run writes, and where, is
`tlkeras.run_dir`'s business.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlkeras import data as data_lib
from tlkeras import inputs, registry, tasks
from tlkeras.evaluation import evaluate_predictions
from tlkeras.recipes.config import Recipe
from tlkeras.run_dir import RunDir

log = logging.getLogger("tlkeras")


@dataclass
class Splits:
    train: data_lib.Examples
    validation: data_lib.Examples | None
    test: data_lib.Examples | None
    skipped: list = field(default_factory=list)  # (input, reason) of unreadable inputs skipped
    notes: list = field(default_factory=list)  # what reading skipped or converted


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    history: dict
    seconds: float


def read_split(recipe: Recipe, source: str, kind: inputs.InputKind, labels=None) -> data_lib.Examples:
    """Examples: one data source of a recipe, read with its columns; `labels` maps ids as in training."""
    cfg = recipe.data
    return data_lib.load_examples(source, recipe.task, kind=kind.name, path_column=cfg.path_column,
                                  text_column=cfg.text_column, label_column=cfg.label_column,
                                  label_separator=cfg.label_separator, labels=labels)


def load_splits(recipe: Recipe, kind: inputs.InputKind) -> Splits:
    """Reads train / validation / test examples (validation and test with the training label map), checks
    every input, and splits off validation data when the recipe asks."""
    cfg = recipe.data
    train = read_split(recipe, cfg.train, kind)
    tasks.get(recipe.task).check_training_data(train.labels, train.targets, train.source)
    validation = read_split(recipe, cfg.validation, kind, train.labels) if cfg.validation else None
    test = read_split(recipe, cfg.test, kind, train.labels) if cfg.test else None
    skipped, notes = [], []
    train, validation, test = (_checked(s, kind, cfg.skip_corrupt, skipped, notes) for s in (train, validation, test))
    if validation is None and cfg.validation_split:
        train, validation = data_lib.split_examples(train, cfg.validation_split, recipe.seed)
    return Splits(train, validation, test, skipped, notes)


def _checked(examples, kind, skip: bool, skipped: list, notes: list):
    if examples is None:
        return None
    notes += examples.notes
    ok, bad = kind.check(examples.inputs, skip)
    if bad:
        skipped += bad
        notes.append(f"skipped {len(bad)} unreadable {kind.name} inputs from {examples.source} (listed in skipped.txt)")
        return examples.select(ok)
    return examples


class Trainer:
    """Runs one recipe. Most users call `train(recipe)`; `Trainer.from_recipe` builds one.

    Args:
        recipe: Recipe. The validated recipe.
        splits: Splits. The data.
        backbone: tlkeras.backbones.Backbone. The built backbone.
        strategy: tf.distribute.Strategy. Where the models live.
        run: RunDir or None. Where the run writes; None for runs kept in memory (lr_find).
        verbose: int. Keras progress: 1 progress bars, 2 one line per epoch, 0 silent.
    """

    def __init__(self, recipe: Recipe, splits: Splits, backbone, strategy, run: RunDir | None = None,
                 verbose: int = 1):
        import keras

        from tlkeras.recipes.heads import build_head

        self.recipe, self.splits, self.strategy, self.run = recipe, splits, strategy, run
        self.verbose = verbose if recipe.callbacks.progress else 0  # progress: false silences the bars
        self.backbone = backbone
        self.entry, self.kind, self.spec = backbone.entry, backbone.kind, backbone.spec
        self.task = tasks.get(recipe.task)
        self.labels = splits.train.labels
        self.n_outputs = self.task.n_outputs(self.labels, splits.train.targets)
        augment = recipe.augment
        self.mixes_labels = self.task.name == "classification" and bool(augment.mixup or augment.cutmix)
        self.one_hot = self.mixes_labels or (self.task.name == "classification" and recipe.schedule.label_smoothing > 0)
        self.augment = self.kind.augmenter(augment, recipe.seed, self.mixes_labels)
        with strategy.scope():
            head_cfg = recipe.head
            self.head = build_head(backbone.feature_dim, recipe.task, self.n_outputs, head_cfg.hidden_units,
                                   head_cfg.dropout, head_cfg.activation)
            extractor = backbone.extractor
            self.model = keras.Model(extractor.inputs, self.head(extractor.output),
                                     name=f"{self.entry.name}_{self.task.name}")
            # The same layers, never compiled: model.keras and best.keras then load with only tlkeras.layers
            # registered, not the training optimizer and schedule.
            self.inference_model = keras.Model(self.model.input, self.model.output, name=self.model.name)
            # Likewise the head trains on cached features through its own twin, so the head nested in the
            # saved models is never compiled.
            self.head_on_features = keras.Model(self.head.input, self.head.output, name="head_on_features")

    @classmethod
    def from_recipe(cls, recipe: Recipe, run: RunDir | None = None, verbose: int = 1) -> Trainer:
        """Trainer: reads the recipe's data and builds backbone, head and models."""
        import keras

        from tlkeras import backbones
        from tlkeras.recipes.distribute import make_strategy

        keras.utils.set_random_seed(recipe.seed)
        entry = registry.get(recipe.backbone)
        backbones.check_supported(entry)
        splits = load_splits(recipe, inputs.for_entry(entry))
        strategy = make_strategy(recipe.distribution)
        with strategy.scope():
            backbone = backbones.build(recipe.backbone, weights=recipe.backbone_weights == "pretrained",
                                       data=recipe.data)
        trainer = cls(recipe, splits, backbone, strategy, run, verbose)
        if any(stage.unfreeze for stage in trainer.stages()):
            backbones.check_supported(entry, "fine_tuning")
        return trainer

    @property
    def extractor(self):
        return self.backbone.extractor

    # -------------------------------------------------------------------------------------- datasets
    def dataset(self, examples, training: bool, targets: bool = True, batch_size: int | None = None,
                first_epoch: int | None = None):
        """A tf.data pipeline of the extractor's inputs (and targets) for `examples`; with `first_epoch`, the
        endless training epochs from that one on (see `InputKind.dataset`)."""
        cfg = self.recipe.data
        y = self.targets(examples) if targets else None
        return self.kind.dataset(
            examples.inputs, y, self.spec, batch_size or (cfg.batch_size if training else cfg.inference_batch_size),
            preprocessor=self.backbone.preprocessor, shuffle=training, seed=self.recipe.seed,
            augment=self.augment if training and targets else None, first_epoch=first_epoch)

    def targets(self, examples) -> np.ndarray:
        """np.ndarray: `examples`' targets in the form the compiled loss expects."""
        return self.task.keras_targets(examples.targets, self.n_outputs, self.one_hot)

    # -------------------------------------------------------------------------------------- training
    def stages(self):
        from tlkeras.recipes.freezing import plan_stages

        return plan_stages(self.recipe.schedule, max(1, len(self.entry.layer_groups)))

    def uses_feature_cache(self) -> bool:
        """True when every stage keeps the backbone frozen and no augmentation changes its inputs."""
        return (self.recipe.data.cache_features and all(s.unfreeze == 0 for s in self.stages())
                and self.augment is None and self.recipe.distribution == "none")

    def training_setup(self, stage) -> tuple:
        """(model, training data): what fits in `stage`, on cached features when the cache applies."""
        import tensorflow as tf

        if self.uses_feature_cache():
            pairs = (self.cached_features(self.splits.train), self.targets(self.splits.train))
            data = tf.data.Dataset.from_tensor_slices(pairs).shuffle(len(pairs[0]), seed=self.recipe.seed)
            return self.head_on_features, data.batch(self.recipe.data.batch_size)
        from tlkeras.recipes.freezing import apply_stage

        apply_stage(self.extractor, stage, self.entry.layer_groups, self.recipe.schedule.unfreeze_unit,
                    self.entry.frozen_variables)
        return self.model, self.dataset(self.splits.train, training=True)

    def fit(self) -> dict:
        """Trains every stage not done yet; returns the merged Keras history."""
        if not self.entry.layer_groups and any(s.unfreeze not in (0, "all") for s in self.stages()):
            log.info("backbone %s has no layer groups in its catalog entry: unfreezing counts the whole backbone "
                     "as one group", self.entry.name)
        from tlkeras.recipes.resume import restore_epoch, restore_stages

        state = restore_stages(self.model, self.run, [s.epochs for s in self.stages()])
        if self.uses_feature_cache():
            return self._fit_on_cached_features()
        from tlkeras.recipes.freezing import apply_stage

        val_ds = self.dataset(self.splits.validation, training=False) if self.splits.validation else None
        history: dict = {}
        epoch = state["epochs_done"]
        for index, stage in enumerate(self.stages()):
            if index < state["stages_done"] or stage.epochs == 0:
                continue
            trainable = apply_stage(self.extractor, stage, self.entry.layer_groups,
                                    self.recipe.schedule.unfreeze_unit, self.entry.frozen_variables)
            log.info("stage %d: %d epochs, %d backbone layers trainable, lr %.2g",
                     index, stage.epochs, len(trainable), stage.learning_rate)
            self.compile(self.model, stage, steps=_steps(len(self.splits.train), self.recipe.data.batch_size))
            recalibrate = stage.train_batchnorm and self.recipe.schedule.recalibrate_batchnorm
            callbacks = self._callbacks(index, val_ds is not None, recalibrate)
            first = restore_epoch(self.model, callbacks, epoch)  # after the stage's newest good backup, if any
            # Epoch k's data order depends only on the seed and k, so resumed and distributed runs see the same.
            train_ds = self.dataset(self.splits.train, training=True, first_epoch=first)
            result = self.model.fit(train_ds, validation_data=val_ds, initial_epoch=first, shuffle=False,
                                    steps_per_epoch=_steps(len(self.splits.train), self.recipe.data.batch_size),
                                    epochs=epoch + stage.epochs, verbose=self.verbose, callbacks=callbacks)
            _merge(history, result.history)
            epoch += stage.epochs
            if recalibrate:
                self.recalibrate_batchnorm()
            self._finish_stage(index, epoch)
        return history

    def recalibrate_batchnorm(self) -> None:
        """Re-estimates the trainable BN layers' statistics over the training set (see freezing.py)."""
        from tlkeras.recipes.freezing import recalibrate_batchnorm

        batches = self.dataset(self.splits.train, training=False, targets=False, batch_size=self.recipe.data.batch_size)
        used = recalibrate_batchnorm(self.extractor, batches)
        log.info("BatchNormalization statistics re-estimated over %d training batches", used)

    def _fit_on_cached_features(self) -> dict:
        stage = self.stages()[0]
        history: dict = {}
        if self._state()["stages_done"]:
            return history
        train_x = self.cached_features(self.splits.train)
        val = None
        if self.splits.validation:
            val = (self.cached_features(self.splits.validation), self.targets(self.splits.validation))
        self.compile(self.head_on_features, stage, steps=_steps(len(self.splits.train), self.recipe.data.batch_size))
        log.info("training the head on cached features of %d examples", len(train_x))
        result = self.head_on_features.fit(
            train_x, self.targets(self.splits.train), validation_data=val, batch_size=self.recipe.data.batch_size,
            epochs=stage.epochs, shuffle=True, verbose=self.verbose, callbacks=self._callbacks(0, val is not None))
        _merge(history, result.history)
        self._finish_stage(0, stage.epochs)
        return history

    def cached_features(self, examples) -> np.ndarray:
        """Backbone features of `examples`, from the cache or computed once and stored."""
        from tlkeras.recipes import features as feature_cache

        entry = self.entry
        key = feature_cache.cache_key(
            backbone=entry.name, weights=self.recipe.backbone_weights, source=entry.source,
            handle=entry.handle, package_sha256=entry.package_sha256, weights_sha256=entry.weights_sha256,
            pixel_mean=entry.pixel_mean, pixel_std=entry.pixel_std, channel_order=entry.channel_order,
            pooling=entry.pooling, **self.kind.cache_key(entry, self.spec),
            data=data_lib.fingerprint(examples), seed=self.recipe.seed if self.recipe.backbone_weights == "random" else 0,
        )
        compute = lambda: feature_cache.extract(self.extractor, self.dataset(examples, False, targets=False),  # noqa: E731
                                                verbose=self.verbose)
        return feature_cache.cached_features(key, compute)

    def compile(self, model, stage, steps: int) -> None:
        """Compiles `model` for `stage`: the task's loss and metrics, the recipe's optimizer with the
        backbone's variables at `backbone_lr_multiplier` times the learning rate, and its LR schedule."""
        from tlkeras.recipes.lr_schedules import WarmupSchedule
        from tlkeras.recipes.optimizers import make_optimizer

        schedule = self.recipe.schedule
        lr = stage.learning_rate
        if schedule.lr_schedule != "constant":
            total = max(1, steps * stage.epochs)
            lr = WarmupSchedule(lr, total, int(total * schedule.warmup_fraction), kind=schedule.lr_schedule)
        backbone_vars = self.extractor.trainable_variables if model is self.model else []
        loss, metrics = self.task.loss_and_metrics(schedule.label_smoothing, one_hot=self.one_hot)
        # The optimizer creates variables when constructed: under a strategy they must be made in its scope.
        with self.strategy.scope():
            optimizer = make_optimizer(schedule.optimizer, lr, schedule.weight_decay, backbone_vars,
                                       schedule.backbone_lr_multiplier)
            model.compile(optimizer=optimizer, loss=loss, metrics=metrics)

    def _callbacks(self, stage_index: int, has_validation: bool, recalibrate: bool = False):
        from tlkeras.recipes.callbacks import build_callbacks

        monitor = "val_loss" if has_validation else "loss"
        # A model trained from scratch needs its BN statistics re-estimated, the best epoch's as much as the last.
        return build_callbacks(self.recipe.callbacks, self.run, stage_index, self.inference_model, monitor,
                               before_best_save=self.recalibrate_batchnorm if recalibrate else None)

    def _state(self) -> dict:
        return self.run.state() if self.run else {"stages_done": 0, "epochs_done": 0}

    def _finish_stage(self, index: int, epochs_done: int) -> None:
        if self.run is None:
            return
        from tlkeras import files

        with files.atomic_path(self.run.stage_checkpoint(index)) as tmp:
            self.model.save_weights(tmp)
        self.run.write_state({"stages_done": index + 1, "epochs_done": epochs_done, "finished": False})

    # ------------------------------------------------------------------------------------ evaluation
    def predict(self, examples) -> np.ndarray:
        if self.uses_feature_cache():
            return np.asarray(self.head.predict(self.cached_features(examples), verbose=0,
                                                batch_size=self.recipe.data.batch_size))
        return np.asarray(self.model.predict(self.dataset(examples, False, targets=False), verbose=0))

    def evaluate(self, seconds: float) -> dict:
        """Evaluates on the test split (else validation) and writes metrics, plots and report."""
        examples = self.splits.test or self.splits.validation or self.splits.train
        which = "test" if self.splits.test else "validation" if self.splits.validation else "train"
        details = {"backbone": self.recipe.backbone, "strategy": self.recipe.schedule.strategy,
                   "evaluated on": f"{which} ({len(examples)} examples)", "training seconds": round(seconds, 1),
                   "train examples": len(self.splits.train), "run directory": str(self.run.path)}
        history = self.run.history_csv if self.run.history_csv.exists() else None
        threshold = self.recipe.export.threshold if self.recipe.export else 0.5
        return evaluate_predictions(examples.targets, self.predict(examples), self.labels, self.task.name,
                                    out_dir=self.run.path, title=self.recipe.name or self.run.path.parent.name,
                                    threshold=threshold, extra=details, history_csv=history,
                                    fields={"split": which, "training_seconds": round(seconds, 2)})


def train(recipe: Recipe, resume: bool = False, verbose: int = 1) -> RunResult:
    """Trains and evaluates a recipe into a new run folder (or continues the latest one with `resume`).

    Example:
    >>> result = train(load_recipe("recipes/fashion_mnist_lite0.yaml"))
    >>> result.metrics["accuracy"], result.run_dir      # runs/fashion_mnist_lite0/1
    """
    from tlkeras import files

    start = time.perf_counter()
    # Build before creating the run folder, so bad data or an unknown backbone leaves nothing behind.
    trainer = Trainer.from_recipe(recipe, verbose=verbose)
    from tlkeras.recipes.resume import open_run

    run = open_run(recipe, resume, data_lib.fingerprint(trainer.splits.train))
    trainer.run = run
    with run_log(run.log_file):
        log.info("run %s: training %s on %d examples (%s)", run.path, recipe.backbone, len(trainer.splits.train),
                 recipe.schedule.strategy)
        for note in trainer.splits.notes:
            log.warning("%s", note)
        run.write_start(recipe.to_dict(), trainer.spec, trainer.labels, data_lib.fingerprint(trainer.splits.train),
                        trainer.splits.skipped)
        history = trainer.fit()
        with files.atomic_path(run.model_file) as tmp:
            trainer.inference_model.save(tmp)
        seconds = time.perf_counter() - start
        metrics = trainer.evaluate(seconds)
        run.write_state({**run.state(), "finished": True})
        log.info("done in %.1f s; metrics in %s", seconds, run.metrics_file)
    run.remove_backups()
    return RunResult(run.path, metrics, history, seconds)


@contextlib.contextmanager
def run_log(path: Path):
    """Copies tlkeras's log messages into the run's log file while a run lasts."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    level = log.level
    log.setLevel(min(level or logging.INFO, logging.INFO))
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        handler.close()


def _steps(n: int, batch_size: int) -> int:
    return max(1, -(-n // batch_size))


def _merge(history: dict, new: dict) -> None:
    for key, values in new.items():
        history.setdefault(key, []).extend(values)


__all__ = ["RunResult", "Splits", "Trainer", "load_splits", "read_split", "run_log", "train"]
