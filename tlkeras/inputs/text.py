"""Texts: the backbone's tokenizer (one layer, used by training pipelines and inside the exported serving
graph), the pooling feature extractor, and the `serving_default` signature on raw strings.

Text backbones take the keras-hub token dict their tokenizer makes ({"token_ids", "padding_mask"}, plus
"segment_ids" for BERT-like models) and return pooled features. TF-Hub text modules take strings and
tokenize inside themselves, so they need no preprocessor.
"""

from __future__ import annotations

import numpy as np

from tlkeras.errors import TlkerasError
from tlkeras.inputs import pipeline
from tlkeras.inputs.base import InputKind, InputSpec, positive_int

SERVING_DEFAULT = "serving_default"
TEXT = "text"
DEFAULT_SEQUENCE_LENGTH = 128
DECODER_FORMATS = ("gguf", "gguf_parts")  # converted decoder folders: keras-hub has no classifier preprocessor
WARMUP_SENTENCES = ("A short example sentence to warm up the model.",
                    "Another one, a little longer, with punctuation: commas, colons; and numbers like 42.")


class TextKind(InputKind):
    name = "text"
    preprocessor_files = True
    table_column = "text"
    spec_fields = ("sequence_length",)
    auto_tries_contrastive = True

    def input_column(self, path_column, text_column):
        return text_column or self.table_column

    def table_inputs(self, values, base, column, source):
        return [str(v) for v in values]

    def spec(self, entry, data) -> InputSpec:
        length = (data.sequence_length if data is not None else None) or entry.sequence_length
        return InputSpec(self.name, sequence_length=positive_int(length or DEFAULT_SEQUENCE_LENGTH,
                                                                  "sequence_length"))

    def parse_spec(self, raw) -> InputSpec:
        length = raw.get("sequence_length")
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise TlkerasError(f"config.yaml 'input.sequence_length' must be a positive int. "
                               f"Received: sequence_length={length!r}")
        return InputSpec(self.name, sequence_length=length)

    def network_input(self, spec):
        import keras

        return keras.Input(shape=(), dtype="string", name="text")

    def feature_extractor(self, entry, network, spec):
        import keras

        from tlkeras.layers import TEXT_POOLING

        if entry.source == "tf_hub":
            return network  # string in, embedding out
        names = list(network.input) if isinstance(network.input, dict) else ["token_ids", "padding_mask"]
        if isinstance(network.output, dict):
            # Keep only the token vectors: a pooler head left in the graph would get no gradients.
            network = keras.Model(network.input, network.output["sequence_output"], name=network.name)
        inputs = {key: keras.Input(shape=(None,), dtype="int32", name=key) for key in names}
        sequence = network(inputs)
        if entry.pooling not in TEXT_POOLING:
            raise TlkerasError(f"'{entry.name}': text pooling must be one of {', '.join(TEXT_POOLING)}. "
                               f"Received: pooling={entry.pooling!r}")
        pooling = TEXT_POOLING[entry.pooling](name="pool")
        return keras.Model(inputs, pooling(sequence, inputs["padding_mask"]), name=entry.name)

    def preprocessor(self, entry, handle, spec):
        if entry.source == "tf_hub":
            return None
        if entry.weights_format in DECODER_FORMATS:  # GPT-style decoders: plain ids, BOS as trained, right padding
            from tlkeras.inputs.decoder_text import decoder_preprocessor

            return decoder_preprocessor(handle, spec.sequence_length)
        import keras_hub

        return keras_hub.models.TextClassifierPreprocessor.from_preset(handle, sequence_length=spec.sequence_length)

    def dataset(self, inputs, targets, spec, batch_size, preprocessor=None, shuffle=False, seed=0, augment=None,
                repeat=False, first_epoch=None, view="identity"):
        texts = [str(t) for t in inputs]

        def batches(ds):
            ds = ds.batch(batch_size)
            return pipeline.map_inputs(ds, preprocessor, targets is not None) if preprocessor is not None else ds

        if first_epoch is not None:
            return pipeline.finish(pipeline.epochs(texts, targets, seed, first_epoch, batches), targets is not None,
                                   augment)
        ds = pipeline.shuffled(pipeline.slices(texts, targets), len(inputs), shuffle, seed, repeat)
        return pipeline.finish(batches(ds), targets is not None, augment)

    def signatures(self, model, spec, task, labels, threshold, preprocessor=None):
        import tensorflow as tf

        input_dtypes = model_input_dtypes(model)
        if preprocessor is not None:
            preprocessor(tf.constant(["build"]))  # ExportArchive tracks only built layers

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=TEXT)])
        def serve_text(text):
            if preprocessor is None:
                inputs = text
            else:
                tokens = preprocessor(text)
                # keras-hub preprocessors also return segment_ids and a bool padding_mask; the model takes
                # only its own inputs, in its own dtypes.
                inputs = {name: tf.cast(tokens[name], dtype) for name, dtype in input_dtypes.items()}
            return task.postprocess(tf.cast(model(inputs, training=False), tf.float32), labels, threshold)

        return {SERVING_DEFAULT: serve_text}

    def warmup_inputs(self, spec):
        sentences = [s.encode() for s in WARMUP_SENTENCES]
        return [(SERVING_DEFAULT, {TEXT: np.array(sentences[:1], dtype=object)}),
                (SERVING_DEFAULT, {TEXT: np.array(sentences, dtype=object)})]

    def preprocessing_description(self, spec, preprocessor=None):
        where = type(preprocessor).__name__ if preprocessor is not None else "inside the model"
        return f"in-graph tokenizer ({where}) to {spec.sequence_length} tokens"


def model_input_dtypes(model) -> dict[str, str]:
    """dict: A dict-input model's input names and dtypes, e.g. {"token_ids": "int32", ...}."""
    structure = model.input
    if isinstance(structure, dict):
        return {name: tensor.dtype for name, tensor in structure.items()}
    tensors = structure if isinstance(structure, (list, tuple)) else [structure]
    return {tensor.name: tensor.dtype for tensor in tensors}
