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
from tlkeras import inputs, tasks
from tlkeras.errors import TlkerasError
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
    cross_validated: bool = False  # small data: no held-out split, choices by k-fold cross-validation


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
    cross_validated = False
    if validation is None and cfg.validation_split:
        small = f"{len(train)} training examples, below data.cross_validate_below={cfg.cross_validate_below}"
        if len(train) < cfg.cross_validate_below and _selects_by_cross_validation(recipe, kind):
            cross_validated = True
            notes.append(f"{small}: no validation split is held out; choices are made by k-fold cross-validation "
                         "and the final model is refit on every example")
        else:
            if len(train) < cfg.cross_validate_below:
                notes.append(f"{small}, but this recipe trains by epochs with Keras fit (hidden head layers, a "
                             "staged schedule, augmentation or distribution), which has no cross-validated path: "
                             f"{cfg.validation_split:.0%} is held out for validation")
            train, validation = data_lib.split_examples(train, cfg.validation_split, recipe.seed)
    return Splits(train, validation, test, skipped, notes, cross_validated)


def _selects_by_cross_validation(recipe: Recipe, kind: inputs.InputKind) -> bool:
    """True when the recipe's training path makes its choices by k-fold cross-validation: the probe on cached
    features, LP-FT, contrastive and auto (see `Trainer.fit`)."""
    schedule = recipe.schedule
    if schedule.strategy in ("auto", "contrastive"):
        return True
    if recipe.head.hidden_units or recipe.distribution != "none":
        return False
    if schedule.strategy in ("layer_retraining", "fine_tuning"):
        return schedule.lp_ft
    if schedule.strategy != "feature_extraction" or not recipe.data.cache_features:
        return False
    views = kind.feature_views(recipe.augment)
    return (views is not None and len(views) > 1) or kind.augmenter(recipe.augment, recipe.seed, False) is None


