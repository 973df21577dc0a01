"""`strategy: contrastive` and `strategy: auto`.

Contrastive: the encoder tunes on SetFit-style pairs (`contrastive.py`), then the probe is fitted on its
tuned features. Auto: the probe, LP-FT and contrastive fine-tuning are scored by the same k-fold
cross-validation on the training data, within `schedule.budget_minutes`; the best is then trained on every
example. What was tried, what each scored and why the winner won go to train.log, metrics.json and the report.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from tlkeras.recipes import contrastive, lpft
from tlkeras.recipes import probe as probe_lib

log = logging.getLogger("tlkeras")


def tune_contrastive(trainer, examples) -> dict:
    """Tunes the trainer's extractor in place on pairs of `examples`."""
    schedule = trainer.recipe.schedule
    return contrastive.tune(trainer.extractor, trainer.kind, trainer.spec, trainer.backbone.preprocessor,
                            examples.inputs, examples.targets, iterations=schedule.contrastive_iterations,
                            batch_size=schedule.contrastive_batch_size,
                            learning_rate=schedule.contrastive_learning_rate,
                            max_steps=schedule.contrastive_max_steps, seed=trainer.recipe.seed,
                            verbose=trainer.verbose)


def fit_contrastive(trainer) -> dict:
    """Contrastive fine-tuning on all the training data, then the probe on the tuned features."""
    history = tune_contrastive(trainer, trainer.splits.train)
    fit = lpft.fit_probe_head(trainer, trainer.splits.train, trainer.recipe.schedule.folds,
                              trainer.extract_features(trainer.splits.train))
    log.info("contrastive: %d pairs in %d steps, loss %.4f; probe %s", history["pairs"], history["steps"],
             history["loss"][-1], fit.choice)
    return {"mode": "contrastive", "pairs": history["pairs"], "steps": history["steps"],
            "pair_loss": history["loss"], "probe": fit.summary(), "kept": "contrastive"}


def _cv_contrastive(trainer, folds, pretrained) -> list[float]:
    scores = []
    for train_idx, val_idx in folds:
        trainer.extractor.set_weights(pretrained)
        fold_train, fold_val = trainer.splits.train.select(train_idx), trainer.splits.train.select(val_idx)
        tune_contrastive(trainer, fold_train)
        fit = probe_lib.fit_probe(trainer.extract_features(fold_train), fold_train.targets, trainer.task.name,
                                  folds=trainer.recipe.schedule.folds, class_weight=trainer.class_weight_mode,
                                  seed=trainer.recipe.seed, n_classes=trainer.probe_classes)
        outputs = probe_lib.predict(fit, trainer.extract_features(fold_val), trainer.task.name)
        scores.append(lpft.selection_score(trainer.task.name, fold_val.targets, outputs))
    trainer.extractor.set_weights(pretrained)
    return scores


def candidates(trainer) -> list[str]:
    """list of str: the strategies auto may try for this backbone, input kind and task."""
    names = ["probe"]
    if "fine_tuning" in trainer.entry.supports:
        names.append("lp_ft")
        if trainer.kind.auto_tries_contrastive and trainer.task.name == "classification":
            names.append("contrastive")
    return names


