"""`evaluate_run`: a finished run's model scored again, on its test data or on new data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlkeras import inputs
from tlkeras.errors import TlkerasError
from tlkeras.evaluation import evaluate_predictions
from tlkeras.run_dir import RunDir


def evaluate_run(run_dir: str | Path, data: str | None = None, out_dir: str | Path | None = None) -> dict:
    """Re-evaluates a finished run's `model.keras`, on its test data or on `data`.

    Args:
        run_dir: str. A run folder, or a recipe's output_dir (its latest run).
        data: str. A class folder or table to evaluate on. Defaults to the recipe's test data.
        out_dir: str. Where to write metrics and plots. Defaults to `<run>/evaluation/<N>`, a new folder
            each time.

    Example:
    >>> evaluate_run("runs/fashion", data="data/fashion/test")["accuracy"]
    """
    import keras

    import tlkeras.layers  # noqa: F401 - registers the custom layers model.keras uses
    from tlkeras import backbones
    from tlkeras.recipes.config import parse_recipe
    from tlkeras.recipes.trainer import read_split

    run = RunDir.open(run_dir)
    run.check_complete()
    out = _empty_folder(Path(out_dir)) if out_dir else None
    config = run.config()
    recipe = parse_recipe(run.recipe_config())
    data = data or recipe.data.test or recipe.data.validation
    if not data:
        raise TlkerasError("the run's recipe has no test data: pass --data FOLDER_OR_TABLE")
    labels = run.labels(recipe.task)
    entry = backbones.entry_for(recipe.backbone)
    kind = inputs.for_entry(entry)
    spec = run.input_spec(config)
    examples = read_split(recipe, data, kind, labels or None)
    ok, bad = kind.check(examples.inputs, skip=recipe.data.skip_corrupt)
    examples = examples.select(ok)
    preprocessor = backbones.load_preprocessor(recipe.backbone, spec.sequence_length)
    dataset = kind.dataset(examples.inputs, None, spec, recipe.data.inference_batch_size, preprocessor=preprocessor)
    model = keras.models.load_model(run.model_file, compile=False)
    scores = np.asarray(model.predict(dataset, verbose=0))
    out = out or _next_folder(run.path / "evaluation")
    notes = [f"skipped {len(bad)} unreadable inputs"] if bad else []
    return evaluate_predictions(examples.targets, scores, labels, recipe.task, out_dir=out,
                                title=f"{run.path.parent.name}/{run.name} on {Path(data).name}",
                                threshold=recipe.export.threshold if recipe.export else 0.5,
                                extra={"run directory": str(run.path), "data": str(data)},
                                examples=examples.inputs, kind=kind,
                                fields={"split": str(data), "skipped": notes})


def _empty_folder(path: Path) -> Path:
    """Path: `path`, created if missing; an existing folder must be empty, so no earlier result is replaced."""
    from tlkeras import files

    if path.is_dir() and any(p for p in path.iterdir() if not p.name.startswith(".")):
        raise TlkerasError(f"--out {path} already holds files, which this evaluation must not overwrite: pass a new "
                           f"or empty folder, or leave --out out (each evaluation then gets RUN/evaluation/<N>). "
                           f"Received: out_dir={str(path)!r}")
    return files.writable_dir(path, "evaluation folder", "pass another --out")


def _next_folder(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name) for p in parent.iterdir() if p.name.isdigit()]
    number = max(numbers, default=0) + 1
    while True:
        try:
            (parent / str(number)).mkdir()
            return parent / str(number)
        except FileExistsError:
            number += 1