def _checked(examples, kind, skip: bool, skipped: list, notes: list):
    if examples is None:
        return None
    notes += examples.notes  # reading already converted what the kind cannot decode, and said so
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
        # A linear head on cached features sees augmentation as extra views of each example (mirrors),
        # when the augmentation amounts to deterministic views.
        views = self.kind.feature_views(augment) if not recipe.head.hidden_units else None
        self.views = views if views and len(views) > 1 else None
        self.notes: list[str] = []  # what building the trainer decided, for the run's log
        self.class_weight_mode = _class_weight_mode(recipe.data.class_weight, self.task.name, splits.train, self.notes)
        self.selection: dict = {}  # what model selection tried and kept, for metrics.json and the report
        self.recommendation: list | None = None  # backbone: auto's ranking
        with strategy.scope():
            head_cfg = recipe.head
            self.head = build_head(backbone.feature_dim, recipe.task, self.n_outputs, head_cfg.hidden_units,
                                   0.0 if self.linear_head else head_cfg.dropout, head_cfg.activation)
            extractor = backbone.extractor
            self.model = keras.Model(extractor.inputs, self.head(extractor.output),
                                     name=f"{self.entry.name}_{self.task.name}")
            # The same layers, never compiled: model.keras and best.keras then load with only tlkeras.layers
            # registered, not the training optimizer and schedule.
            self.inference_model = keras.Model(self.model.input, self.model.output, name=self.model.name)
            if augment.tta:  # the saved and exported model averages each image's outputs with its mirror's
                self.inference_model = self.kind.test_time_augmented(self.inference_model)
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
        ranking = None
        if recipe.backbone == "auto":
            recipe, ranking = choose_backbone(recipe)
        entry = backbones.entry_for(recipe.backbone)
        backbones.check_supported(entry)
        splits = load_splits(recipe, inputs.for_entry(entry))
        strategy = make_strategy(recipe.distribution)
        with strategy.scope():
            backbone = backbones.build(recipe.backbone, weights=recipe.backbone_weights == "pretrained",
                                       data=recipe.data)
        trainer = cls(recipe, splits, backbone, strategy, run, verbose)
        trainer.recommendation = ranking
        if ranking is not None:
            best = ranking[0]
            trainer.notes.append(f"backbone: auto chose {best['name']} (cross-validated probe accuracy "
                                 f"{best['probe_accuracy']:.4f}, {best['latency_ms']:.1f} ms at batch 1) among "
                                 f"{sum(r['rank'] is not None for r in ranking)} candidates")
        if any(stage.unfreeze for stage in trainer.stages()):
            backbones.check_supported(entry, "fine_tuning")
        return trainer

    @property
    def extractor(self):
        return self.backbone.extractor

    @property
    def linear_head(self) -> bool:
        """True for the default head (no hidden layers): it is fitted as a converged probe."""
        return not self.recipe.head.hidden_units

    @property
    def probe_classes(self) -> int | None:
        """int or None: the classification head's width, for probes fitted on subsets that may lack a class."""
        return self.n_outputs if self.task.name == "classification" else None

    @property
    def keras_class_weight(self) -> dict | None:
        if self.class_weight_mode != "balanced":
            return None
        return class_weights(self.splits.train.targets, self.n_outputs)

    @property
    def strategy_name(self) -> str:
        return self.recipe.schedule.strategy

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

    def view_dataset(self, examples, view: str):
        """Inputs of `examples`, in inference batches, as one feature view (no targets, no shuffling)."""
        return self.kind.dataset(examples.inputs, None, self.spec, self.recipe.data.inference_batch_size,
                                 preprocessor=self.backbone.preprocessor, view=view)

    def targets(self, examples) -> np.ndarray:
        """np.ndarray: `examples`' targets in the form the compiled loss expects."""
        return self.task.keras_targets(examples.targets, self.n_outputs, self.one_hot)

    # -------------------------------------------------------------------------------------- training
    def stages(self):
        from tlkeras.recipes.freezing import plan_stages

        return plan_stages(self.recipe.schedule, max(1, len(self.entry.layer_groups)))

    def uses_feature_cache(self) -> bool:
        """True when every stage keeps the backbone frozen and no augmentation changes its inputs."""
        if self.strategy_name == "auto" and self.selection.get("kept") not in (None, "probe"):
            return False  # auto chose to fine-tune: predictions go through the tuned backbone
        return (self.recipe.data.cache_features and all(s.unfreeze == 0 for s in self.stages())
                and (self.augment is None or self.views is not None) and self.recipe.distribution == "none")

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

        # Restores the newest good stage checkpoint (a probe's head, a fine-tuned model) before anything else.
        state = restore_stages(self.model, self.run, [s.epochs for s in self.stages()])
        if self.strategy_name in ("auto", "contrastive"):
            return self._fit_selected()
        if self.uses_feature_cache() and self.linear_head:
            return self._fit_probe()
        if self.uses_feature_cache():
            return self._fit_on_cached_features()
        if self.linear_head and self.recipe.schedule.lp_ft and self.strategy_name in ("layer_retraining", "fine_tuning"):
            return self._fit_lpft()
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
                                    epochs=epoch + stage.epochs, verbose=self.verbose,
                                    class_weight=self.keras_class_weight, callbacks=callbacks)
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

    def _fit_probe(self) -> dict:
        from tlkeras.recipes import lpft

        if self._state()["stages_done"]:
            return {}
        fit = lpft.fit_probe_head(self, self.splits.train, self.recipe.schedule.folds, views=self.views)
        self.selection = {"mode": f"{fit.folds}-fold cross-validation" if fit.folds else "no cross-validation",
                          "probe": fit.summary(), "kept": "probe"}
        table = ", ".join(f"{name}: {mean:.4f}±{std:.4f}" for name, (mean, std) in fit.cv_scores.items())
        log.info("probe on %d cached features: chose %s by %d-fold cross-validated %s (%s)", len(self.splits.train),
                 fit.choice, fit.folds, fit.metric, table)
        if self.splits.validation is not None:
            from tlkeras.recipes.lpft import selection_score

            score = selection_score(self.task.name, self.splits.validation.targets, self.predict(self.splits.validation))
            self.selection["probe"]["validation_score"] = score
            log.info("probe: validation %s %.4f", fit.metric, score)
        self._finish_stage(0, 0)
        return {}

    def _fit_selected(self) -> dict:
        from tlkeras.recipes import auto

        state = self._state()
        if state.get("stages_done", 0) >= 1:  # restore_stages loaded its weights
            self.selection = state.get("selection", {})
            return {}
        if not self.linear_head:
            raise TlkerasError(f"strategy {self.strategy_name} fits the probe head: remove head.hidden_units. "
                               f"Received: hidden_units={list(self.recipe.head.hidden_units)}")
        self.selection = auto.fit_auto(self) if self.strategy_name == "auto" else auto.fit_contrastive(self)
        self._finish_stage(0, 0)
        if self.run is not None:
            self.run.write_state({**self.run.state(), "selection": self.selection})
        return {}

    def extract_features(self, examples) -> np.ndarray:
        """np.ndarray: features of `examples` through the extractor as it is now (no cache: after contrastive or
        fine-tuning steps the cached features would be stale)."""
        from tlkeras.features.backbone import extract

        return np.concatenate(list(extract(self.extractor, self.view_dataset(examples, "identity"))))

    def _fit_lpft(self) -> dict:
        from tlkeras.recipes import lpft

        state = self._state()
        last = len(self.stages()) - 1
        if state.get("stages_done", 0) > last:  # restore_stages loaded its weights
            self.selection = state.get("selection", {})
            return {}
        stage = self.stages()[-1]
        self.selection = lpft.fit_lpft(self, stage)
        self._finish_stage(last, sum(s.epochs for s in self.stages()))
        if self.run is not None:
            self.run.write_state({**self.run.state(), "selection": self.selection})
        return {}

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
            epochs=stage.epochs, shuffle=True, verbose=self.verbose, class_weight=self.keras_class_weight,
            callbacks=self._callbacks(0, val is not None))
        _merge(history, result.history)
        self._finish_stage(0, stage.epochs)
        return history

    def cached_features(self, examples, view: str = "identity") -> np.ndarray:
        """Backbone features of `examples` (in one of the kind's feature views), from the per-example cache;
        only inputs it has not seen are computed."""
        from tlkeras.features import backbone_features

        return backbone_features(self.backbone, examples.inputs, self.recipe.data.inference_batch_size, view,
                                 self.recipe.backbone_weights, self.recipe.seed, progress=self.verbose > 0)

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

    def training_callbacks(self, stage_index: int, has_validation: bool, recalibrate: bool = False):
        """The recipe's Keras callbacks for one stage (history, backup, best checkpoint, ...); none without a
        run directory."""
        if self.run is None:
            return []
        return self._callbacks(stage_index, has_validation, recalibrate)

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
        if self.recipe.augment.tta and not self.uses_feature_cache():
            return np.asarray(self.inference_model.predict(self.dataset(examples, False, targets=False), verbose=0))
        if self.uses_feature_cache():
            # With TTA, the views the saved model averages over, whether or not training used them.
            views = self.kind.tta_views if self.recipe.augment.tta else ("identity",)
            return np.mean([np.asarray(self.head.predict(self.cached_features(examples, view), verbose=0,
                                                         batch_size=self.recipe.data.batch_size))
                            for view in views], axis=0)
        return np.asarray(self.model.predict(self.dataset(examples, False, targets=False), verbose=0))

    def evaluate(self, seconds: float) -> dict:
        """Evaluates on the test split (else validation) and writes metrics, plots and report."""
        examples = self.splits.test or self.splits.validation or self.splits.train
        which = "test" if self.splits.test else "validation" if self.splits.validation else "train"
        if which == "train":
            log.warning("no test or validation data: the metrics are on the training data, which the model has seen "
                        "(set data.test for figures that estimate accuracy on new data)")
        details = {"backbone": self.recipe.backbone, "strategy": self.recipe.schedule.strategy,
                   "evaluated on": f"{which} ({len(examples)} examples)", "training seconds": round(seconds, 1),
                   "train examples": len(self.splits.train), "run directory": str(self.run.path)}
        history = self.run.history_csv if self.run.history_csv.exists() else None
        threshold = self.recipe.export.threshold if self.recipe.export else 0.5
        return evaluate_predictions(examples.targets, self.predict(examples), self.labels, self.task.name,
                                    out_dir=self.run.path, title=self.recipe.name or self.run.path.parent.name,
                                    threshold=threshold, extra=details, history_csv=history,
                                    examples=examples.inputs, kind=self.kind,
                                    sections=[selection_section(self.selection)] if self.selection else (),
                                    fields={"split": which, "training_seconds": round(seconds, 2),
                                            "selection": self.selection or None})


