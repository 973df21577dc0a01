"""Augmentation of images by config: Keras 3 layers inside tf.data, label mixing, evaluation untouched."""

import numpy as np
import pytest
from training_helpers import fit, make_recipe

from tlkeras import inputs
from tlkeras.inputs import InputSpec
from tlkeras.inputs.image import label_mixer, pixel_augmenter
from tlkeras.recipes.config import AugmentConfig

pytestmark = pytest.mark.usefixtures("tlkeras_env")


@pytest.mark.parametrize("option", [
    {"flip": "horizontal"}, {"flip": "horizontal_and_vertical"}, {"rotation": 0.25}, {"zoom": 0.5},
    {"contrast": 0.8}, {"translation": 0.3}, {"rand_augment": True}, {"random_erasing": 1.0},
], ids=lambda option: next(iter(option)))
def test_pixel_augmentation_changes_images_inside_tf_data(option):
    import tensorflow as tf

    augmenter = pixel_augmenter(AugmentConfig(**option), seed=3)
    images = _batch()
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(8).map(lambda x: augmenter(x, training=True))
    out = next(iter(dataset)).numpy()
    assert out.shape == images.shape
    changed_images = [not np.allclose(a, b, atol=1e-3) for a, b in zip(images, out, strict=True)]
    assert any(changed_images)
    assert np.isfinite(out).all() and out.min() >= -1e-3 and out.max() <= 255 + 1e-3


def test_no_augmentation_builds_nothing():
    assert pixel_augmenter(AugmentConfig()) is None
    assert label_mixer(AugmentConfig()) is None


@pytest.mark.parametrize("option", [{"mixup": 0.4}, {"cutmix": 1.0}, {"mixup": 0.4, "cutmix": 1.0}],
                         ids=["mixup", "cutmix", "both"])
def test_label_mixing_makes_soft_labels_that_sum_to_one(option):
    import tensorflow as tf

    mix = label_mixer(AugmentConfig(**option), seed=1)
    classes = np.arange(16) % 4
    images = np.stack([np.full((32, 32, 3), 60.0 * c, "float32") for c in classes])  # one colour per class
    labels = np.eye(4, dtype="float32")[classes]
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16).map(mix)
    out_images, out_labels = (t.numpy() for t in next(iter(dataset)))

    np.testing.assert_allclose(out_labels.sum(axis=1), 1.0, atol=1e-5)
    assert ((out_labels > 1e-3) & (out_labels < 1 - 1e-3)).any(), "no label was mixed"
    assert not np.allclose(out_images, images)


def test_training_with_every_augmentation_skips_the_cache_and_leaves_evaluation_data_alone(
        colour_folder, tmp_path, backbone_passes, tlkeras_env):
    augment = ["augment.flip=horizontal", "augment.rotation=0.1", "augment.zoom=0.1", "augment.contrast=0.2",
               "augment.translation=0.1", "augment.rand_augment=true", "augment.random_erasing=0.5",
               "augment.mixup=0.2", "augment.cutmix=1.0"]
    trainer, history, *_ = fit(make_recipe(colour_folder, tmp_path / "run", "data.cross_validate_below=0", *augment))

    assert len(history["loss"]) == 1 and np.isfinite(history["loss"]).all()
    assert backbone_passes == [] and not (tlkeras_env / "features").exists()  # augmented pixels: no cache
    x, y = next(iter(trainer.dataset(trainer.splits.train, training=True)))
    assert y.shape == (8, 3)  # one-hot targets, for the mixed labels
    examples = trainer.splits.validation
    seen = np.concatenate([x for x, _ in trainer.dataset(examples, training=False)])
    spec = InputSpec("image", image_size=(32, 32))
    plain = np.concatenate([x for x, _ in inputs.get("image").dataset(examples.inputs, examples.targets, spec, 8)])
    np.testing.assert_array_equal(seen, plain)
    assert trainer.predict(examples).shape == (len(examples), 3)


def _batch(n=8, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 32, 32, 3)).astype("float32")
