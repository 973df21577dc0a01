"""`tlkeras.fit`: a folder of images (or audio) or a table of texts to a trained, evaluated, exported model
in three lines, without writing YAML. The same machinery as `tlkeras train`: a recipe built from keyword
arguments.

Example:
>>> result = tlkeras.fit("photos/", backbone="auto")
>>> result.evaluate("photos_test/")["accuracy"]
>>> result.predict(["new.jpg"])[0]["label"]
>>> result.export("models/photos")
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class FitResult:
    """A finished run and what to do with it next."""

    run_dir: Path
    metrics: dict
    recipe: Any

    def evaluate(self, data: str) -> dict:
        """dict: the run's model scored on `data` (a folder or table like the training data)."""
        from tlkeras.recipes import evaluate_run

        return evaluate_run(self.run_dir, data=data)

    def predict(self, items) -> list[dict]:
        """list of dict: for each input (file path, or text), the task's outputs: for classification
        "label", "class_id" and "probabilities"."""
        import keras

        import tlkeras.layers  # noqa: F401 - registers the custom layers of model.keras
        from tlkeras import backbones, inputs, tasks
        from tlkeras.run_dir import RunDir

        run = RunDir.open(self.run_dir)
        config = run.config()
        spec = run.input_spec(config)
        kind = inputs.get(spec.kind)
        items = [str(x) for x in items]
        preprocessor = backbones.load_preprocessor(config["backbone"], spec.sequence_length)
        model = keras.models.load_model(run.model_file, compile=False)
        scores = np.asarray(model.predict(kind.dataset(items, None, spec, 8, preprocessor=preprocessor), verbose=0))
        task, labels = tasks.get(config["task"]), run.labels(config["task"])
        threshold = (config.get("export") or {}).get("threshold", 0.5)
        outputs = {k: np.asarray(v) for k, v in task.postprocess(scores, labels, threshold).items()}
        return [{k: _plain(v[i]) for k, v in outputs.items()} for i in range(len(items))]

    def export(self, path: str | Path) -> Path:
        """Path: a new TF Serving version under `path` (its folder name is the model name), e.g.
        `models/photos` -> `models/photos/1`."""
        from tlkeras.export import export_run

        path = Path(path)
        return export_run(self.run_dir, base_dir=path.parent, name=path.name)


def fit(data: str, /, backbone: str = "auto", task: str = "classification", test: str | None = None,
        output_dir: str | None = None, verbose: int = 1, **sections) -> FitResult:
    """Trains and evaluates a recipe made of keyword arguments; returns a `FitResult`.

    Args:
        data: str, positional. What a recipe's `data.train` takes: a class folder, or a CSV/Parquet table
            (the `data=` keyword is the recipe's data section, as below).
        backbone: str. A registry name, a list of names (an ensemble), or "auto" (the best on the data).
            Defaults to "auto".
        task: str. "classification", "multilabel" or "regression".
        test: str. Held-out data to evaluate on. Defaults to None: the run evaluates on its validation split,
            or, on small data (no split held out, see `data.cross_validate_below`), on the training data, which
            says little; `metrics["split"]` tells which.
        output_dir: str. Where runs go. Defaults to `runs/<data folder name>`.
        verbose: int. 0 silent, 1 progress bars, 2 a line per epoch.
        **sections: recipe sections as mappings, the same keys as a YAML recipe, e.g.
            `schedule={"strategy": "fine_tuning"}`, `data={"text_column": "review"}`, `recommend={"max_latency_ms": 20}`.

    Example:
    >>> result = fit("reviews.csv", backbone="minilm_l6_v2", data={"text_column": "review"})
    """
    from tlkeras.recipes import parse_recipe, train

    raw = copy.deepcopy(sections)
    data_section = dict(raw.pop("data", {}) or {})  # the recipe's data section; the positional `data` is its train
    data_section["train"] = str(data)
    if test is not None:
        data_section["test"] = str(test)
    name = Path(str(data)).stem or "run"
    raw.update(backbone=backbone, task=task, data=data_section, output_dir=output_dir or str(Path("runs") / name))
    raw.setdefault("name", name)
    recipe = parse_recipe(raw)
    result = train(recipe, verbose=verbose)
    return FitResult(result.run_dir, result.metrics, recipe)


def _plain(value):
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
