"""Export a trained model for TF Serving: a versioned SavedModel with its preprocessing inside.

Example:
>>> from tlkeras.export import export_run, write_deploy_config
>>> export_run("runs/fashion", "models", "fashion")
PosixPath('models/fashion/1')
>>> write_deploy_config("models")
(PosixPath('models/models.config'), PosixPath('models/batching_parameters.txt'))

Names load on first use, so `import tlkeras.export` does not import TensorFlow.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "export_run": "tlkeras.export.exporter",
    "export_model": "tlkeras.export.exporter",
    "load_run_model": "tlkeras.export.exporter",
    "write_deploy_config": "tlkeras.export.deploy",
    "model_server_config": "tlkeras.export.deploy",
    "batching_parameters": "tlkeras.export.deploy",
    "non_core_ops": "tlkeras.export.saved_model",
    "existing_versions": "tlkeras.export.saved_model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tlkeras.export' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
