"""Training steps/s of a tlkeras recipe (fine_tuning) vs a hand-written `model.fit` on the same model and data.

Both sides train MobileNetV3Small (random weights, so nothing is fetched) at 96x96 with the recipe's head
on the same `tf.data` pipeline (the image input kind's `dataset`). The tlkeras side runs `Trainer.fit`
with the recipe's default callbacks (CSV log, BackupAndRestore, best checkpoint, TensorBoard). An epoch's
time is the interval between consecutive epoch ends, so per-epoch callback work (checkpoint saving)
counts; the first epoch (tracing, warm-up) is excluded.
"""

from __future__ import annotations

import time

from bench.common import fashion_mnist_folder, median

NAME = "fit_overhead"
TARGET = "tlkeras recipe steps/s / hand-written model.fit steps/s >= 0.95"
BACKBONE = "mobilenet_v3_small_imagenet"


def settings(quick: bool) -> dict:
    if quick:
        return dict(per_class=4, image_size=64, epochs=2, repeats=1, batch_size=32, explain=False)
    return dict(per_class=64, image_size=96, epochs=4, repeats=2, batch_size=32, explain=True)


class _EpochEnds:
    """A Keras callback recording when each epoch ends; made lazily so keras loads inside run()."""

    def __new__(cls):
        import keras

        class EpochEnds(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.ends = [time.perf_counter()]

            def on_epoch_end(self, epoch, logs=None):
                self.ends.append(time.perf_counter())

        return EpochEnds()


def _steps_per_second(ends, steps: int) -> float:
    durations = [b - a for a, b in zip(ends[1:-1], ends[2:], strict=True)]  # epochs 2.. (first excluded)
    return steps / median(durations)


def run(quick: bool, workdir) -> dict:
    cfg = settings(quick)
    data = fashion_mnist_folder(workdir, cfg["per_class"], 10)
    steps = -(-cfg["per_class"] * 10 // cfg["batch_size"])
    tl, hand, bare = [], [], []
    for repeat in range(cfg["repeats"]):
        hand.append(_hand_written(data, cfg, steps, repeat))
        tl.append(_tlkeras(data, cfg, steps, workdir, repeat))
        if cfg["explain"]:  # the cause of a gap, if any: the same recipe with per-epoch callbacks off
            bare.append(_tlkeras(data, cfg, steps, workdir, repeat, callbacks=False))
    ratio = median(t / h for t, h in zip(tl, hand, strict=True))
    bare_ratio = median(t / h for t, h in zip(bare, hand, strict=True)) if bare else None
    return {
        "figures": {"ratio_tlkeras_over_hand_written": round(ratio, 3),
                    "tlkeras_steps_per_second": [round(x, 2) for x in tl],
                    "hand_written_steps_per_second": [round(x, 2) for x in hand],
                    "ratio_tlkeras_no_callbacks_over_hand_written": bare_ratio and round(bare_ratio, 3),
                    "tlkeras_no_callbacks_steps_per_second": [round(x, 2) for x in bare],
                    "steps_per_epoch": steps, "backbone": BACKBONE, "backbone_weights": "random",
                    "train_images": cfg["per_class"] * 10, **cfg},
        "met": None if quick else ratio >= 0.95,  # a quick run's 2 steps per epoch say nothing of the target
        "cause": bare and (f"with the checkpoint, BackupAndRestore and TensorBoard callbacks off the recipe runs at "
                           f"{bare_ratio:.2f}x the hand-written fit, so the gap is their per-epoch work (saving "
                           f"best.keras and the backup each epoch) against {steps} steps per epoch"),
        "summary": f"ratio {ratio:.2f} ({median(tl):.2f} vs {median(hand):.2f} steps/s, batch {cfg['batch_size']}, "
                   f"{cfg['image_size']}px, {steps} steps/epoch)"
                   + (f"; with checkpoint/backup/TensorBoard callbacks off: {bare_ratio:.2f}" if bare else ""),
    }


def _recipe(data, cfg, workdir, seed, callbacks=True):
    from tlkeras.recipes.config import parse_recipe

    off = {} if callbacks else {"callbacks": {"checkpoint": False, "backup": False, "tensorboard": False}}
    return parse_recipe({**off,
        "backbone": BACKBONE, "backbone_weights": "random", "seed": seed,
        "data": {"train": str(data["train"]), "image_size": [cfg["image_size"]] * 2, "batch_size": cfg["batch_size"]},
        "schedule": {"strategy": "fine_tuning", "lp_ft": False, "epochs": cfg["epochs"], "learning_rate": 1e-3},
        "output_dir": str(workdir / "runs" / f"fit_overhead_{seed}_{int(callbacks)}"),
    })


def _tlkeras(data, cfg, steps, workdir, seed, callbacks=True) -> float:
    from tlkeras.recipes.trainer import Trainer

    timer = _EpochEnds()

    class TimedTrainer(Trainer):
        def _callbacks(self, *args, **kwargs):
            return super()._callbacks(*args, **kwargs) + [timer]

    from tlkeras.run_dir import RunDir

    recipe = _recipe(data, cfg, workdir, seed, callbacks)
    trainer = TimedTrainer.from_recipe(recipe, run=RunDir.create(recipe.output_dir), verbose=0)
    trainer.fit()
    return _steps_per_second(timer.ends, steps)


def _hand_written(data, cfg, steps, seed) -> float:
    import keras

    from tlkeras import backbones, inputs
    from tlkeras.data import load_examples
    from tlkeras.recipes.heads import build_head

    keras.utils.set_random_seed(seed)
    examples = load_examples(data["train"], task="classification")
    spec = inputs.InputSpec("image", image_size=(cfg["image_size"],) * 2)
    dataset = inputs.get("image").dataset(examples.inputs, examples.targets, spec, cfg["batch_size"], shuffle=True,
                                          seed=seed)
    backbone = backbones.load(BACKBONE, weights=False, image_size=(cfg["image_size"],) * 2)
    head = build_head(backbone.output.shape[-1], "classification", 10)
    model = keras.Model(backbone.inputs, head(backbone.output))
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    timer = _EpochEnds()
    model.fit(dataset, epochs=cfg["epochs"], verbose=0, callbacks=[timer])
    return _steps_per_second(timer.ends, steps)