def fit_auto(trainer) -> dict:
    """Chooses among the candidates by cross-validated score within the time budget, then trains the winner."""
    from tlkeras.data import fold_indices

    schedule = trainer.recipe.schedule
    budget = schedule.budget_minutes * 60
    start = time.perf_counter()
    folds = fold_indices(trainer.splits.train, min(schedule.finetune_folds, schedule.folds), trainer.recipe.seed)
    pretrained = [w.copy() for w in trainer.extractor.get_weights()]
    frozen = trainer.cached_features(trainer.splits.train)
    trials: dict[str, dict] = {}

    def record(name, scores, seconds, **extra):
        trials[name] = {"cv_score": round(float(np.mean(scores)), 4), "cv_std": round(float(np.std(scores)), 4),
                        "seconds": round(seconds, 1), **extra}
        log.info("auto: %s scored %.4f ± %.4f by %d-fold cross-validation (%.0f s)", name, np.mean(scores),
                 np.std(scores), len(scores), seconds)

    t = time.perf_counter()
    fit = probe_lib.fit_probe(frozen, trainer.splits.train.targets, trainer.task.name, cv_indices=folds,
                              class_weight=trainer.class_weight_mode, seed=trainer.recipe.seed)
    best_probe = fit.cv_scores[fit.choice]
    scores = [best_probe[0]] * len(folds)
    record("probe", scores, time.perf_counter() - t, choice=fit.choice)
    trials["probe"]["cv_std"] = round(best_probe[1], 4)

    for name in candidates(trainer)[1:]:
        spent = time.perf_counter() - start
        estimate = _estimate(trainer, name, trials, len(folds))
        if spent + estimate > budget:
            trials[name] = {"skipped": f"estimated {estimate / 60:.1f} min would pass the {budget / 60:.0f}-min budget "
                                       f"({spent / 60:.1f} min spent)"}
            log.info("auto: %s skipped: %s", name, trials[name]["skipped"])
            continue
        t = time.perf_counter()
        if name == "lp_ft":
            by_epoch = _cv_lpft(trainer, folds, pretrained, frozen)
            best_epochs = int(np.argmax(by_epoch.mean(axis=0)))
            record(name, by_epoch[:, best_epochs], time.perf_counter() - t, epochs=best_epochs,
                   mean_score_by_epoch=[round(float(s), 4) for s in by_epoch.mean(axis=0)])
        else:
            record(name, _cv_contrastive(trainer, folds, pretrained), time.perf_counter() - t)

    scored = {k: v for k, v in trials.items() if "cv_score" in v}
    winner = max(scored, key=lambda k: (scored[k]["cv_score"], -list(trials).index(k)))
    reason = (f"{winner} had the best cross-validated {fit.metric} ({scored[winner]['cv_score']:.4f}; "
              + ", ".join(f"{k} {v['cv_score']:.4f}" for k, v in scored.items() if k != winner) + ")")
    log.info("auto: chose %s: %s", winner, reason)
    trainer.extractor.set_weights(pretrained)
    if winner == "probe":
        final = {"probe": lpft.fit_probe_head(trainer, trainer.splits.train, schedule.folds, frozen).summary()}
    elif winner == "lp_ft" and trials["lp_ft"]["epochs"] == 0:
        final = {"probe": lpft.fit_probe_head(trainer, trainer.splits.train, schedule.folds, frozen).summary()}
    elif winner == "lp_ft":
        lpft.fit_probe_head(trainer, trainer.splits.train, schedule.folds, frozen)
        _fine_tune(trainer, trainer.splits.train, trials["lp_ft"]["epochs"], trainer.training_callbacks(1, False))
        final = {}
    else:
        final = fit_contrastive(trainer)
    return {"mode": "auto", "folds": len(folds), "budget_minutes": schedule.budget_minutes, "trials": trials,
            "kept": winner, "reason": reason, **final}


def _fine_tune_stage(trainer):
    from tlkeras.recipes.freezing import Stage

    schedule = trainer.recipe.schedule  # the whole backbone, at backbone_lr_multiplier x learning_rate
    return Stage(schedule.epochs, "all", schedule.learning_rate)


def _fine_tune(trainer, examples, epochs, callbacks=()):
    from tlkeras.recipes.freezing import apply_stage

    stage = _fine_tune_stage(trainer)
    apply_stage(trainer.extractor, stage, trainer.entry.layer_groups, trainer.recipe.schedule.unfreeze_unit,
                trainer.entry.frozen_variables)
    trainer.compile(trainer.model, stage, steps=-(-len(examples) // trainer.recipe.data.batch_size))
    trainer.model.fit(trainer.dataset(examples, training=True), epochs=epochs, verbose=trainer.verbose,
                      shuffle=False, class_weight=trainer.keras_class_weight, callbacks=list(callbacks))


def _cv_lpft(trainer, folds, pretrained, frozen) -> np.ndarray:
    """(folds, epochs + 1) scores: the probe (column 0), then after each fine-tuning epoch."""
    schedule = trainer.recipe.schedule
    rows = []
    for train_idx, val_idx in folds:
        trainer.extractor.set_weights(pretrained)
        fold_train, fold_val = trainer.splits.train.select(train_idx), trainer.splits.train.select(val_idx)
        lpft.fit_probe_head(trainer, fold_train, schedule.folds, frozen[train_idx])
        tracker = lpft._EpochScores(trainer, fold_val)
        first = tracker.score()
        _fine_tune(trainer, fold_train, schedule.epochs, [tracker.callback])
        rows.append([first, *tracker.scores])
    trainer.extractor.set_weights(pretrained)
    return np.asarray(rows)


def _estimate(trainer, name, trials, n_folds) -> float:
    """Seconds a candidate's cross-validation is expected to take, from a few timed training steps."""
    import tensorflow as tf

    schedule = trainer.recipe.schedule
    examples = trainer.splits.train
    batch = trainer.recipe.data.batch_size if name == "lp_ft" else schedule.contrastive_batch_size
    steps = (schedule.epochs * -(-len(examples) // batch) if name == "lp_ft"
             else min(schedule.contrastive_max_steps, -(-2 * schedule.contrastive_iterations * len(examples) // batch)))
    sample = examples.select(np.arange(min(len(examples), batch)))
    data = trainer.kind.dataset(sample.inputs, None, trainer.spec, batch, preprocessor=trainer.backbone.preprocessor)
    x = next(iter(data))
    pretrained = [w.copy() for w in trainer.extractor.get_weights()]
    for _ in range(2):  # the second step, once eager set-up is paid
        t = time.perf_counter()
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(trainer.extractor(x, training=True))
        tape.gradient(loss, trainer.extractor.trainable_variables)
        step = time.perf_counter() - t
    trainer.extractor.set_weights(pretrained)
    per_pair = 2 if name == "contrastive" else 1  # two towers per contrastive pair
    return (n_folds + 1) * steps * step * per_pair
