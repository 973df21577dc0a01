"""`tlkeras recommend DATA`: rank the backbones that run here on the user's data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.command("recommend")
@click.argument("data", type=click.Path(exists=True))
@click.option("--domain", type=click.Choice(["image", "text", "audio"]), help="Input kind. Guessed from DATA.")
@click.option("--task", default="classification", show_default=True)
@click.option("--candidates", help="fnmatch pattern on backbone names, e.g. 'efficientnet*'.")
@click.option("--max-params", type=click.FloatRange(min=0, min_open=True), help="Skip bigger backbones, e.g. 2e7.")
@click.option("--max-latency-ms", type=click.FloatRange(min=0, min_open=True),
              help="Mark backbones slower than this at batch 1 as too slow.")
@click.option("--sample", type=click.IntRange(min=10), default=500, show_default=True,
              help="Examples compared on (stratified).")
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True)
@click.option("--text-column", help="Column of texts, for tables.")
@click.option("--path-column", help="Column of file paths, for tables.")
@click.option("--label-column", default="label", show_default=True)
@click.option("--all", "include_unavailable", is_flag=True, help="Also list backbones that cannot run here, with why.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Write recommendation.csv/json, pareto.png and report.html here.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table")
def recommend(data, domain, task, candidates, max_params, max_latency_ms, sample, folds, text_column, path_column,
              label_column, include_unavailable, out_dir, fmt):
    """Rank backbones on DATA (a class folder or a table): cross-validated probe accuracy, LogME, latency."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tlkeras.recommend import recommend as rank

    table = rank(data, domain=domain, task=task, candidates=candidates, max_params=max_params,
                 max_latency_ms=max_latency_ms, sample=sample, folds=folds, text_column=text_column,
                 path_column=path_column, label_column=label_column, include_unavailable=include_unavailable,
                 out_dir=out_dir, progress=fmt == "table")
    if fmt == "json":
        click.echo(json.dumps(table.astype(object).where(table.notna(), None).to_dict("records"), indent=1))
    elif fmt == "csv":
        table.to_csv(sys.stdout, index=False)
    else:
        from rich.console import Console
        from rich.table import Table

        shown = ["rank", "tier", "name", "probe_accuracy", "probe_std", "logme", "latency_ms", "throughput", "params",
                 "pareto", "status"]
        out = Table()
        for column in shown:
            out.add_column(column)
        for row in table.itertuples():
            out.add_row(*("" if getattr(row, c) is None or getattr(row, c) != getattr(row, c) else str(getattr(row, c))
                          for c in shown))
        Console(width=None if Console().is_terminal else 170).print(out)
        if out_dir:
            click.echo(f"report: {Path(out_dir) / 'report.html'}")
