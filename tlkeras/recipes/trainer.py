"""`train(recipe)`: backbone + head + freezing schedule + augmentation + callbacks -> a run directory.

A run directory holds:
    config.yaml            the resolved recipe, plus the input spec export needs
    labels.json            class names in output order
    data_fingerprint.txt   hash of the training data
    train.log              what the run did, stage by stage
    history.csv            one row per epoch, across stages (CSVLogger)
    tensorboard/           TensorBoard logs
    checkpoints/best.keras the best model by validation loss, across stages (its value in best.json)
    model.keras            the final model (float RGB pixels in [0, 255], or token dict -> outputs)
    metrics.json, *.png, report.html   the evaluation (see `evaluation.py`)
    state.json             stages finished, for --resume
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from tlkeras import registry
from tlkeras.errors import TlkerasError
from tlkeras.recipes import data as data_lib
from tlkeras.recipes.config import Recipe
from tlkeras.recipes.evaluation import evaluate_predictions

log = logging.getLogger("tlkeras")


@dataclass
class Splits:
    train: data_lib.Examples
    validation: data_lib.Examples | None
    test: data_lib.Examples | None
    skipped: list = field(default_factory=list)  # (path, reason) of corrupt images skipped


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    history: dict
    seconds: float


def load_splits(recipe: Recipe, kind: str) -> Splits:
    """Reads train / validation / test examples; validation and test use the training label map."""
    cfg = recipe.data
    common = dict(task=recipe.task, kind=kind, path_column=cfg.path_column, text_column=cfg.text_column,
                  label_column=cfg.label_column, label_separator=cfg.label_separator)
    train = data_lib.load_examples(cfg.train, **common)
    validation = data_lib.load_examples(cfg.validation, labels=train.labels, **common) if cfg.validation else None
    test = data_lib.load_examples(cfg.test, labels=train.labels, **common) if cfg.test else None
    skipped = []
    if kind == "image":
        train, validation, test = (_checked_images(s, cfg.skip_corrupt, skipped) for s in (train, validation, test))
    if validation is None and cfg.validation_split:
        train, validation = data_lib.split_examples(train, cfg.validation_split, recipe.seed)
    return Splits(train, validation, test, skipped)


def _checked_images(examples, skip_corrupt: bool, skipped: list):
    if examples is None:
        return None
    ok, bad = data_lib.check_images(examples.inputs, on_error="skip" if skip_corrupt else "raise")
    if bad:
        skipped += bad
        log.warning("skipped %d undecodable images from %s (listed in the run's skipped_images.txt)",
                    len(bad), examples.source)
        return examples.select(ok)
    return examples


class Trainer:
    """Runs one recipe. Most users call `train(recipe)`; the class keeps the pieces reachable for
    tests and for `lr_find`.

    Args:
        recipe: Recipe. The validated recipe.
        resume: bool. Continue an interrupted run in `recipe.output_dir`. Defaults to False.
        verbose: int. Keras progress: 1 progress bars, 2 one line per epoch, 0 silent.
    """

    def __init__(self, recipe: Recipe, resume: bool = False, verbose: int = 1):
        self.recipe = recipe
        self.resume = resume
        self.verbose = verbose
        self.entry = registry.get(recipe.backbone)
        self.run_dir = Path(recipe.output_dir)

    # ----------------------------------------------------------------------------------------- setup
    def prepare(self) -> None:
        """Creates the run directory, reads the data and builds backbone, head and model."""
        import keras

        from tlkeras import backbones
        from tlkeras.recipes.distribute import make_strategy
        from tlkeras.recipes.heads import build_head

        self._prepare_run_dir()
        keras.utils.set_random_seed(self.recipe.seed)
        self.splits = load_splits(self.recipe, self.entry.domain)
        self.labels = self.splits.train.labels
        self.n_outputs = len(self.labels) if self.recipe.task != "regression" else _n_targets(self.splits.train)
        self._write_run_files()
        self.strategy = make_strategy(self.recipe.distribution)
        with self.strategy.scope():
            self.backbone = backbones.load(self.recipe.backbone,
                                           weights=self.recipe.backbone_weights == "pretrained",
                                           image_size=self.image_size or None)
            feature_dim = self.backbone.output.shape[-1]
            head_cfg = self.recipe.head
            self.head = build_head(feature_dim, self.recipe.task, self.n_outputs, head_cfg.hidden_units,
                                   head_cfg.dropout, head_cfg.activation)
            self.model = keras.Model(self.backbone.inputs, self.head(self.backbone.output),
                                     name=f"{self.recipe.backbone}_{self.recipe.task}")
            # The same layers, never compiled: model.keras and best.keras then load with only the backbones'
            # custom layers registered, not the training optimizer and schedule of tlkeras.recipes.
            self.inference_model = keras.Model(self.model.input, self.model.output, name=self.model.name)
            # Likewise the head trains on cached features through its own twin, so the head nested in
            # the saved models is never compiled.
            self.head_on_features = keras.Model(self.head.input, self.head.output, name="head_on_features")
        self.tokenizer = None
        if self.entry.domain == "text":
            self.tokenizer = backbones.load_tokenizer(self.recipe.backbone, self.sequence_length)

    @property
    def image_size(self) -> tuple[int, ...]:
        return tuple(self.recipe.data.image_size or self.entry.input_size or (224, 224))

    @property
    def sequence_length(self) -> int:
        return self.recipe.data.sequence_length or self.entry.sequence_length or 128

    def _prepare_run_dir(self) -> None:
        state = self.run_dir / "state.json"
        if self.resume:
            if not state.exists():
                raise TlkerasError(f"nothing to resume in {self.run_dir}: it has no state.json; "
                                   "drop --resume to start a new run")
            return
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            if not state.exists():
                raise TlkerasError(f"{self.run_dir} exists and is not a tlkeras run: choose another "
                                   "output_dir (e.g. --set output_dir=runs/new)")
            shutil.rmtree(self.run_dir)  # a previous run of this recipe: start it over
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def _write_run_files(self) -> None:
        config = self.recipe.to_dict()
        config["input"] = ({"kind": "image", "image_size": list(self.image_size)} if self.entry.domain == "image"
                           else {"kind": "text", "sequence_length": self.sequence_length})
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (self.run_dir / "labels.json").write_text(json.dumps(self.labels, indent=1))
        self.fingerprint = data_lib.fingerprint(self.splits.train)
        (self.run_dir / "data_fingerprint.txt").write_text(self.fingerprint + "\n")
        if self.splits.skipped:
            lines = [f"{path}\t{reason}" for path, reason in self.splits.skipped]
            (self.run_dir / "skipped_images.txt").write_text("\n".join(lines) + "\n")
        state = self.run_dir / "state.json"
        if not state.exists():
            state.write_text(json.dumps({"stages_done": 0, "epochs_done": 0}))

    # -------------------------------------------------------------------------------------- datasets
    @property
    def mixes_labels(self) -> bool:
        augment = self.recipe.augment
        return self.recipe.task == "classification" and bool(augment.mixup or augment.cutmix)

    def dataset(self, examples, training: bool, targets: bool = True, batch_size: int | None = None):
        """A tf.data pipeline of backbone inputs (and targets) for `examples`."""
        cfg = self.recipe.data
        y = self._targets(examples) if targets else None
        batch_size = batch_size or (cfg.batch_size if training else cfg.inference_batch_size)
        if self.entry.domain == "text":
            return data_lib.text_dataset(examples.inputs, y, batch_size, preprocessor=self.tokenizer,
                                         shuffle=training, seed=self.recipe.seed)
        augment = None
        if training and self.recipe.augment.enabled():
            augment = self._augmenter()
        return data_lib.image_dataset(examples.inputs, y, self.image_size, batch_size, shuffle=training,
                                      seed=self.recipe.seed, augment=augment)

    def _targets(self, examples):
        y = examples.targets
        if self.mixes_labels or (self.recipe.task == "classification" and self.recipe.schedule.label_smoothing):
            y = np.eye(self.n_outputs, dtype="float32")[y]
        return y

    def _augmenter(self):
        from tlkeras.recipes.augment import build_label_mixer, build_pixel_augmenter

        if not hasattr(self, "_augment_fns"):
            self._augment_fns = (build_pixel_augmenter(self.recipe.augment, self.recipe.seed),
                                 build_label_mixer(self.recipe.augment, self.recipe.seed))
        pixels, mixer = self._augment_fns

        def augment(images, labels):
            if pixels is not None:
                images = pixels(images, training=True)
            if mixer is not None and self.mixes_labels:
                images, labels = mixer(images, labels)
            return images, labels

        return augment

    # -------------------------------------------------------------------------------------- training
    def stages(self):
        from tlkeras.recipes.freezing import plan_stages

        return plan_stages(self.recipe.schedule, len(self.entry.layer_groups) or 4)

    def uses_feature_cache(self) -> bool:
        """True when every stage keeps the backbone frozen and no augmentation changes its inputs."""
        return (self.recipe.data.cache_features and all(s.unfreeze == 0 for s in self.stages())
                and not (self.entry.domain == "image" and self.recipe.augment.enabled())
                and self.recipe.distribution == "none")

    def fit(self) -> dict:
        """Trains every stage not done yet; returns the merged Keras history."""
        if self.uses_feature_cache():
            return self._fit_on_cached_features()
        from tlkeras.recipes.freezing import apply_stage

        state = self._state()
        if state["stages_done"]:
            self.model.load_weights(self.run_dir / "checkpoints" / f"stage_{state['stages_done'] - 1}.weights.h5")
        train_ds = self.dataset(self.splits.train, training=True)
        val_ds = self.dataset(self.splits.validation, training=False) if self.splits.validation else None
        history: dict = {}
        epoch = state["epochs_done"]
        for index, stage in enumerate(self.stages()):
            if index < state["stages_done"] or stage.epochs == 0:
                continue
            trainable = apply_stage(self.backbone, stage, self.entry.layer_groups, self.recipe.schedule.unfreeze_unit)
            log.info("stage %d: %d epochs, %d backbone layers trainable, lr %.2g",
                     index, stage.epochs, len(trainable), stage.learning_rate)
            self._compile(self.model, stage, steps=_steps(len(self.splits.train), self.recipe.data.batch_size))
            recalibrate = stage.train_batchnorm and self.recipe.schedule.recalibrate_batchnorm
            # shuffle=False: the tf.data pipeline already reshuffles every epoch.
            result = self.model.fit(train_ds, validation_data=val_ds, initial_epoch=epoch, shuffle=False,
                                    epochs=epoch + stage.epochs, verbose=self.verbose,
                                    callbacks=self._callbacks(index, val_ds is not None, recalibrate))
            _merge(history, result.history)
            epoch += stage.epochs
            if recalibrate:
                self._recalibrate_batchnorm()
            self._finish_stage(index, epoch)
        return history

    def _recalibrate_batchnorm(self) -> None:
        from tlkeras.recipes.freezing import recalibrate_batchnorm

        batches = self.dataset(self.splits.train, training=False, targets=False,
                               batch_size=self.recipe.data.batch_size)
        used = recalibrate_batchnorm(self.backbone, batches)
        log.info("BatchNormalization statistics re-estimated over %d training batches", used)

    def _fit_on_cached_features(self) -> dict:
        stage = self.stages()[0]
        state = self._state()
        history: dict = {}
        if state["stages_done"]:
            return history
        train_x = self.cached_features(self.splits.train)
        val = None
        if self.splits.validation:
            val = (self.cached_features(self.splits.validation), self._targets(self.splits.validation))
        self._compile(self.head_on_features, stage, steps=_steps(len(self.splits.train), self.recipe.data.batch_size))
        log.info("training the head on cached features of %d examples", len(train_x))
        result = self.head_on_features.fit(train_x, self._targets(self.splits.train), validation_data=val,
                               batch_size=self.recipe.data.batch_size, epochs=stage.epochs, shuffle=True,
                               verbose=self.verbose, callbacks=self._callbacks(0, val is not None))
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
            pooling=entry.pooling,
            image_size=self.image_size if entry.domain == "image" else None,
            sequence_length=self.sequence_length if entry.domain == "text" else None,
            data=data_lib.fingerprint(examples), seed=self.recipe.seed if self.recipe.backbone_weights == "random" else 0,
        )
        compute = lambda: feature_cache.extract(self.backbone, self.dataset(examples, False, targets=False),  # noqa: E731
                                                verbose=self.verbose)
        return feature_cache.cached_features(key, compute)

    def _compile(self, model, stage, steps: int) -> None:
        from tlkeras.recipes.heads import loss_and_metrics
        from tlkeras.recipes.lr_schedules import WarmupSchedule
        from tlkeras.recipes.optimizers import make_optimizer

        schedule = self.recipe.schedule
        lr = stage.learning_rate
        if schedule.lr_schedule != "constant":
            total = max(1, steps * stage.epochs)
            lr = WarmupSchedule(lr, total, int(total * schedule.warmup_fraction), kind=schedule.lr_schedule)
        backbone_vars = self.backbone.trainable_variables if model is self.model else []
        loss, metrics = loss_and_metrics(self.recipe.task, schedule.label_smoothing, one_hot=self.mixes_labels)
        # The optimizer creates variables when constructed: under a strategy they must be made in its scope.
        with self.strategy.scope():
            optimizer = make_optimizer(schedule.optimizer, lr, schedule.weight_decay, backbone_vars,
                                       schedule.backbone_lr_multiplier)
            model.compile(optimizer=optimizer, loss=loss, metrics=metrics)

    def _callbacks(self, stage_index: int, has_validation: bool, recalibrate: bool = False):
        from tlkeras.recipes.callbacks import build_callbacks

        monitor = "val_loss" if has_validation else "loss"
        # A model trained from scratch needs its BN statistics re-estimated, the best epoch's as much as the last.
        return build_callbacks(self.recipe.callbacks, self.run_dir, stage_index, self.inference_model, monitor,
                               before_best_save=self._recalibrate_batchnorm if recalibrate else None)

    def _state(self) -> dict:
        return json.loads((self.run_dir / "state.json").read_text())

    def _finish_stage(self, index: int, epochs_done: int) -> None:
        checkpoint = self.run_dir / "checkpoints" / f"stage_{index}.weights.h5"
        checkpoint.parent.mkdir(exist_ok=True)
        self.model.save_weights(checkpoint)
        (self.run_dir / "state.json").write_text(json.dumps({"stages_done": index + 1, "epochs_done": epochs_done}))

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
        history_csv = self.run_dir / "history.csv"
        extra = {"backbone": self.recipe.backbone, "strategy": self.recipe.schedule.strategy,
                 "evaluated on": f"{which} ({len(examples)} examples)", "training seconds": round(seconds, 1),
                 "train examples": len(self.splits.train), "run directory": str(self.run_dir)}
        metrics = evaluate_predictions(examples.targets, self.predict(examples), self.labels, self.recipe.task,
                                       out_dir=self.run_dir, title=self.recipe.name or self.run_dir.name,
                                       extra=extra, history_csv=history_csv if history_csv.exists() else None)
        metrics["split"] = which
        metrics["training_seconds"] = round(seconds, 2)
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        return metrics


def train(recipe: Recipe, resume: bool = False, verbose: int = 1) -> RunResult:
    """Trains and evaluates a recipe; returns its run directory, metrics and history.

    Example:
    >>> result = train(load_recipe("recipes/fashion_mnist_lite0.yaml"))
    >>> result.metrics["accuracy"]
    """
    start = time.perf_counter()
    trainer = Trainer(recipe, resume=resume, verbose=verbose)
    trainer.prepare()
    with _run_log(trainer.run_dir / "train.log"):
        log.info("training %s on %d examples (%s)", recipe.backbone, len(trainer.splits.train),
                 recipe.schedule.strategy)
        history = trainer.fit()
        trainer.inference_model.save(trainer.run_dir / "model.keras")
        seconds = time.perf_counter() - start
        metrics = trainer.evaluate(seconds)
        log.info("done in %.1f s; metrics in %s", seconds, trainer.run_dir / "metrics.json")
    _remove_empty_dirs(trainer.run_dir / "backup")  # BackupAndRestore empties its folders on success
    return RunResult(trainer.run_dir, metrics, history, seconds)


@contextlib.contextmanager
def _run_log(path: Path):
    """Copies tlkeras's log messages into the run directory while a run lasts."""
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


