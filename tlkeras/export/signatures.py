"""The serving functions of an exported model: raw inputs in, named outputs out.

Image models get two signatures:
- `serving_default`: `image_bytes`, tf.string [None], encoded JPEG/PNG/GIF/BMP/WebP of any size, grey or
  RGBA.
  Each is decoded to RGB uint8 (`decode_image(channels=3, expand_animations=False)`: the first frame of
  a GIF, alpha dropped) and resized to the recipe's image size with `tf.image.resize(method="bilinear",
  antialias=False)` straight from uint8, with no crop. That is exactly what tlkeras training does for
  evaluation; keep the two in step when either changes (recipes cannot import export, data flows one way).
- `serving_images`: `images`, uint8 [None, H, W, 3], RGB pixels already at the model's size.

Text models get `serving_default`: `text`, tf.string [None], tokenized inside the graph.

Outputs by task:
- classification: `probabilities` float32 [None, C], `class_id` int64 [None], `label` string [None];
- multilabel: `scores` float32 [None, C], `predicted` bool [None, C] (score >= threshold), `label` string
  [None] (the predicted names joined with ",", empty when none passes);
- regression: `predictions` float32 [None, T].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

SERVING_DEFAULT = "serving_default"
SERVING_IMAGES = "serving_images"
IMAGE_BYTES = "image_bytes"
IMAGES = "images"
TEXT = "text"
DEFAULT_THRESHOLD = 0.5
LABEL_SEPARATOR = ","

OUTPUTS = {
    "classification": ("probabilities", "class_id", "label"),
    "multilabel": ("scores", "predicted", "label"),
    "regression": ("predictions",),
}


def decode_and_resize(image_bytes: tf.Tensor, image_size: Sequence[int]) -> tf.Tensor:
    """tf.Tensor: Decodes a batch of encoded images to float32 RGB in [0, 255], (B, H, W, 3).

    Args:
        image_bytes: tf.string tensor (B,). JPEG, PNG, GIF, BMP or WebP bytes, any size and channel count.
        image_size: (height, width). The model's input size.
    """
    height, width = int(image_size[0]), int(image_size[1])

    def decode_one(encoded):
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        resized = tf.image.resize(image, (height, width), method="bilinear", antialias=False)
        return tf.cast(resized, tf.float32)

    return tf.map_fn(
        decode_one, image_bytes, fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32)
    )


def postprocess(outputs, task: str, labels: Sequence[str], threshold: float = DEFAULT_THRESHOLD) -> dict:
    """dict: Names a model's outputs for serving, adding class ids and label strings.

    Args:
        outputs: tensor (B, C) or (B, T). Probabilities, sigmoid scores or regression targets.
        task: str. "classification", "multilabel" or "regression".
        labels: list of str. Class names in output order; unused for regression.
        threshold: float. Multilabel decision threshold. Defaults to 0.5.
    """
    outputs = _single_output(outputs)
    outputs = tf.cast(outputs, tf.float32)  # mixed-precision heads may return bfloat16
    if task == "regression":
        return {"predictions": outputs}
    names = tf.constant(list(labels), dtype=tf.string)
    if task == "classification":
        class_id = tf.argmax(outputs, axis=-1, output_type=tf.int64)
        return {"probabilities": outputs, "class_id": class_id, "label": tf.gather(names, class_id)}
    predicted = outputs >= threshold
    # Keeps to core ops (no ragged reduce): join "name," for each hit, then drop the final separator.
    pieces = tf.where(predicted, names + LABEL_SEPARATOR, "")
    joined = tf.strings.reduce_join(pieces, axis=-1)
    label = tf.strings.regex_replace(joined, f"{LABEL_SEPARATOR}$", "")
    return {"scores": outputs, "predicted": predicted, "label": label}


def image_signatures(model, image_size: Sequence[int], task: str, labels: Sequence[str],
                     threshold: float = DEFAULT_THRESHOLD) -> dict[str, Callable]:
    """dict: The `serving_default` (encoded bytes) and `serving_images` (uint8 pixels) functions.

    Args:
        model: keras.Model. Takes float32 RGB pixels in [0, 255], (B, H, W, 3).
        image_size: (height, width).
        task: str. "classification", "multilabel" or "regression".
        labels: list of str. Class names in output order.
        threshold: float. Multilabel decision threshold. Defaults to 0.5.
    """
    height, width = int(image_size[0]), int(image_size[1])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)])
    def serve_bytes(image_bytes):
        pixels = decode_and_resize(image_bytes, (height, width))
        return postprocess(model(pixels, training=False), task, labels, threshold)

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8, name=IMAGES)])
    def serve_images(images):
        pixels = tf.cast(images, tf.float32)
        return postprocess(model(pixels, training=False), task, labels, threshold)

    return {SERVING_DEFAULT: serve_bytes, SERVING_IMAGES: serve_images}


def text_signatures(model, tokenizer, task: str, labels: Sequence[str],
                    threshold: float = DEFAULT_THRESHOLD) -> dict[str, Callable]:
    """dict: The `serving_default` function: a batch of strings in, named outputs out.

    Args:
        model: keras.Model. Takes {"token_ids", "padding_mask"} int32 (B, L), or strings when `tokenizer`
            is None (a backbone that tokenizes inside itself).
        tokenizer: callable or None. Maps a tf.string batch to a dict holding at least the model's input
            names, e.g. a keras-hub `TextClassifierPreprocessor`.
        task: str. "classification", "multilabel" or "regression".
        labels: list of str. Class names in output order.
        threshold: float. Multilabel decision threshold. Defaults to 0.5.
    """
    input_dtypes = model_input_dtypes(model)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=TEXT)])
    def serve_text(text):
        if tokenizer is None:
            inputs = text
        else:
            tokens = tokenizer(text)
            # keras-hub preprocessors also return segment_ids and a bool padding_mask; the model takes
            # only its own inputs, in its own dtypes.
            inputs = {name: tf.cast(tokens[name], dtype) for name, dtype in input_dtypes.items()}
        return postprocess(model(inputs, training=False), task, labels, threshold)

    return {SERVING_DEFAULT: serve_text}


def model_input_dtypes(model) -> dict[str, str]:
    """dict: A dict-input model's input names and dtypes, e.g. {"token_ids": "int32", ...}."""
    structure = model.input
    if isinstance(structure, dict):
        return {name: tensor.dtype for name, tensor in structure.items()}
    tensors = structure if isinstance(structure, (list, tuple)) else [structure]
    return {tensor.name: tensor.dtype for tensor in tensors}


def _single_output(outputs):
    if isinstance(outputs, dict) and len(outputs) == 1:
        return next(iter(outputs.values()))
    if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
        return outputs[0]
    return outputs
