"""The keras.io transfer-learning recipe (frozen backbone inside the model, re-run every epoch) vs a tlkeras
feature-extraction recipe with its frozen-feature cache, on the same data, backbone, head and epochs.

A (baseline), as in keras.io's "Transfer learning & fine-tuning" guide: `Sequential([backbone
(trainable=False), Dropout, Dense])` fitted on `keras.utils.image_dataset_from_directory` pipelines
(`.cache().prefetch()`) with `validation_data` checked every epoch, then evaluated on the test folder.
B (tlkeras): `train(parse_recipe(...))` with `cache_features: true` and the same validation folder, in a
fresh TLKERAS_HOME, so the one feature extraction of train, validation and test images is inside the timed
region. B's wall time also includes what `train` always does (run directory, best checkpoint, backup,
TensorBoard logs, evaluation plots and report).
"""

from __future__ import annotations

import time

from bench.common import fashion_mnist_folder, fresh_home, median

NAME = "feature_cache_vs_keras_baseline"
TARGET = "wall time tlkeras (cache, first extraction counted) / keras.io baseline <= 0.2 at 10 epochs"
BACKBONE = "efficientnet_lite0_imagenet"


def settings(quick: bool) -> dict:
    if quick:
        return dict(per_class=2, validation_per_class=1, test_size=30, image_size=96, epochs=2, repeats=1)
    return dict(per_class=30, validation_per_class=10, test_size=200, image_size=224, epochs=10, repeats=3)


def run(quick: bool, workdir) -> dict:
    cfg = settings(quick)
    data = fashion_mnist_folder(workdir, cfg["per_class"], cfg["test_size"],
                                validation_per_class=cfg["validation_per_class"])
    baseline_times, tlkeras_times, warm_times, baseline_acc, tlkeras_acc = [], [], [], [], []
    for repeat in range(cfg["repeats"]):
        # A then B, then A then B again: load on the shared machine hits both sides alike.
        seconds, acc = _baseline(data, cfg, seed=repeat)
        baseline_times.append(seconds)
        baseline_acc.append(acc)
        seconds, acc, warm = _tlkeras(data, cfg, workdir, seed=repeat)
        tlkeras_times.append(seconds)
        tlkeras_acc.append(acc)
        warm_times.append(warm)
    ratio = median(t / b for t, b in zip(tlkeras_times, baseline_times, strict=True))
    warm_ratio = median(w / b for w, b in zip(warm_times, baseline_times, strict=True))
    n_train, n_val, n_test = cfg["per_class"] * 10, cfg["validation_per_class"] * 10, cfg["test_size"]
    # The forward passes each side makes: the baseline runs the backbone every epoch, tlkeras once.
    passes_baseline = (n_train + n_val) * cfg["epochs"] + n_test
    passes_tlkeras = n_train + n_val + n_test
    return {
        "figures": {
            "ratio_tlkeras_over_baseline": round(ratio, 3),
            "ratio_warm_cache_over_baseline": round(warm_ratio, 3),
            "baseline_test_accuracy": round(median(baseline_acc), 4),
            "tlkeras_test_accuracy": round(median(tlkeras_acc), 4),
            "baseline_seconds": [round(t, 1) for t in baseline_times],
            "tlkeras_seconds": [round(t, 1) for t in tlkeras_times],
            "tlkeras_warm_cache_seconds": [round(t, 1) for t in warm_times],
            "backbone_forward_passes_baseline": passes_baseline,
            "backbone_forward_passes_tlkeras": passes_tlkeras,
            "forward_pass_ratio_bound": round(passes_tlkeras / passes_baseline, 3),
            **cfg, "train_images": n_train,
            "validation_images": n_val, "test_images": n_test,
        },
        "met": ratio <= 0.2,
        "cause": (f"the cached side still runs the backbone once over every image ({passes_tlkeras} "
                  f"forward passes vs the baseline's {passes_baseline}), so with this test set the cache cannot beat "
                  f"{passes_tlkeras / passes_baseline:.2f}x; the rest is what `train` adds (run directory, "
                  f"checkpoints, TensorBoard, evaluation report): the warm-cache rerun, which extracts nothing, "
                  f"still takes {warm_ratio:.2f}x the baseline"),
        "summary": (f"ratio {ratio:.2f} (cold cache), {warm_ratio:.2f} (warm cache); accuracy "
                    f"tlkeras {median(tlkeras_acc):.3f} vs baseline {median(baseline_acc):.3f}; "
                    f"{n_train} train / {n_val} validation / {n_test} test images at {cfg['image_size']}px, {cfg['epochs']} epochs"),
    }


def _baseline(data, cfg, seed: int):
    import keras
    import tensorflow as tf

    from tlkeras import backbones

    keras.utils.set_random_seed(seed)
    size = (cfg["image_size"], cfg["image_size"])
    start = time.perf_counter()
    def folder(name, shuffle):
        ds = keras.utils.image_dataset_from_directory(data[name], image_size=size, batch_size=32,
                                                      shuffle=shuffle, seed=seed, verbose=False)
        return ds.cache().prefetch(tf.data.AUTOTUNE)

    train_ds, val_ds, test_ds = folder("train", True), folder("validation", False), folder("test", False)
    backbone = backbones.load(BACKBONE, image_size=size)
    backbone.trainable = False
    model = keras.Sequential([keras.Input((*size, 3)), backbone, keras.layers.Dropout(0.2),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train_ds, epochs=cfg["epochs"], validation_data=val_ds, verbose=0)
    _, accuracy = model.evaluate(test_ds, verbose=0)
    return time.perf_counter() - start, float(accuracy)


def _tlkeras(data, cfg, workdir, seed: int):
    from tlkeras.recipes.config import parse_recipe
    from tlkeras.recipes.trainer import train

    with fresh_home(workdir, f"feature_cache_{seed}"):
        raw = {
            "backbone": BACKBONE, "seed": seed,
            "data": {"train": str(data["train"]), "validation": str(data["validation"]), "test": str(data["test"]),
                     "cache_features": True,
                     "image_size": [cfg["image_size"], cfg["image_size"]], "batch_size": 32},
            "head": {"dropout": 0.2},
            "schedule": {"strategy": "feature_extraction", "epochs": cfg["epochs"], "learning_rate": 1e-3},
            "output_dir": str(workdir / "runs" / f"feature_cache_{seed}"),
        }
        start = time.perf_counter()
        result = train(parse_recipe(raw), verbose=0)
        cold = time.perf_counter() - start
        # The same recipe again: every feature now comes from the cache.
        start = time.perf_counter()
        train(parse_recipe(dict(raw, output_dir=str(workdir / "runs" / f"feature_cache_{seed}_warm"))), verbose=0)
        warm = time.perf_counter() - start
    return cold, float(result.metrics["accuracy"]), warm
