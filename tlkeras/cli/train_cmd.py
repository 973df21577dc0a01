"""`tlkeras train`, `tlkeras evaluate` and `tlkeras lr-find`."""

from __future__ import annotations

import json
from pathlib import Path

import click

set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a recipe value, e.g. --set schedule.epochs=3 (repeatable).")


def _quiet_tensorflow() -> None:
    import os

    from tlkeras.cli.app import show_library_log

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    show_library_log("tlkeras", "%(message)s")


@click.command("train")
@click.argument("recipe", type=click.Path())
@set_option
@click.option("--resume", is_flag=True, help="Continue the latest run in the recipe's output_dir, if unfinished.")
@click.option("--verbose", type=click.IntRange(0, 2), default=1, help="1 progress bars, 2 a line per epoch.")
def train(recipe, overrides, resume, verbose):
    """Train and evaluate a recipe; export it too if the recipe has an `export:` section."""
    _quiet_tensorflow()
    from tlkeras import recipes

    config = recipes.load_recipe(recipe, list(overrides))
    _check_creatable(config.output_dir, "output folder", "choose another output_dir (e.g. --set output_dir=runs/new)")
    if config.export:
        _check_creatable(config.export.base_dir, "export folder", "choose another export.base_dir")
    result = recipes.train(config, resume=resume, verbose=verbose)
    from tlkeras.recipes.distribute import is_chief

    if not is_chief(config.distribution):
        click.echo("multi-worker run: this worker's copy of the run was discarded; the chief wrote the run")
        return
    _print_metrics(result.metrics, result.run_dir)
    if config.export:
        from tlkeras.export import export_run

        path = export_run(result.run_dir, config.export.base_dir, config.export.name or None,
                          tflite=config.export.tflite)
        click.echo(f"exported: {path}")


@click.command("evaluate")
@click.argument("run_dir", type=click.Path())
@click.option("--data", help="Class folder or CSV/Parquet table. Defaults to the recipe's test data.")
@click.option("--out", "out_dir", type=click.Path(), help="Output folder. Defaults to RUN/evaluation/<N>.")
def evaluate(run_dir, data, out_dir):
    """Evaluate a trained run (a run folder, or a recipe's output_dir for its latest run): metrics.json,
    confusion matrix, ROC curves and report.html."""
    _quiet_tensorflow()
    from tlkeras.recipes import evaluate_run

    metrics = evaluate_run(run_dir, data=data, out_dir=out_dir)
    _print_metrics(metrics, Path(metrics["files"][-1]).parent)


@click.command("lr-find")
@click.argument("recipe", type=click.Path())
@set_option
@click.option("--steps", type=click.IntRange(2, 100000), default=100, show_default=True)
@click.option("--start", type=click.FloatRange(0, 10, min_open=True), default=1e-6, show_default=True)
@click.option("--end", type=click.FloatRange(0, 10, min_open=True), default=1.0, show_default=True)
def lr_find(recipe, overrides, steps, start, end):
    """Learning-rate range test: suggests a learning rate and saves lr_find.png into OUTPUT_DIR/lr_find/<N>
    (never into a run)."""
    if start >= end:
        raise click.BadParameter(f"--start must be below --end, e.g. --start 1e-6 --end 1. Received: --start {start} "
                                 f"--end {end}", param_hint="--start")
    _quiet_tensorflow()
    from tlkeras import recipes
    from tlkeras.recipes.evaluate import _next_folder
    from tlkeras.recipes.lr_find import lr_find as run_range_test

    config = recipes.load_recipe(recipe, list(overrides))
    _check_creatable(config.output_dir, "output folder", "choose another output_dir (e.g. --set output_dir=runs/new)")
    trainer = recipes.Trainer.from_recipe(config, verbose=0)
    out = _next_folder(Path(config.output_dir) / "lr_find")
    result = run_range_test(trainer, out, start=start, end=end, steps=steps)
    click.echo(f"suggested learning rate: {result['suggested_learning_rate']:.3g} (plot: {out / 'lr_find.png'})")


def _check_creatable(path: str, what: str, fix: str) -> None:
    """Fails now, before any training, when `path` could not be created as a folder later."""
    from tlkeras.errors import TlkerasError

    target = Path(path).expanduser().absolute()
    if target.is_dir():
        return
    if target.exists():
        raise TlkerasError(f"the {what} {target} is a file, not a folder: {fix}. Received: {target}")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise TlkerasError(f"cannot create the {what} {target}: {parent} is a file, not a folder: {fix}. "
                           f"Received: {target}")
    import os

    if not os.access(parent, os.W_OK | os.X_OK):
        raise TlkerasError(f"cannot create the {what} {target}: {parent} is not writable: {fix}. Received: {target}")


def _print_metrics(metrics: dict, where: Path) -> None:
    keys = ["accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "roc_auc", "subset_accuracy",
            "mae", "rmse", "r2"]
    shown = {k: round(metrics[k], 4) for k in keys if isinstance(metrics.get(k), (int, float))}
    click.echo(json.dumps(shown))
    click.echo(f"report: {Path(where) / 'report.html'}")
