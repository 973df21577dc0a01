"""Augmentation by config, with Keras 3 core layers, applied to batches inside `tf.data`.

The layers are created once, outside the mapped function: creating them inside fails under tf.function.
MixUp and CutMix mix labels too, so they need one-hot targets and run on (images, labels) pairs.
"""

from __future__ import annotations

import keras

from tlkeras.recipes.config import AugmentConfig


def build_pixel_augmenter(config: AugmentConfig, seed: int = 0) -> keras.Sequential | None:
    """The per-image layers of `config`, as one Sequential on pixels in [0, 255]; None if none."""
    layers = []
    if config.flip != "none":
        layers.append(keras.layers.RandomFlip(config.flip, seed=seed))
    if config.rotation:
        layers.append(keras.layers.RandomRotation(config.rotation, fill_mode="reflect", seed=seed))
    if config.zoom:
        layers.append(keras.layers.RandomZoom(config.zoom, fill_mode="reflect", seed=seed))
    if config.translation:
        layers.append(keras.layers.RandomTranslation(config.translation, config.translation,
                                                     fill_mode="reflect", seed=seed))
    if config.contrast:
        layers.append(keras.layers.RandomContrast(config.contrast, value_range=(0, 255), seed=seed))
    if config.rand_augment:
        layers.append(keras.layers.RandAugment(value_range=(0, 255), seed=seed))
    if config.random_erasing:
        layers.append(keras.layers.RandomErasing(factor=config.random_erasing, value_range=(0, 255),
                                                 seed=seed))
    return keras.Sequential(layers, name="augment") if layers else None


def build_label_mixer(config: AugmentConfig, seed: int = 0):
    """MixUp and/or CutMix as a function on (images, one-hot labels) batches; None if neither."""
    mixers = []
    if config.mixup:
        mixers.append(keras.layers.MixUp(alpha=config.mixup, seed=seed))
    if config.cutmix:
        mixers.append(keras.layers.CutMix(factor=config.cutmix, seed=seed))
    if not mixers:
        return None

    def mix(images, labels):
        for mixer in mixers:
            out = mixer({"images": images, "labels": labels}, training=True)
            images, labels = out["images"], out["labels"]
        return images, labels

    return mix