def _remove_empty_dirs(root: Path) -> None:
    for directory in sorted(root.glob("**/"), key=lambda p: len(p.parts), reverse=True):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()


def _n_targets(examples) -> int:
    return 1 if examples.targets.ndim == 1 else examples.targets.shape[1]


def _steps(n: int, batch_size: int) -> int:
    return max(1, -(-n // batch_size))


def _merge(history: dict, new: dict) -> None:
    for key, values in new.items():
        history.setdefault(key, []).extend(values)


def evaluate_run(run_dir: str | Path, data: str | None = None, out_dir: str | Path | None = None) -> dict:
    """Re-evaluates a finished run's `model.keras`, on its test data or on `data`.

    Args:
        run_dir: str. A run directory written by `train`.
        data: str. An image folder or table to evaluate on. Defaults to the recipe's test data.
        out_dir: str. Where to write metrics and plots. Defaults to `run_dir/evaluation`.

    Example:
    >>> evaluate_run("runs/fashion", data="data/fashion/test")["accuracy"]
    """
    import keras

    import tlkeras.backbones  # noqa: F401 - registers the custom layers model.keras uses
    from tlkeras.recipes.config import parse_recipe

    run_dir = Path(run_dir)
    if not (run_dir / "model.keras").exists():
        raise TlkerasError(f"{run_dir} has no model.keras: pass the directory of a finished `tlkeras train` run")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    input_spec = config.pop("input")  # written by the trainer beside the recipe's own keys
    recipe = parse_recipe(config)
    data = data or recipe.data.test or recipe.data.validation
    if not data:
        raise TlkerasError("the run's recipe has no test data: pass --data FOLDER_OR_TABLE")
    labels = json.loads((run_dir / "labels.json").read_text())
    entry = registry.get(recipe.backbone)
    cfg = recipe.data
    examples = data_lib.load_examples(data, recipe.task, kind=entry.domain, path_column=cfg.path_column,
                                      text_column=cfg.text_column, label_column=cfg.label_column,
                                      label_separator=cfg.label_separator, labels=labels or None)
    if entry.domain == "image":
        dataset = data_lib.image_dataset(examples.inputs, None, input_spec["image_size"], cfg.inference_batch_size)
    else:
        from tlkeras.backbones import load_tokenizer

        tokenizer = load_tokenizer(recipe.backbone, input_spec["sequence_length"])
        dataset = data_lib.text_dataset(examples.inputs, None, cfg.inference_batch_size, preprocessor=tokenizer)
    model = keras.models.load_model(run_dir / "model.keras")
    scores = np.asarray(model.predict(dataset, verbose=0))
    out_dir = Path(out_dir or run_dir / "evaluation")
    metrics = evaluate_predictions(examples.targets, scores, labels, recipe.task, out_dir=out_dir,
                                   title=f"{run_dir.name} on {Path(data).name}",
                                   extra={"run directory": str(run_dir), "data": str(data)})
    return metrics
