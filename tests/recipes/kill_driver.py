"""Runs `tlkeras.recipes.train` and SIGKILLs itself at one chosen moment, for the kill-and-resume test.

    python kill_driver.py RECIPE [--resume] [--kill JSON]

The moment is a JSON object:
    {"event": "batch", "epoch": E, "batch": B}       after training batch B of (global) epoch E
    {"event": "save_weights", "match": S, ...}       while Keras writes a .weights.h5 whose path contains S
                                                     (tlkeras writes to a temporary ".NAME.PID.tmp" first):
                                                     the file is written, cut to half its size, then the
                                                     process dies, as if killed mid-write
    {"event": "save_model", "match": S}              the same for a .keras file
    {"event": "replace", "match": S, ...}            when a finished temporary file is about to be renamed
                                                     onto a path ending in S: cut to half, then killed
                                                     ("after": true kills just after the rename instead)
Optional keys: "epoch" (the epoch being trained must equal it), "min_epoch", "contains" (for "replace":
the temporary file must contain this text).

Nothing here is part of tlkeras: the hooks are monkeypatches of Keras and os in this process only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import keras

from tlkeras import recipes
from tlkeras.recipes import callbacks as callbacks_module

CURRENT = {"epoch": None}


def die(why: str) -> None:
    Path(os.environ["KILL_REPORT"]).write_text(why)
    os.kill(os.getpid(), signal.SIGKILL)


def install(spec: dict) -> None:
    event = spec["event"]

    def epoch_ok() -> bool:
        if "epoch" in spec and CURRENT["epoch"] != spec["epoch"]:
            return False
        return "min_epoch" not in spec or (CURRENT["epoch"] is not None and CURRENT["epoch"] >= spec["min_epoch"])

    class Tracker(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            CURRENT["epoch"] = epoch

        def on_train_batch_end(self, batch, logs=None):
            if event == "batch" and epoch_ok() and batch == spec["batch"]:
                die(f"batch {batch} of epoch {CURRENT['epoch']}")

    build = callbacks_module.build_callbacks
    callbacks_module.build_callbacks = lambda *a, **k: [*build(*a, **k), Tracker()]

    def cut_and_die(path, why):
        size = os.path.getsize(path)
        with open(path, "r+b") as stream:
            stream.truncate(size // 2)
        die(f"{why} {path} ({size} bytes cut to {size // 2})")

    if event in ("save_weights", "save_model"):
        name = "save_weights" if event == "save_weights" else "save"
        original = getattr(keras.Model, name)

        def saving(self, filepath, *args, **kwargs):
            result = original(self, filepath, *args, **kwargs)
            if spec["match"] in str(filepath) and epoch_ok():
                cut_and_die(str(filepath), f"mid-{name}")
            return result

        setattr(keras.Model, name, saving)
    if event == "replace":
        real_replace = os.replace

        def replacing(src, dst, *args, **kwargs):
            hit = str(dst).endswith(spec["match"]) and epoch_ok()
            if hit and "contains" in spec:
                hit = spec["contains"] in Path(src).read_text(errors="replace")
            if hit and not spec.get("after"):
                cut_and_die(str(src), "before renaming")
            result = real_replace(src, dst, *args, **kwargs)
            if hit:
                die(f"just after renaming onto {dst}")
            return result

        os.replace = replacing


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill", default=None)
    args = parser.parse_args()
    if args.kill:
        install(json.loads(args.kill))
    result = recipes.train(recipes.load_recipe(args.recipe), resume=args.resume, verbose=0)
    print(json.dumps({"run_dir": str(result.run_dir), "accuracy": result.metrics.get("accuracy")}))


if __name__ == "__main__":
    main()
