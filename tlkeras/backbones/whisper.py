"""Whisper as an audio backbone: keras-hub's `WhisperBackbone` rebuilt from converted arrays, its encoder
as a feature extractor with the log-mel front end inside the model, and a greedy transcriber that
proves the conversion.

The feature extractor takes a 16 kHz mono waveform (B, samples), float32 in [-1, 1]. Inside the model,
keras-hub's `WhisperAudioConverter` (TensorFlow ops: it runs in `tf.data`, `tf.function` and an exported
SavedModel) pads or trims it to the window of `clip_seconds` and computes 80 log-mel bins every 10 ms;
the encoder halves the frame rate, so a window of S seconds gives 50 * S encoder frames of 384 values.

Pooling averages only the encoder frames that hold audio: a clip is the waveform up to its last non-zero
sample (zero padding, from the converter or from `audio_ops.pad_or_trim`, is not audio), and encoder
frame t covers samples [320 t, 320 (t + 1)), so a clip of n samples fills ceil(n / 320) frames. A 2 s clip
in a 30 s window is pooled over its 100 frames, not with the 1,400 frames of silence after it. The
encoder still attends over the whole window, as Whisper was trained to.

Example:
>>> extractor = encoder_model(build_backbone(folder), clip_seconds=30)
>>> extractor(np.zeros((2, 32000), "float32")).shape
(2, 384)
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import keras
import numpy as np
from keras import ops

from tlkeras.errors import TlkerasError
from tlkeras.layers import MaskedMeanPooling
from tlkeras.weights.converters import ARRAYS_FILE
from tlkeras.weights.converters.ctranslate2_whisper import (
    CONFIG_FILE,
    MERGES_FILE,
    SPECIAL_TOKENS_FILE,
    VOCABULARY_FILE,
)

SAMPLE_RATE = 16000
HOP = 160  # samples between log-mel frames (10 ms)
SAMPLES_PER_ENCODER_FRAME = 2 * HOP  # the encoder's second convolution has stride 2
TRAINED_CLIP_SECONDS = 30  # Whisper saw only 30 s windows: its position table has 1,500 encoder frames


def read_config(folder: str | Path) -> dict:
    """dict: The `whisper_config.json` the converter wrote (the `WhisperBackbone` arguments and tokens)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise TlkerasError(f"{folder} holds no {CONFIG_FILE}: it is not a converted Whisper folder; re-fetch "
                           "the weights with `tlkeras fetch NAME --force`")
    return json.loads(path.read_text())


def build_backbone(folder: str | Path, weights: bool = True):
    """Builds keras-hub's `WhisperBackbone` as the converted folder describes, with its weights.

    Args:
        folder: str or Path. A folder written by the `ctranslate2` converter.
        weights: bool. Assign the converted arrays; False leaves the random initialisation.
            Defaults to True.

    Returns:
        A `keras_hub.models.WhisperBackbone` (encoder and decoder).

    Example:
    >>> backbone = build_backbone(weights_location(registry.get("whisper_tiny_en_encoder")))
    >>> backbone.count_params()
    37760256
    """
    import keras_hub

    config = read_config(folder)
    backbone = keras_hub.models.WhisperBackbone(**config["backbone"], name="whisper_backbone")
    if weights:
        from safetensors.numpy import load_file

        assign_by_path(backbone, load_file(str(Path(folder) / ARRAYS_FILE)), source=str(folder))
    return backbone