def choose_backbone(recipe: Recipe):
    """(recipe, ranking rows): `backbone: auto` replaced by the top-ranked backbone on the training data."""
    import dataclasses

    from tlkeras.recommend import recommend

    options, cfg = recipe.recommend, recipe.data
    table = recommend(cfg.train, task=recipe.task, candidates=options.candidates, max_params=options.max_params,
                      max_latency_ms=options.max_latency_ms, sample=options.sample, folds=recipe.schedule.folds,
                      seed=recipe.seed, path_column=cfg.path_column, text_column=cfg.text_column,
                      label_column=cfg.label_column, include_unavailable=True, progress=recipe.callbacks.progress)
    ranked = table[table["rank"].notna()]
    if ranked.empty:
        reasons = "; ".join(f"{r.name}: {r.status}" for r in table.itertuples())
        raise TlkerasError(f"backbone: auto found no backbone that runs here on this data ({reasons}); fetch an offline "
                           "backbone (`tlkeras registry list --offline`) or name one")
    best = ranked.iloc[0]
    rows = table.astype(object).where(table.notna(), None).to_dict("records")
    return dataclasses.replace(recipe, backbone=str(best["name"])), rows


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

    # The trainer's recipe: with `backbone: auto`, the chosen backbone (what config.yaml records and --resume checks).
    run = open_run(trainer.recipe, resume, data_lib.fingerprint(trainer.splits.train))
    trainer.run = run
    with run_log(run.log_file):
        log.info("run %s: training %s on %d examples (%s)", run.path, recipe.backbone, len(trainer.splits.train),
                 recipe.schedule.strategy)
        for note in trainer.splits.notes + trainer.notes:
            log.warning("%s", note)
        run.write_start(trainer.recipe.to_dict(), trainer.spec, trainer.labels,
                        data_lib.fingerprint(trainer.splits.train), trainer.splits.skipped)
        if trainer.recommendation is not None:
            from tlkeras import files

            files.write_json(run.path / "recommendation.json", trainer.recommendation)
            log.info("backbone: auto ranking in %s", run.path / "recommendation.json")
        history = trainer.fit()
        with files.atomic_path(run.model_file) as tmp:
            trainer.inference_model.save(tmp)
        seconds = time.perf_counter() - start
        metrics = trainer.evaluate(seconds)
        run.write_state({**run.state(), "finished": True})
        log.info("done in %.1f s; metrics in %s", seconds, run.metrics_file)
    run.remove_backups()
    return RunResult(run.path, metrics, history, seconds)


