"""TFLite conversion of the Keras model, for on-device use beside the SavedModel.

The .tflite file takes the model's own inputs (float32 pixels already resized, or token ids): decoding,
resizing and tokenizing stay with the app. It lives in `assets.extra/`, which TF Serving ignores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlkeras.errors import TlkerasError

TFLITE_FILE = "model.tflite"


def convert_to_tflite(model, path: str | Path) -> dict[str, Any]:
    """dict: Converts `model` to a TFLite flatbuffer at `path` and describes its inputs.

    Builtin TFLite ops are tried first; if some op has no builtin kernel, the conversion is retried with
    Select TF ops, which needs the Flex delegate at run time (the returned dict says which happened).

    Args:
        model: keras.Model. An image model (float32 (B, H, W, 3)) or a text model ({"token_ids",
            "padding_mask"} int32 (B, L)).
        path: str or Path. Where to write the .tflite file.
    """
    import tempfile

    import tensorflow as tf

    from tlkeras.export.saved_model import save_signatures

    function = _inference_function(model)
    with tempfile.TemporaryDirectory() as tmp:
        # Converting a concrete function directly leaves Keras variables as uninitialised TFLite
        # resource variables (NaN outputs); going through a SavedModel freezes them as constants.
        save_signatures(tmp, {"serving_default": function})
        select_tf_ops = False
        try:
            flatbuffer = _convert(tmp, select_tf_ops=False)
        except Exception:  # noqa: BLE001 - the converter raises several types; Select TF ops is the fallback
            select_tf_ops = True
            try:
                flatbuffer = _convert(tmp, select_tf_ops=True)
            except Exception as err:  # noqa: BLE001
                raise TlkerasError(f"TFLite conversion failed ({_first_line(err)}); export without --tflite, "
                                   "the SavedModel does not need it") from err
    from tlkeras import files

    files.write_bytes(path, flatbuffer)
    return {
        "file": Path(path).name,
        "signature": "serving_default",  # interpreter.get_signature_runner("serving_default")(**inputs)
        "inputs": {spec.name: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
                   for spec in tf.nest.flatten(function.input_signature)},
        "select_tf_ops": select_tf_ops,
        "preprocessing": "none: feed the model's own inputs (resized float32 RGB pixels in [0, 255], "
                         "or token ids and padding mask)",
    }


def _inference_function(model):
    import tensorflow as tf

    structure = model.input
    if isinstance(structure, dict):
        # Keyword arguments keep the input names in the TFLite signature.
        specs = {name: tf.TensorSpec([1, *t.shape[1:]], t.dtype, name=name) for name, t in structure.items()}
        names = list(specs)

        @tf.function(input_signature=[specs[name] for name in names])
        def infer(*tensors):
            return {"output": model(dict(zip(names, tensors, strict=True)), training=False)}

        return infer
    # TFLite prefers a static batch of 1; the interpreter can resize it later.
    spec = tf.TensorSpec([1, *structure.shape[1:]], structure.dtype, name=structure.name or "input")

    @tf.function(input_signature=[spec])
    def infer(x):
        return {"output": model(x, training=False)}

    return infer


def _convert(saved_model_dir: str, select_tf_ops: bool) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=["serving_default"])
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if select_tf_ops:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    return converter.convert()



def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
