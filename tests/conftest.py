"""Shared fixtures: tiny on-disk datasets and a test catalog with tiny offline backbones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

# Class name -> the RGB colour its images are painted in, so a model can tell them apart.
COLOURS = {"blue": (30, 40, 220), "green": (40, 200, 50), "red": (220, 30, 40)}
TINY_CNN = "test_tiny_cnn"  # 4 conv+BN groups, ~7k weights: the fast backbone most tests train
TINY_BERT = "test_tiny_bert"  # a 1-layer keras-hub BERT with a 17-word vocabulary
TEXT_WORDS = ["good", "great", "fine", "nice", "bad", "awful", "poor", "sad", "the", "movie", "was", "very"]


def write_image(path, colour, size=(32, 32), mode="RGB", seed=0, fmt=None):
    """Saves a noisy image of `colour` at `size` (height, width) in PIL `mode`."""
    rng = np.random.default_rng(seed)
    h, w = size
    pixels = np.clip(np.asarray(colour) + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)
    return path


def write_colour_folder(root, per_class=8, seed=0):
    """3 classes x `per_class` images, mostly 32x32 RGB PNG, with grey, RGBA, JPEG and odd sizes mixed in."""
    odd = {1: dict(mode="L"), 2: dict(mode="RGBA"), 3: dict(size=(45, 27)), 4: dict(size=(17, 60), mode="RGBA"),
           5: dict(fmt="JPEG")}
    for c, (name, colour) in enumerate(COLOURS.items()):
        for i in range(per_class):
            options = odd.get(i, {})
            suffix = ".jpg" if options.get("fmt") == "JPEG" else ".png"
            write_image(root / name / f"{i}{suffix}", colour, seed=seed + 100 * c + i, **options)
    return root


@pytest.fixture
def colour_folder(tmp_path):
    """An image folder: 3 classes x 8 images of class-coloured noise (grey, RGBA, JPEG, odd sizes)."""
    return write_colour_folder(tmp_path / "images")


@pytest.fixture
def colour_test_folder(tmp_path):
    """A held-out image folder with the same 3 classes, 2 images each."""
    return write_colour_folder(tmp_path / "test_images", per_class=2, seed=5000)


@pytest.fixture
def image_table(tmp_path):
    """A CSV of image paths with a multilabel column `tags` and numeric columns `brightness`, `redness`."""
    rows = []
    rng = np.random.default_rng(1)
    for i in range(18):
        name = list(COLOURS)[i % 3]
        colour = np.asarray(COLOURS[name]) * (0.5 + (i % 2) / 2)
        path = write_image(tmp_path / "table_images" / f"{i}.png", colour, seed=i)
        tags = name + ("|bright" if i % 2 else "")
        rows.append({"path": f"table_images/{path.name}", "tags": tags,
                     "brightness": float(colour.mean() / 255 + rng.normal(0, 0.01)),
                     "redness": float(colour[0] / 255)})
    table = tmp_path / "images.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


@pytest.fixture
def text_csv(tmp_path):
    """A CSV of 24 short reviews, labelled pos / neg by their words."""
    rng = np.random.default_rng(2)
    rows = []
    for i in range(24):
        label = "pos" if i % 2 else "neg"
        words = TEXT_WORDS[:4] if label == "pos" else TEXT_WORDS[4:8]
        rows.append({"text": f"the movie was {rng.choice(words)} very {rng.choice(words)}", "label": label})
    path = tmp_path / "reviews.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


RNG = np.random.default_rng(0)


def save_image(path, mode, size, fmt=None, value=None):
    """An image whose every pixel is `value` in RGB (or random), saved in `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    pixels = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) if value is None else np.full((h, w, 3), value,
                                                                                             np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)
    return path


@pytest.fixture
def image_folder(tmp_path):
    """Two classes; grey, RGB, RGBA, palette PNGs and JPEGs of odd sizes; a hidden file to ignore."""
    root = tmp_path / "images"
    save_image(root / "cat" / "grey.png", "L", (17, 23), value=200)
    save_image(root / "cat" / "rgba.png", "RGBA", (40, 12), value=50)
    save_image(root / "cat" / "photo.JPG", "RGB", (31, 29))
    save_image(root / "dog" / "rgb.png", "RGB", (8, 8), value=255)
    save_image(root / "dog" / "nested" / "palette.png", "P", (64, 48))
    save_image(root / "dog" / "cmyk.jpeg", "CMYK", (10, 30), fmt="JPEG")
    (root / "dog" / ".DS_Store").write_bytes(b"\0junk")
    return root


def add_corrupt_images(folder):
    """A truncated JPEG and random bytes named .jpg in class 'dog'."""
    good = save_image(folder / "dog" / "full.jpg", "RGB", (64, 64))
    data = good.read_bytes()
    (folder / "dog" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "dog" / "random.jpg").write_bytes(RNG.bytes(300))
    good.unlink()




def _write_tiny_cnn(path):
    import keras

    x = inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="rescale")(x)
    for name, filters, stride in [("stem", 8, 2), ("block1", 16, 2), ("block2", 16, 1), ("top", 32, 1)]:
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    keras.Model(inputs, x, name="tiny_cnn").save(path)


def _write_tiny_bert(directory):
    import keras_hub

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TEXT_WORDS]
    backbone = keras_hub.models.BertBackbone(vocabulary_size=len(vocabulary), num_layers=1, num_heads=2,
                                             hidden_dim=16, intermediate_dim=32, max_sequence_length=32)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    backbone.save_to_preset(str(directory))
    tokenizer.save_to_preset(str(directory))


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory):
    """A catalog folder with two offline backbones: a tiny CNN saved as a local .keras file and a tiny
    BERT preset."""
    root = tmp_path_factory.mktemp("catalog")
    bert_dir = root / "tiny_bert"
    _write_tiny_bert(bert_dir)
    _write_tiny_cnn(root / "tiny_cnn.keras")
    catalog = {
        "family": "tlkeras_tests",
        "entries": [
            {"name": TINY_CNN, "source": "local", "weights_format": "keras",
             "handle": str(root / "tiny_cnn.keras"), "domain": "image", "input_size": [32, 32], "pooling": "avg",
             "feature_dim": 32, "layer_groups": ["stem", "block1", "block2", "top"]},
            {"name": TINY_BERT, "source": "keras_hub", "architecture": "BertBackbone",
             "domain": "text", "handle": str(bert_dir), "pooling": "mean", "sequence_length": 16,
             "feature_dim": 16, "layer_groups": ["token_embedding", "transformer_layer_0"]},
        ],
    }
    (root / "catalog").mkdir()
    (root / "catalog" / "tests.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    return root / "catalog"


@pytest.fixture
def tlkeras_env(tmp_path, monkeypatch, tiny_catalog):
    """An isolated $TLKERAS_HOME (so the feature cache starts empty) and the test catalog on the path."""
    monkeypatch.setenv("TLKERAS_HOME", str(tmp_path / "tlkeras_home"))
    monkeypatch.setenv("TLKERAS_REGISTRY_PATH", str(tiny_catalog))
    return tmp_path / "tlkeras_home"


@pytest.fixture
def backbone_passes(monkeypatch):
    """Counts backbone passes over a dataset (what the feature cache saves): one list item, the number
    of examples, per pass."""
    passes = []
    from tlkeras.features import backbone

    extract = backbone.extract

    def counting(extractor, dataset):
        rows = 0
        for features in extract(extractor, dataset):
            rows += len(features)
            yield features
        passes.append(rows)

    monkeypatch.setattr(backbone, "extract", counting)
    return passes


@pytest.fixture
def without_recipe_classes(monkeypatch):
    """Unregisters tlkeras.recipes' Keras classes (optimizers, schedules), as in a process that imported
    only tlkeras.backbones, e.g. a serving process."""
    import keras

    registered = keras.saving.get_custom_objects()
    for name, obj in list(registered.items()):
        if getattr(obj, "__module__", "").startswith("tlkeras.recipes"):
            monkeypatch.delitem(registered, name)
