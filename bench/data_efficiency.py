"""Accuracy against labels per class: pre-trained features vs fine-tuning vs the same network from scratch.

Fashion-MNIST: EfficientNet-Lite0 through tlkeras recipes.
- feature extraction: frozen ImageNet backbone at 224 px (features cached; the test features are computed
  once and shared by every run, since all runs read the same test folder), linear head, 30 epochs;
- fine-tuned: `fine_tuning` strategy (whole backbone, 0.1x learning rate, BN statistics frozen) at 64 px;
- scratch: the same architecture with `backbone_weights: random`, `weight_init` strategy (BN trains, then
  its statistics are re-estimated over the training set) at 64 px.
Fine-tuned and scratch runs use 64 px to fit the time budget; they see a fixed budget of image-passes
(epochs shrink as the training set grows). Tested on the first `test_size` t10k images, 3 seeds.

Rotten Tomatoes: MiniLM-L6 mean-pooled embeddings + MLP head through a tlkeras recipe, MiniLM fine-tuned
end to end (at 32 labels/class only, to fit the time budget), vs a hand-written
from-scratch bag-of-embeddings model (TextVectorization + Embedding + average pooling), on a
fixed `text_test`-review test set (1,000 in a full run), 3 seeds.

Only accuracy is measured here, so the runs go to `workers` processes at once: most of a fine-tuning
run's wall time is tracing its training step, single-threaded Python, which two processes overlap.
Features are cached in a fresh TLKERAS_HOME, so the suite's time never depends on an earlier run.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field

from bench.common import fresh_home

NAME = "data_efficiency"
TARGET = ("Lite0 feature extraction >= scratch + 20 points at 10 labels/class (Fashion-MNIST); "
          "MiniLM feature extraction >= 75% at 32/class (Rotten Tomatoes)")
NO_CALLBACKS = {"checkpoint": False, "backup": False, "tensorboard": False, "progress": False}


def settings(quick: bool) -> dict:
    if quick:  # one size, one seed, tiny images: the same code paths in well under a minute
        return dict(image_per_class=(1,), text_per_class=(2,), seeds=(0,), test_size=20, text_test=20,
                    fe_size=32, train_size=32, passes=10, scratch_lr=3e-3, fe_epochs=2, text_epochs=2,
                    text_finetune_per_class=(2,), text_finetune_epochs=1, text_head_epochs=0, workers=2)
    return dict(image_per_class=(1, 5, 10, 50), text_per_class=(8, 32, 128), seeds=(0, 1, 2), test_size=500,
                text_test=1000, fe_size=224, train_size=64, passes=800, scratch_lr=1e-3, fe_epochs=30,
                text_epochs=60, text_finetune_per_class=(32,), text_finetune_epochs=3, text_head_epochs=2, workers=2)


@dataclass
class Job:
    """One training run: its place in the results table and what the worker runs."""

    dataset: str  # "fashion" or "rotten"
    per_class: int
    method: str
    seed: int
    recipe: dict | None = None  # a tlkeras recipe, or None for the hand-written text model
    data: dict = field(default_factory=dict)
    epochs: int = 0


def run(quick: bool, workdir) -> dict:
    cfg = settings(quick)
    with fresh_home(workdir, "data_efficiency"):  # the spawned workers inherit it
        jobs = _fashion_jobs(cfg, workdir) + _rotten_jobs(cfg, workdir)
        scores = _run_jobs(jobs, cfg["workers"])
    image, text = _table(jobs, scores, "fashion"), _table(jobs, scores, "rotten")
    for per_class in cfg["image_per_class"]:
        epochs = next(j.epochs for j in jobs if j.per_class == per_class and j.method == "scratch")
        image[str(per_class)]["epochs_fine_tuned_and_scratch"] = epochs
    key = "10" if "10" in image else next(iter(image))  # quick mode has no 10/class row
    tkey = "32" if "32" in text else next(iter(text))
    fe10 = image.get(key, {}).get("feature_extraction", {}).get("mean")
    sc10 = image.get(key, {}).get("scratch", {}).get("mean")
    minilm32 = text.get(tkey, {}).get("minilm_feature_extraction", {}).get("mean")
    met = None
    if not quick and fe10 is not None and minilm32 is not None:  # quick sizes say nothing about the target
        met = fe10 >= sc10 + 0.20 and minilm32 >= 0.75
    gap = f"{100 * (fe10 - sc10):+.1f} points" if fe10 is not None else "n/a"
    return {
        "figures": {"fashion_mnist_accuracy": image, "rotten_tomatoes_accuracy": text,
                    "run_seconds_total": round(sum(seconds for _, seconds in scores.values()), 1),
                    **cfg},
        "met": met,
        "summary": (f"Fashion-MNIST {key}/class: Lite0 features {_fmt(image, key, 'feature_extraction')}, "
                    f"fine-tuned {_fmt(image, key, 'fine_tuned')}, scratch {_fmt(image, key, 'scratch')} "
                    f"({gap}); Rotten Tomatoes {tkey}/class: MiniLM {_fmt(text, tkey, 'minilm_feature_extraction')}, "
                    f"MiniLM fine-tuned {_fmt(text, tkey, 'minilm_fine_tuned')}, "
                    f"scratch {_fmt(text, tkey, 'scratch_bag_of_embeddings')}"),
        "cause": _cause(text, tkey, fe10, sc10, minilm32),
    }


def _run_jobs(jobs: list[Job], workers: int) -> dict[int, tuple[float, float]]:
    """Accuracy and seconds of each job, by index.

    Feature-extraction runs of one dataset share the test features in the cache, so the first of each
    dataset runs before the others (instead of several workers computing the same features at once);
    runs that train the backbone need no cache and start right away, the longest first.
    """
    extracts = [i for i, j in enumerate(jobs) if j.recipe and j.recipe["schedule"]["strategy"] == "feature_extraction"]
    warm = [next(i for i in extracts if jobs[i].dataset == d) for d in dict.fromkeys(jobs[i].dataset for i in extracts)]
    order = {"scratch": 0, "fine_tuned": 1, "minilm_fine_tuned": 2}
    independent = sorted((i for i in range(len(jobs)) if i not in extracts), key=lambda i: order.get(jobs[i].method, 3))
    later = [i for i in extracts if i not in warm]
    scores: dict[int, tuple[float, float]] = {}
    context = multiprocessing.get_context("spawn")  # a fresh TensorFlow per worker, never a forked one
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        pending = {pool.submit(_run_job, jobs[i]): i for i in warm + independent}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                scores[i] = future.result()
                job = jobs[i]
                print(f"[bench] data_efficiency {len(scores)}/{len(jobs)}: {job.dataset} {job.method} "
                      f"{job.per_class}/class seed {job.seed}: accuracy {scores[i][0]:.3f} ({scores[i][1]:.0f} s)",
                      flush=True)
            if later and all(i in scores for i in warm):
                pending.update({pool.submit(_run_job, jobs[i]): i for i in later})
                later = []
    return scores


def _init_worker(threads: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)


def _run_job(job: Job) -> tuple[float, float]:
    start = time.perf_counter()
    if job.recipe is None:
        accuracy = _text_scratch(job.data, job.epochs, job.seed)
    else:
        from tlkeras.recipes.config import parse_recipe
        from tlkeras.recipes.trainer import train

        accuracy = float(train(parse_recipe(job.recipe), verbose=0).metrics["accuracy"])
    return accuracy, time.perf_counter() - start


def _table(jobs: list[Job], scores, dataset: str) -> dict:
    table: dict = {}
    for i, job in enumerate(jobs):
        if job.dataset == dataset:
            table.setdefault(str(job.per_class), {}).setdefault(job.method, []).append(scores[i][0])
    return {size: {method: _summary(values) for method, values in row.items()} for size, row in table.items()}


def _cause(text, tkey, fe10, sc10, minilm32) -> str:
    parts = []
    if fe10 is not None and fe10 < sc10 + 0.20:
        parts.append(f"at 10 labels/class Lite0 features lead the from-scratch network by {100 * (fe10 - sc10):.1f} "
                     "points, not 20: the scratch baseline is a real training run (BN trains, fixed pass budget), "
                     "and Fashion-MNIST's centred grey items are easy enough that it learns a usable model "
                     "(FACTS: a small CNN from scratch reaches 74.1% vs 79.0% for a Lite0 probe)")
    if minilm32 is not None and minilm32 < 0.75:
        parts.append(f"MiniLM features at {tkey} labels/class reach {_fmt(text, tkey, 'minilm_feature_extraction')}: "
                     "all-MiniLM-L6-v2 is trained for semantic similarity, not sentiment, and its embeddings "
                     "separate fresh from rotten weakly (FACTS: a logistic-regression probe on the same "
                     "embeddings gives 65.5 +/- 0.7%); a head on frozen features cannot add what they lack")
    return "; ".join(parts)


def _fmt(table, size, method) -> str:
    cell = table.get(size, {}).get(method)
    return f"{100 * cell['mean']:.1f} +/- {100 * cell['std']:.1f}%" if cell else "n/a"


def _summary(values) -> dict:
    return {"mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "runs": [round(v, 4) for v in values]}


def _fashion_jobs(cfg, workdir) -> list[Job]:
    from tlkeras.datasets import fashion_mnist

    test = fashion_mnist(workdir / "data_eff" / "test", train_per_class=1, test_size=cfg["test_size"])["test"]
    jobs = []
    for per_class in cfg["image_per_class"]:
        epochs = max(3, min(40, math.ceil(cfg["passes"] / (per_class * 10))))
        for seed in cfg["seeds"]:
            train_dir = fashion_mnist(workdir / "data_eff" / f"train_{per_class}_{seed}", train_per_class=per_class,
                                      test_size=1, seed=seed)["train"]
            base = {"backbone": "efficientnet_lite0_imagenet", "seed": seed, "callbacks": NO_CALLBACKS,
                    "data": {"train": str(train_dir), "test": str(test), "batch_size": 32}}
            variants = {
                "feature_extraction": {
                    "data": {**base["data"], "image_size": [cfg["fe_size"]] * 2},
                    "schedule": {"strategy": "feature_extraction", "epochs": cfg["fe_epochs"],
                                 "learning_rate": 3e-3}},
                "fine_tuned": {
                    "data": {**base["data"], "image_size": [cfg["train_size"]] * 2},
                    "schedule": {"strategy": "fine_tuning", "epochs": epochs, "learning_rate": 1e-3,
                                 "backbone_lr_multiplier": 0.1}},
                "scratch": {
                    "backbone_weights": "random",
                    "data": {**base["data"], "image_size": [cfg["train_size"]] * 2},
                    "schedule": {"strategy": "weight_init", "epochs": epochs, "learning_rate": cfg["scratch_lr"],
                                 "backbone_lr_multiplier": 1.0}},
            }
            for method, extra in variants.items():
                recipe = {**base, **extra, "output_dir": str(workdir / "runs" / f"eff_{method}_{per_class}_{seed}")}
                jobs.append(Job("fashion", per_class, method, seed, recipe, epochs=epochs))
    return jobs


def _rotten_jobs(cfg, workdir) -> list[Job]:
    from tlkeras.datasets import rotten_tomatoes

    jobs = []
    for per_class in cfg["text_per_class"]:
        for seed in cfg["seeds"]:
            data = rotten_tomatoes(workdir / "data_eff" / f"rt_{per_class}_{seed}", train_per_class=per_class,
                                   test_size=cfg["text_test"], seed=seed)
            data = {"train": str(data["train"]), "test": str(data["test"])}
            raw = {"backbone": "minilm_l6_v2", "seed": seed, "callbacks": NO_CALLBACKS,
                   "data": {**data, "text_column": "text", "label_column": "label", "sequence_length": 128,
                            "batch_size": 16},
                   "head": {"hidden_units": [128], "dropout": 0.3},
                   "schedule": {"strategy": "feature_extraction", "epochs": cfg["text_epochs"],
                                "learning_rate": 1e-3},
                   "output_dir": str(workdir / "runs" / f"eff_minilm_{per_class}_{seed}")}
            jobs.append(Job("rotten", per_class, "minilm_feature_extraction", seed, raw))
            if per_class in cfg["text_finetune_per_class"]:
                # Whole-network fine-tuning: a few epochs at a low backbone learning rate, shorter sequences.
                tuned = {**raw, "data": {**raw["data"], "sequence_length": 64},
                         "schedule": {"strategy": "fine_tuning", "head_epochs": cfg["text_head_epochs"],
                                      "epochs": cfg["text_finetune_epochs"],
                                      "learning_rate": 1e-3, "backbone_lr_multiplier": 0.05},
                         "output_dir": str(workdir / "runs" / f"eff_minilm_ft_{per_class}_{seed}")}
                jobs.append(Job("rotten", per_class, "minilm_fine_tuned", seed, tuned))
            jobs.append(Job("rotten", per_class, "scratch_bag_of_embeddings", seed, None, data, cfg["text_epochs"]))
    return jobs


def _text_scratch(data, epochs: int, seed: int) -> float:
    import keras
    import numpy as np
    import pandas as pd

    keras.utils.set_random_seed(seed)
    train, test = pd.read_csv(data["train"]), pd.read_csv(data["test"])
    labels = sorted(train["label"].unique())
    y_train = train["label"].map(labels.index).to_numpy()
    y_test = test["label"].map(labels.index).to_numpy()
    vectorize = keras.layers.TextVectorization(max_tokens=20000, output_sequence_length=64)
    vectorize.adapt(train["text"].to_numpy())
    x_train = vectorize(train["text"].to_numpy())
    x_test = vectorize(test["text"].to_numpy())
    model = keras.Sequential([
        keras.Input((64,), dtype="int64"),
        keras.layers.Embedding(vectorize.vocabulary_size(), 32, mask_zero=True),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(len(labels), activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=16, verbose=0)
    return float(np.mean(np.argmax(model.predict(x_test, verbose=0), axis=-1) == y_test))
