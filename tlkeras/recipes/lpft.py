"""LP-FT (Kumar et al., ICLR 2022): the converged probe first, then fine-tuning from it at a small
discriminative learning rate, BatchNorm statistics frozen. Fine-tuning never silently ends below the probe:
when validation (or cross-validation, on small data) says it got worse, the probe is kept and the run says so.

On small data there is no held-out split: the number of fine-tuning epochs (0 = keep the probe) is chosen by
k-fold cross-validation over the training set, then the final model is refit on every example.
"""

from __future__ import annotations

import logging

import numpy as np

from tlkeras.recipes import probe as probe_lib

log = logging.getLogger("tlkeras")


def selection_score(task: str, targets, outputs) -> float:
    """float: the number model selection maximises: accuracy, macro F1 (multilabel, at 0.5) or R²."""
    outputs = np.asarray(outputs, dtype=np.float64)
    targets = np.asarray(targets)
    if task == "classification":
        return float(np.mean(outputs.argmax(axis=1) == targets))
    if task == "multilabel":
        from sklearn.metrics import f1_score

        return float(f1_score(targets.astype(int), (outputs >= 0.5).astype(int), average="macro", zero_division=0))
    y = targets.reshape(len(targets), -1)
    total = ((y - y.mean(axis=0)) ** 2).sum()
    return float(1 - ((y - outputs.reshape(y.shape)) ** 2).sum() / total) if total > 0 else 0.0


class _EpochScores:
    """Scores the model on held-out examples after every epoch (what early stopping would look at)."""

    def __init__(self, trainer, examples):
        import keras

        outer = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                outer.scores.append(outer.score())

        self.trainer, self.examples, self.scores = trainer, examples, []
        self.callback = Callback()

    def score(self) -> float:
        outputs = self.trainer.model.predict(self.trainer.dataset(self.examples, False, targets=False), verbose=0)
        return selection_score(self.trainer.task.name, self.examples.targets, outputs)


def fit_probe_head(trainer, examples, folds: int, features=None, views=None) -> probe_lib.ProbeFit:
    """Fits the probe on `examples`' frozen features (computed through the cache unless given) and writes it
    into the trainer's head. With `views` (e.g. mirrors), every view of an example is a training row, and
    cross-validation keeps an example's views in the same fold."""
    if views:
        from tlkeras.data import fold_indices

        stacked = np.concatenate([trainer.cached_features(examples, v) for v in views])
        targets = np.concatenate([examples.targets] * len(views))
        n = len(examples)
        cv = [(np.concatenate([t + k * n for k in range(len(views))]), np.concatenate([v + k * n for k in range(len(views))]))
              for t, v in fold_indices(examples, folds, trainer.recipe.seed)]
        fit = probe_lib.fit_probe(stacked, targets, trainer.task.name, class_weight=trainer.class_weight_mode,
                                  seed=trainer.recipe.seed, cv_indices=cv, n_classes=trainer.probe_classes)
        probe_lib.assign(trainer.head, fit)
        return fit
    features = trainer.cached_features(examples) if features is None else features
    fit = probe_lib.fit_probe(features, examples.targets, trainer.task.name, folds=folds,
                              class_weight=trainer.class_weight_mode, seed=trainer.recipe.seed,
                              n_classes=trainer.probe_classes)
    probe_lib.assign(trainer.head, fit)
    return fit


