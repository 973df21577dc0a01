"""The root `tlkeras` command group and its error handling."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from tlkeras.errors import TlkerasError

# Where each command lives ("module:attribute"), imported lazily by `_LazyGroup` so start-up stays fast.
COMMAND_MODULES = {
    "registry": "tlkeras.cli.registry_cmd:registry_group",
    "fetch": "tlkeras.cli.registry_cmd:fetch",
    "recommend": "tlkeras.cli.recommend_cmd:recommend",
    "train": "tlkeras.cli.train_cmd:train",
    "evaluate": "tlkeras.cli.train_cmd:evaluate",
    "lr-find": "tlkeras.cli.train_cmd:lr_find",
    "export": "tlkeras.cli.export_cmd:export",
    "deploy-config": "tlkeras.cli.export_cmd:deploy_config",
    "serve": "tlkeras.cli.serve_cmd:serve",
    "predict": "tlkeras.cli.serve_cmd:predict",
}


class _LazyGroup(click.Group):
    """Imports a command's module only when that command runs or help lists it."""

    def list_commands(self, ctx):
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx, name):
        if name not in COMMAND_MODULES:
            return None
        module_name, attribute = COMMAND_MODULES[name].split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                return None  # not built yet
            raise
        return getattr(module, attribute, None)

    def resolve_command(self, ctx, args):
        if args and args[0] not in COMMAND_MODULES and not args[0].startswith("-"):
            from tlkeras.suggest import did_you_mean

            hint = did_you_mean(args[0], COMMAND_MODULES)
            raise click.UsageError(f"no such command '{args[0]}'{hint}")
        return super().resolve_command(ctx, args)

    def main(self, *args, **kwargs):
        if not kwargs.get("standalone_mode", True):
            return super().main(*args, **kwargs)
        try:
            value = super().main(*args, **{**kwargs, "standalone_mode": False})
        except click.ClickException as err:  # usage errors, bad option values: one line, as for the rest
            where = getattr(err, "ctx", None)
            hint = f" (see '{where.command_path} --help')" if where is not None else ""
            click.echo(f"error: {_one_line(err.format_message())}{hint}", err=True)
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(value if isinstance(value, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TlkerasError as err:
            click.echo(f"error: {_one_line(str(err))}", err=True)
            sys.exit(2)
        except OSError as err:  # the disk, not the code: full, read-only, a path that vanished
            where = f" ({err.filename})" if err.filename else ""
            click.echo(f"error: {err.strerror or err}{where}: check the path, its permissions and the free disk "
                       "space, then run the command again", err=True)
            sys.exit(2)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time (click's test runner swaps it), not the stream it
    was created with."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _warning_as_log_line(message, category, filename, lineno, file=None, line=None):
    logging.getLogger("tlkeras").warning("warning: %s", message)


def show_library_log(name: str, fmt: str) -> logging.Logger:
    """Sends logger `name`'s INFO messages to stderr, once: calling it again adds no second handler, and
    the root logger (the user's, when tlkeras runs inside their program) is left alone."""
    import warnings

    warnings.showwarning = _warning_as_log_line  # one line, into train.log too, not a source excerpt
    logger = logging.getLogger(name)
    if not any(getattr(h, "_tlkeras_cli", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
        handler._tlkeras_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tlkeras")
def main():
    """tlkeras: pick a pre-trained backbone, train a recipe on your data, serve it with TF Serving."""