def selection_section(selection: dict) -> str:
    """str: the report's "Model selection" section: what was tried, how it scored, what was kept and why."""
    import html
    import json

    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td><pre>{html.escape(json.dumps(v, default=str))}</pre></td></tr>"
                   for k, v in selection.items())
    return f"<h2>Model selection</h2><table><tr><th>key</th><th>value</th></tr>{rows}</table>"


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


def _class_weight_mode(setting: str, task: str, train, notes: list) -> str | None:
    """"balanced" or None, as `data.class_weight` says; "auto" balances classes when the smallest has under
    half the examples of the largest."""
    if task != "classification" or setting == "none":
        return None
    if setting == "balanced":
        return "balanced"
    counts = train.class_counts()
    counts = counts[counts > 0]
    if counts.min() < 0.5 * counts.max():
        notes.append(f"classes are imbalanced ({counts.min()} to {counts.max()} examples): balanced class weights")
        return "balanced"
    return None


def class_weights(targets: np.ndarray, n_classes: int) -> dict[int, float]:
    """dict: class id -> weight inversely proportional to its frequency, averaging 1 over examples."""
    counts = np.bincount(targets.astype(np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = len(targets) / (present.sum() * counts[present])
    return {i: float(w) for i, w in enumerate(weights)}


def _steps(n: int, batch_size: int) -> int:
    return max(1, -(-n // batch_size))


def _merge(history: dict, new: dict) -> None:
    for key, values in new.items():
        history.setdefault(key, []).extend(values)


__all__ = ["RunResult", "Splits", "Trainer", "load_splits", "read_split", "run_log", "train"]