def fit_lpft(trainer, stage) -> dict:
    """Probe, then fine-tune with `stage` (what to unfreeze, epochs, learning rate); keeps the better.

    Returns:
        dict for metrics.json's "selection": what was tried, what each scored and what was kept.
    """
    from tlkeras.recipes.freezing import apply_stage

    schedule = trainer.recipe.schedule
    pretrained = [w.copy() for w in trainer.extractor.get_weights()]
    splits = trainer.splits

    def fine_tune(train_examples, epochs, callbacks=(), validation=None):
        apply_stage(trainer.extractor, stage, trainer.entry.layer_groups, schedule.unfreeze_unit,
                    trainer.entry.frozen_variables)
        trainer.compile(trainer.model, stage, steps=-(-len(train_examples) // trainer.recipe.data.batch_size))
        data = trainer.dataset(train_examples, training=True)
        return trainer.model.fit(data, validation_data=validation, epochs=epochs, verbose=trainer.verbose,
                                 shuffle=False, class_weight=trainer.keras_class_weight, callbacks=list(callbacks))

    if splits.validation is not None:
        fit = fit_probe_head(trainer, splits.train, schedule.folds)
        probe_weights = trainer.head.get_weights()
        tracker = _EpochScores(trainer, splits.validation)
        probe_score = tracker.score()
        log.info("probe: %s, validation %s %.4f", fit.choice, fit.metric, probe_score)
        validation = trainer.dataset(splits.validation, training=False)
        fine_tune(splits.train, stage.epochs, [tracker.callback, *trainer.training_callbacks(1, True)], validation)
        best_epoch = int(np.argmax(tracker.scores)) + 1 if tracker.scores else 0
        # restore_best_weights is not used: the last epoch's weights are what training ended with, so the
        # comparison below is against them.
        final_score = tracker.scores[-1] if tracker.scores else probe_score
        selection = {"mode": "validation", "probe": {**fit.summary(), "validation_score": probe_score},
                     "fine_tuning_scores": tracker.scores, "best_epoch": best_epoch}
        if final_score < probe_score:
            trainer.extractor.set_weights(pretrained)
            trainer.head.set_weights(probe_weights)
            selection["kept"] = "probe"
            selection["reason"] = (f"fine-tuning ended at validation {fit.metric} {final_score:.4f}, below the "
                                   f"probe's {probe_score:.4f}: the probe is kept")
        else:
            selection["kept"] = "fine_tuned"
            selection["reason"] = (f"fine-tuning reached validation {fit.metric} {final_score:.4f} "
                                   f"(probe {probe_score:.4f})")
        log.info("LP-FT: %s", selection["reason"])
        return selection

    # Small data: choose the number of fine-tuning epochs by k-fold cross-validation, then refit on all.
    from tlkeras.data import fold_indices

    folds = fold_indices(splits.train, min(schedule.finetune_folds, schedule.folds), trainer.recipe.seed)
    frozen = trainer.cached_features(splits.train)  # with the pre-trained weights, before any fine-tuning
    per_fold = []
    for k, (train_idx, val_idx) in enumerate(folds):
        trainer.extractor.set_weights(pretrained)
        fold_train, fold_val = splits.train.select(train_idx), splits.train.select(val_idx)
        fit_probe_head(trainer, fold_train, schedule.folds, frozen[train_idx])
        tracker = _EpochScores(trainer, fold_val)
        scores = [tracker.score()]
        fine_tune(fold_train, stage.epochs, [tracker.callback])
        per_fold.append(scores + tracker.scores)
        log.info("LP-FT fold %d/%d: probe %.4f, fine-tuned by epoch %s", k + 1, len(folds), scores[0],
                 ", ".join(f"{s:.4f}" for s in tracker.scores))
    mean = np.mean(per_fold, axis=0) if per_fold else np.zeros(1)
    best_epochs = int(np.argmax(mean))  # ties go to fewer epochs (argmax takes the first)
    trainer.extractor.set_weights(pretrained)
    fit = fit_probe_head(trainer, splits.train, schedule.folds, frozen)
    selection = {"mode": f"{len(folds)}-fold cross-validation", "probe": fit.summary(),
                 "mean_score_by_epoch": [round(float(s), 4) for s in mean], "folds": len(folds),
                 "epochs_chosen": best_epochs}
    if best_epochs == 0:
        selection["kept"] = "probe"
        selection["reason"] = (f"cross-validated {fit.metric} was best without fine-tuning ({mean[0]:.4f}; "
                               f"fine-tuned {', '.join(f'{s:.4f}' for s in mean[1:])}): the probe is kept")
    else:
        fine_tune(splits.train, best_epochs, trainer.training_callbacks(1, False))
        selection["kept"] = "fine_tuned"
        selection["reason"] = (f"cross-validated {fit.metric} peaked after {best_epochs} fine-tuning epochs "
                               f"({mean[best_epochs]:.4f}, probe {mean[0]:.4f}); refit on all "
                               f"{len(splits.train)} examples")
    log.info("LP-FT: %s", selection["reason"])
    return selection
