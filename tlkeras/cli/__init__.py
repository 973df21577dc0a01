"""The `tlkeras` command line: a thin layer over the library.

Each command module registers its commands on `main`. Heavy imports (TensorFlow, Keras) happen inside
the commands that need them, so `tlkeras --help` and registry queries start fast.
"""

from tlkeras.cli.app import main

__all__ = ["main"]
