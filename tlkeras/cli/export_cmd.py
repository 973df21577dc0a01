"""`tlkeras export` and `tlkeras deploy-config`. TensorFlow loads only when `export` runs."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--base-dir", type=click.Path(file_okay=False),
              help="Model base folder for TF Serving. Defaults to the recipe's export.base_dir.")
@click.option("--name", help="Served model name. Defaults to the recipe's export.name, else the run folder name.")
@click.option("--version", type=click.IntRange(min=1), help="Version number. Defaults to the newest + 1.")
@click.option("--tflite", is_flag=True, default=False, help="Also write assets.extra/model.tflite.")
def export(run_dir, base_dir, name, version, tflite):
    """Export RUN_DIR as a new SavedModel version under BASE_DIR/NAME, preprocessing inside."""
    import json
    import warnings

    from tlkeras.export import export_run
    from tlkeras.export.exporter import CustomOpsWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CustomOpsWarning)
        path = export_run(run_dir, base_dir=base_dir, name=name, version=version, tflite=tflite)
    card = json.loads((path / "assets.extra" / "model_card.json").read_text())
    click.echo(f"exported {path}")
    for signature, io in card["signatures"].items():
        click.echo(f"  {signature}: {', '.join(io['inputs'])} -> {', '.join(io['outputs'])}")
    for warning in caught:
        if issubclass(warning.category, CustomOpsWarning):
            click.echo(f"warning: {warning.message}", err=True)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)


@click.command("deploy-config")
@click.argument("models_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Where to write models.config and batching_parameters.txt. Defaults to MODELS_DIR.")
@click.option("--mount", default="/models", show_default=True,
              help="MODELS_DIR's path inside the serving container.")
@click.option("--policy", type=click.Choice(["latest", "all", "specific"]), default="latest", show_default=True,
              help="Versions to load: the newest --keep (new exports go live by themselves), every version, "
                   "or the newest --keep that exist now (pinned until this config is rewritten).")
@click.option("--keep", type=click.IntRange(min=1), default=2, show_default=True,
              help="Versions to load per model under latest and specific.")
@click.option("--stable", "stable_pins", multiple=True, metavar="NAME=VERSION",
              help="Put the stable label on this version instead of the newest (repeatable), e.g. to roll back.")
@click.option("--batch-threads", type=click.IntRange(min=1),
              help="Batch threads; match the server's cores. Defaults to this machine's cores.")
def deploy_config(models_dir, out_dir, mount, policy, keep, stable_pins, batch_threads):
    """Write TF Serving's models.config and batching_parameters.txt for the models in MODELS_DIR."""
    from tlkeras.export.deploy import model_versions, served_versions, write_deploy_config

    stable = _parse_pins(stable_pins)
    config_path, batching_path = write_deploy_config(
        models_dir, out_dir, mount=mount, policy=policy, keep=keep, stable=stable, num_batch_threads=batch_threads
    )
    for name, versions in model_versions(models_dir).items():
        served = ", ".join(map(str, served_versions(versions, policy, keep)))
        click.echo(f"{name}: serving versions {served} ({policy}), stable -> {stable.get(name, versions[-1])}")
    click.echo(f"wrote {config_path}")
    click.echo(f"wrote {batching_path}")


def _parse_pins(pins) -> dict[str, int]:
    parsed = {}
    for pin in pins:
        name, _, version = pin.partition("=")
        if not name or not version.isdigit():
            raise click.BadParameter(f"expected NAME=VERSION, e.g. pets=3. Received: {pin!r}", param_hint="--stable")
        parsed[name] = int(version)
    return parsed
