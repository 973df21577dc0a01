"""A local server speaking TF Serving's REST (and gRPC) API over SavedModels, and a client for it.

The same client code works against this server and a real TF Serving deployment of the same exports.

Example:
>>> from tlkeras import serve
>>> serve.run_server("exports", port=8501)                      # in one process
>>> serve.predict("http://localhost:8501", "flowers", [Path("rose.jpg")])   # in another
[{'class_id': 3, 'label': 'rose', 'probabilities': [...]}]
"""

import importlib

# Imported on first use: the client must not pay for TensorFlow or numpy.
_EXPORTS = {
    "predict": "tlkeras.serve.client",
    "run_server": "tlkeras.serve.server",
    "ModelRepository": "tlkeras.serve.repository",
    "RestServer": "tlkeras.serve.rest",
    "ServingError": "tlkeras.serve.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tlkeras.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