def assign_by_path(model: keras.Model, arrays: dict[str, np.ndarray], source: str = "arrays") -> None:
    """Assigns arrays keyed by Keras variable path onto a model, all or nothing.

    Every variable of the model must get an array of its exact shape, and every array must be used;
    nothing is assigned until all of that holds.

    Args:
        model: keras.Model. The network to fill.
        arrays: dict. Variable path -> numpy array.
        source: str. Where the arrays came from, for error messages. Defaults to "arrays".

    Raises:
        TlkerasError: naming the missing, unused or mis-shaped variables.
    """
    variables = {}
    for variable in model.weights:
        if variable.path in variables:
            raise TlkerasError(f"{model.name} has two variables at path '{variable.path}': cannot assign by path")
        variables[variable.path] = variable
    missing = sorted(set(variables) - set(arrays))
    unused = sorted(set(arrays) - set(variables))
    wrong = [f"{path} {tuple(variables[path].shape)} != {arrays[path].shape}" for path in sorted(variables)
             if path in arrays and tuple(variables[path].shape) != arrays[path].shape]
    for problem, names in (("has no arrays for", missing), ("has arrays the model lacks:", unused),
                           ("has arrays of the wrong shape:", wrong)):
        if names:
            raise TlkerasError(f"{source} {problem} {names[:4]}{' ...' if len(names) > 4 else ''} "
                               f"({len(names)} in all): it does not fit {model.name}; re-fetch the weights")
    for path, variable in variables.items():
        variable.assign(arrays[path].astype(variable.dtype))


def _encoder_network(backbone) -> keras.Model:
    """The backbone's encoder half as its own model: log-mel (B, frames, 80) -> hidden states (B, T, 384)."""
    return keras.Model(backbone.input["encoder_features"], backbone.output["encoder_sequence_output"],
                       name="whisper_encoder")


@keras.saving.register_keras_serializable(package="tlkeras")
class AudioFrameMask(keras.layers.Layer):
    """Marks the encoder frames that hold audio, from the waveform the encoder saw.

    A clip ends at its last non-zero sample; the frames up to ceil(length / samples_per_frame) hold it
    (at least one, so an all-zero clip still pools to a vector).

    Args:
        num_samples: int. The window the waveform is padded or trimmed to.
        samples_per_frame: int. Samples per encoder frame. Defaults to 320 (Whisper at 16 kHz).

    Call with a waveform (B, samples); returns an int32 mask (B, num_samples // samples_per_frame).
    """

    def __init__(self, num_samples: int, samples_per_frame: int = SAMPLES_PER_ENCODER_FRAME, **kwargs):
        super().__init__(**kwargs)
        self.num_samples, self.samples_per_frame = int(num_samples), int(samples_per_frame)

    def call(self, waveform):
        waveform = waveform[:, : self.num_samples]
        positions = ops.arange(1, ops.shape(waveform)[1] + 1, dtype="int32")
        length = ops.max(ops.where(ops.not_equal(waveform, 0), positions[None, :], 0), axis=1)
        frames = (length + self.samples_per_frame - 1) // self.samples_per_frame
        total = self.num_samples // self.samples_per_frame
        frames = ops.clip(frames, 1, total)
        return ops.cast(ops.arange(total, dtype="int32")[None, :] < frames[:, None], "int32")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_samples // self.samples_per_frame)

    def get_config(self):
        return {**super().get_config(), "num_samples": self.num_samples,
                "samples_per_frame": self.samples_per_frame}


