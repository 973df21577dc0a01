"""Text in, token ids out, for GPT-style decoder backbones (converted GGUF folders such as SmolLM2 and Gemma 3).

keras-hub's decoder preprocessors (`Llama3CausalLMPreprocessor`, ...) are built for generation and
training a language model: they return (x, y, sample_weight) shifted by one token. A feature extractor
needs the plain `{"token_ids", "padding_mask"}` of a batch of strings, with the BOS token where the model
was trained with one and padding on the right, which is what `DecoderTextPreprocessor` makes. It is made
of keras-hub layers only (the preset's tokenizer and a `StartEndPacker`), so the same object runs eagerly,
inside `tf.data.Dataset.map` and inside an exported SavedModel.

Example:
>>> preprocess = decoder_preprocessor(weights_location(registry.get("smollm2_135m_instruct")), 128)
>>> preprocess(tf.constant(["The capital of France is"]))["token_ids"].shape
TensorShape([1, 128])
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tlkeras")
class DecoderTextPreprocessor(keras.layers.Layer):
    """Maps a batch of strings to a decoder's `{"token_ids", "padding_mask"}`, int32 (B, sequence_length).

    Tokens past `sequence_length` are dropped; shorter texts are padded on the right with `pad_token_id`
    and a 0 in `padding_mask`.

    Args:
        tokenizer: keras_hub.tokenizers.Tokenizer. The decoder's tokenizer.
        sequence_length: int. Tokens per text, BOS included. Defaults to 128.
        start_token_id: int or None. Put first in every text (the model's BOS), or None for models
            trained without one. Defaults to None.
        pad_token_id: int. The id written in padded positions (they are masked out). Defaults to 0.

    Example:
    >>> preprocess = DecoderTextPreprocessor(tokenizer, sequence_length=8, start_token_id=2)
    >>> preprocess(tf.constant(["a short text"]))["padding_mask"]
    """

    def __init__(self, tokenizer, sequence_length=128, start_token_id=None, pad_token_id=0, **kwargs):
        super().__init__(**kwargs)
        import keras_hub

        # One code path everywhere: eagerly, keras-hub 0.32 runs a pure-Python tokenizer that splits runs
        # of whitespace differently from its TensorFlow path (used in tf.data and SavedModels).
        tokenizer._allow_python_workflow = False
        self.tokenizer = tokenizer
        self.sequence_length = int(sequence_length)
        self.start_token_id = None if start_token_id is None else int(start_token_id)
        self.pad_token_id = int(pad_token_id)
        self.packer = keras_hub.layers.StartEndPacker(
            sequence_length=self.sequence_length, start_value=self.start_token_id,
            pad_value=self.pad_token_id, return_padding_mask=True, name="packer", _allow_python_workflow=False)

    def call(self, texts):
        token_ids, padding_mask = self.packer(self.tokenizer(texts))
        return {"token_ids": tf.cast(token_ids, tf.int32), "padding_mask": tf.cast(padding_mask, tf.int32)}

    def get_config(self):
        return {**super().get_config(), "tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
                "sequence_length": self.sequence_length, "start_token_id": self.start_token_id,
                "pad_token_id": self.pad_token_id}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["tokenizer"] = keras.saving.deserialize_keras_object(config["tokenizer"])
        return cls(**config)


def decoder_preprocessor(preset: str | os.PathLike, sequence_length: int = 128) -> DecoderTextPreprocessor:
    """Returns the `DecoderTextPreprocessor` of a decoder preset folder, BOS and padding as the model expects.

    The folder's `tokenizer_config.json` says whether the model adds a BOS token (`add_bos_token`, with
    `bos_token`) and which token pads (`pad_token`); the tokenizer is keras-hub's for the folder's model.

    Args:
        preset: str or Path. A Hugging Face style folder, e.g. the `converted/` folder of a GGUF entry.
        sequence_length: int. Tokens per text, BOS included. Defaults to 128.

    Example:
    >>> preprocess = decoder_preprocessor("~/.cache/tlkeras/weights/gemma3_270m/fe5120b1be288bc2/converted", 64)
    >>> ds = tf.data.Dataset.from_tensor_slices(texts).batch(8).map(preprocess)
    """
    import keras_hub

    preset = Path(preset).expanduser()
    tokenizer = keras_hub.models.Tokenizer.from_preset(str(preset))
    config_path = preset / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    start = tokenizer.token_to_id(config["bos_token"]) if config.get("add_bos_token") else None
    pad = tokenizer.token_to_id(config["pad_token"]) if config.get("pad_token") else 0
    return DecoderTextPreprocessor(tokenizer, sequence_length, start_token_id=start, pad_token_id=pad,
                                   name="decoder_preprocessor")
