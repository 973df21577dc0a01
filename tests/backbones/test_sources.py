"""Backbone loading: each source kind builds, offline failures name their fix, real weights load."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from tlkeras import backbones, registry
from tlkeras.errors import WeightsUnavailableError


@pytest.fixture
def catalog_dir(tmp_path, monkeypatch):
    """A user catalog directory, read through $TLKERAS_REGISTRY_PATH."""
    directory = tmp_path / "catalog"
    directory.mkdir()
    monkeypatch.setenv("TLKERAS_REGISTRY_PATH", str(directory))
    return directory


@pytest.mark.parametrize("name", ["mobilenet_v3_small_imagenet", "resnet50_imagenet", "efficientnet_b0_imagenet",
                                  "vgg16_imagenet", "densenet121_imagenet", "efficientnet_lite0_imagenet",
                                  "vgg16_hed_bsds500"])
def test_image_architectures_build_with_random_weights(name):
    entry = registry.get(name)
    extractor = backbones.load(name, weights=False, image_size=(64, 64))
    features = extractor(np.random.uniform(0, 255, (2, 64, 64, 3)).astype("float32"))
    assert features.shape == (2, entry.feature_dim)
    groups = backbones.group_layers(extractor, entry.layer_groups)
    assert len(groups) == len(entry.layer_groups) and all(groups), [len(g) for g in groups]


def test_keras_hub_preset_folder_builds_and_tokenizes(tmp_path, catalog_dir):
    import keras_hub

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "dog"]
    preset = tmp_path / "tiny_bert"
    keras_hub.models.BertBackbone(vocabulary_size=len(vocab), num_layers=1, num_heads=2, hidden_dim=8,
                                  intermediate_dim=16, max_sequence_length=16).save_to_preset(str(preset))
    keras_hub.models.BertTokenizer(vocabulary=vocab).save_to_preset(str(preset))
    (catalog_dir / "tiny.yaml").write_text(
        f"entries:\n  - name: tiny_bert\n    source: keras_hub\n    domain: text\n    handle: {preset}\n"
        "    pooling: mean\n    sequence_length: 8\n")
    extractor = backbones.load("tiny_bert")
    tokens = backbones.load_preprocessor("tiny_bert")(tf.constant(["the cat sat", "the dog"]))
    assert tokens["token_ids"].shape == (2, 8)
    assert extractor(tokens).shape == (2, 8)
    assert len(backbones.group_layers(extractor, [])) == 1  # no groups: the whole backbone is one


def test_tf_hub_savedmodel_layer_trains_and_saves(tmp_path, catalog_dir):
    class Linear(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.ones((3, 2)), name="w")

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def __call__(self, x):
            return tf.matmul(x, self.w)

    module_dir = tmp_path / "module"
    tf.saved_model.save(Linear(), str(module_dir))
    layer = backbones.hub_layer.HubModuleLayer(str(module_dir))
    model = keras.Sequential([keras.Input((3,)), layer, keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    before = layer.weights[0].numpy().copy()
    model.fit(np.ones((8, 3)), np.zeros((8, 1)), epochs=2, verbose=0)
    assert not np.allclose(before, layer.weights[0].numpy()), "the SavedModel's variables did not train"
    model.save(tmp_path / "wrapped.keras")
    reloaded = keras.models.load_model(tmp_path / "wrapped.keras")
    np.testing.assert_allclose(reloaded.predict(np.ones((1, 3)), verbose=0), model.predict(np.ones((1, 3)), verbose=0),
                               rtol=1e-6)


def test_local_keras_file_loads(tmp_path, catalog_dir, monkeypatch):
    monkeypatch.setenv("TLKERAS_HOME", str(tmp_path / "home"))
    inputs = keras.Input((16, 16, 3))
    net = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs)))
    net.save(tmp_path / "net.keras")
    registry.add_local(tmp_path / "net.keras", name="my_net", input_size=(16, 16), feature_dim=4)
    extractor = backbones.load("my_net")
    assert extractor(np.zeros((1, 16, 16, 3), "float32")).shape == (1, 4)


def test_missing_local_file_names_the_fix(tmp_path, catalog_dir):
    (catalog_dir / "gone.yaml").write_text(
        f"entries:\n  - name: gone_net\n    source: local\n    weights_format: keras\n    handle: {tmp_path}/gone.keras\n")
    with pytest.raises(WeightsUnavailableError, match="does not exist.*registry add"):
        backbones.load("gone_net")




def test_hub_download_offline_names_the_fix():
    with pytest.raises(WeightsUnavailableError, match="tlkeras registry list --offline"):
        backbones.load("mobilenet_v3_small_imagenet", image_size=(32, 32))






# ------------------------------------------------------------------------------- real weights (slow)
@pytest.mark.slow
def test_minilm_real_weights_rank_similar_sentences():
    extractor = backbones.load("minilm_l6_v2")
    tokenize = backbones.load_preprocessor("minilm_l6_v2", sequence_length=32)
    embeddings = extractor(tokenize(tf.constant(["a cat sits on the mat", "a kitten is on the rug",
                                                 "stock markets fell"]))).numpy()
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    similar, unrelated = embeddings[0] @ embeddings[1], embeddings[0] @ embeddings[2]
    assert similar - unrelated > 0.3, (similar, unrelated)


@pytest.mark.slow
def test_vgg16_hed_real_weights_fill_all_13_convs():
    from tlkeras.backbones.sources import load_h5_by_layer_name

    network = keras.applications.VGG16(include_top=False, weights=None, input_shape=(64, 64, 3))
    loaded = load_h5_by_layer_name(network, backbones.weights_location(registry.get("vgg16_hed_bsds500")))
    assert len(loaded) == 13 and all(name.startswith("block") for name in loaded)
    extractor = backbones.load("vgg16_hed_bsds500", image_size=(64, 64))
    assert extractor(np.full((1, 64, 64, 3), 128.0, "float32")).shape == (1, 512)


@pytest.mark.slow
def test_efficientnet_lite0_real_features_separate_photos():
    from sklearn.datasets import load_sample_image

    extractor = backbones.load("efficientnet_lite0_imagenet")
    photos = np.stack([tf.image.resize(load_sample_image(n), (224, 224)).numpy() for n in ("china.jpg", "flower.jpg")])
    features = extractor(photos).numpy()
    assert features.shape == (2, 1280) and (features > 0).mean() > 0.3, "features look like random init"


def test_a_saved_llama_with_tied_embeddings_reloads(tmp_path):
    """keras-hub's LlamaBackbone leaves `tie_word_embeddings` out of its config (SmolLM2 ties them)."""
    import keras
    import keras_hub
    import numpy as np

    from tlkeras.backbones.sources import _keep_tied_embeddings_in_config

    network = keras_hub.models.Llama3Backbone(vocabulary_size=50, num_layers=1, num_query_heads=2,
                                              num_key_value_heads=1, hidden_dim=8, intermediate_dim=16,
                                              tie_word_embeddings=True)
    _keep_tied_embeddings_in_config(network)
    inputs = {name: keras.Input((None,), dtype="int32", name=name) for name in ("token_ids", "padding_mask")}
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(network(inputs)))
    model.save(tmp_path / "model.keras")
    batch = {"token_ids": np.ones((1, 4), "int32"), "padding_mask": np.ones((1, 4), "int32")}
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded.predict(batch, verbose=0), model.predict(batch, verbose=0), atol=1e-6)