def encoder_model(backbone, clip_seconds: int = TRAINED_CLIP_SECONDS, inputs: str = "waveform",
                  pooled: bool = True, name: str = "whisper_encoder_features") -> keras.Model:
    """The Whisper encoder as a feature extractor.

    Args:
        backbone: keras_hub.models.WhisperBackbone. From `build_backbone`.
        clip_seconds: int. The window in seconds; waveforms are zero-padded or trimmed to it. Whisper was
            trained on 30 s only; shorter windows use the first 50 * clip_seconds encoder positions
            (faster, features drift: see the catalog entry's caveats). Defaults to 30.
        inputs: str. "waveform": 16 kHz mono float32 (B, samples), log-mel computed inside the model;
            "log_mel": Whisper log-mel features (B, 100 * clip_seconds, 80). Defaults to "waveform".
        pooled: bool. Return (B, 384), the mean over the frames that hold audio (over all frames for
            "log_mel" input, which does not say where the audio ends); False returns the hidden states
            (B, 50 * clip_seconds, 384). Defaults to True.
        name: str. The model's name. Defaults to "whisper_encoder_features".

    Returns:
        A functional `keras.Model`.

    Example:
    >>> encoder_model(backbone, clip_seconds=10, pooled=False).output_shape
    (None, 500, 384)
    """
    import keras_hub

    if not isinstance(clip_seconds, int) or not 1 <= clip_seconds <= TRAINED_CLIP_SECONDS:
        raise TlkerasError(f"clip_seconds must be a whole number of seconds from 1 to {TRAINED_CLIP_SECONDS} "
                           f"(Whisper's position table ends at 30 s). Received: clip_seconds={clip_seconds!r}")
    if inputs not in ("waveform", "log_mel"):
        raise TlkerasError(f"inputs must be 'waveform' or 'log_mel'. Received: inputs={inputs!r}")
    encoder = _encoder_network(backbone)
    num_samples = clip_seconds * SAMPLE_RATE
    if inputs == "waveform":
        source = keras.Input(shape=(None,), dtype="float32", name="audio")
        features = keras_hub.layers.WhisperAudioConverter(
            num_mels=backbone.num_mels, sampling_rate=SAMPLE_RATE, stride=HOP, max_audio_length=clip_seconds,
            name="log_mel")(source)
    else:
        source = features = keras.Input(shape=(clip_seconds * SAMPLE_RATE // HOP, backbone.num_mels),
                                        dtype="float32", name="log_mel")
    hidden = encoder(features)
    if not pooled:
        return keras.Model(source, hidden, name=name)
    if inputs == "waveform":
        mask = AudioFrameMask(num_samples, name="audio_frames")(source)
    else:
        mask = ops.ones_like(hidden[:, :, 0], dtype="int32")
    return keras.Model(source, MaskedMeanPooling(name="pool")(hidden, mask), name=name)


def audio_frames(num_samples: int) -> int:
    """int: How many encoder frames a clip of `num_samples` 16 kHz samples fills: ceil(n / 320)."""
    return max(1, math.ceil(num_samples / SAMPLES_PER_ENCODER_FRAME))


def from_entry(entry, weights: bool = True, clip_seconds: int | None = None) -> keras.Model:
    """The feature extractor of a catalog entry: waveform (B, samples) -> pooled features (B, 384).

    Args:
        entry: BackboneEntry. `weights_format: ctranslate2`, `architecture: WhisperBackbone`; its
            `clip_seconds` sets the window (30 when unset).
        weights: bool. Load the pre-trained weights (they must be fetched). With False the architecture
            comes from the fetched config when there is one, else from the entry's tiny.en defaults.
            Defaults to True.
        clip_seconds: int. The window, overriding the entry's (a recipe's `data.clip_seconds`).
    """
    from tlkeras.weights import is_fetched, weights_location

    clip = clip_seconds or entry.clip_seconds or TRAINED_CLIP_SECONDS
    if entry.pooling not in ("mean", "avg"):
        raise TlkerasError(f"'{entry.name}': Whisper features pool by the mean over the frames that hold audio. "
                           f"Received: pooling={entry.pooling!r}")
    if weights or is_fetched(entry):
        backbone = build_backbone(weights_location(entry), weights=weights)
    else:
        import keras_hub

        backbone = keras_hub.models.WhisperBackbone(**TINY_EN, name="whisper_backbone")
    return encoder_model(backbone, clip_seconds=clip, name=entry.name)


# tiny.en's architecture, for building it without fetched weights.
TINY_EN = {"vocabulary_size": 51864, "num_layers": 4, "num_heads": 6, "hidden_dim": 384,
           "intermediate_dim": 1536, "num_mels": 80, "max_encoder_sequence_length": 3000,
           "max_decoder_sequence_length": 448}


class GreedyTranscriber:
    """English transcription with the converted decoder, greedy, no timestamps: proof that the weights
    converted right, not a speech-recognition product (no beam search, no 30 s chunking).

    Args:
        folder: str or Path. A converted Whisper folder (arrays, config, tokenizer files).
        backbone: WhisperBackbone. An already built backbone. Defaults to None (built from `folder`).

    Example:
    >>> transcriber = GreedyTranscriber(weights_location(registry.get("whisper_tiny_en_encoder")))
    >>> transcriber(waveform_16k)
    'The quick brown fox ...'
    """

    def __init__(self, folder: str | Path, backbone=None):
        import keras_hub
        import tensorflow as tf

        folder = Path(folder)
        self.config = read_config(folder)
        self.backbone = backbone or build_backbone(folder)
        self.tokenizer = keras_hub.tokenizers.WhisperTokenizer(
            vocabulary=str(folder / VOCABULARY_FILE), merges=str(folder / MERGES_FILE),
            special_tokens=str(folder / SPECIAL_TOKENS_FILE))
        self.encoder = encoder_model(self.backbone, pooled=False)
        hidden_dim = self.config["backbone"]["hidden_dim"]
        self._step = tf.function(self._next_logits, input_signature=[  # one trace for every prefix length
            tf.TensorSpec([1, None], tf.int32), tf.TensorSpec([1, None, hidden_dim], tf.float32)])
        tokens = self.config["tokenizer"]
        self.prompt = [tokens["startoftranscript"], tokens["notimestamps"]]
        self.end = tokens["endoftext"]
        generation = self.config.get("generation", {})
        vocabulary = self.config["backbone"]["vocabulary_size"]
        self.suppress = np.zeros(vocabulary, dtype=bool)
        self.suppress[list(generation.get("suppress_ids", []))] = True
        self.suppress[tokens["first_timestamp"]:] = True  # timestamps
        self.suppress[self.end + 1: tokens["first_timestamp"]] = True  # other special tokens
        self.suppress_begin = np.zeros(vocabulary, dtype=bool)
        self.suppress_begin[list(generation.get("suppress_ids_begin", []))] = True

    def _next_logits(self, tokens, hidden):
        backbone = self.backbone
        x = backbone.decoder_embeddings(tokens)
        for layer in backbone.decoder_transformer_layers:
            x = layer(decoder_sequence=x, encoder_sequence=hidden, decoder_padding_mask=ops.ones_like(tokens))
        x = backbone.decoder_layer_norm(x)
        return ops.matmul(x[:, -1], ops.transpose(backbone.token_embedding.embeddings))  # tied projection

    def token_ids(self, waveform: np.ndarray, max_tokens: int = 96) -> list[int]:
        """list[int]: The greedy token ids for one 16 kHz clip of at most 30 s (prompt excluded)."""
        hidden = self.encoder(np.asarray(waveform, dtype="float32")[None, :])
        ids = list(self.prompt)
        for step in range(max_tokens):
            logits = np.array(self._step(np.asarray([ids], dtype="int32"), hidden))[0]
            logits[self.suppress] = -np.inf
            if step == 0:
                logits[self.suppress_begin] = -np.inf
            token = int(np.argmax(logits))
            if token == self.end:
                break
            ids.append(token)
        return ids[len(self.prompt):]

    def __call__(self, waveform: np.ndarray, max_tokens: int = 96) -> str:
        """str: The transcript of one 16 kHz mono clip of at most 30 s."""
        ids = self.token_ids(waveform, max_tokens)
        if not ids:
            return ""
        return _to_text(self.tokenizer.detokenize(np.asarray(ids, "int32")))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """float: Word-level Levenshtein distance over the number of reference words, after lower-casing
    and removing punctuation (apostrophes join: "o'clock" is "oclock").

    Example:
    >>> word_error_rate("The cat sat on the mat.", "the cat sat on mat")
    0.16666666666666666
    """
    ref, hyp = (re.sub(r"[^a-z0-9 ]", " ", text.lower().replace("'", "")).split() for text in (reference, hypothesis))
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, other in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (word != other))
    return row[-1] / max(len(ref), 1)


def _to_text(value) -> str:
    value = value.numpy() if hasattr(value, "numpy") else value
    return (value.decode("utf-8") if isinstance(value, bytes) else str(value)).strip()
