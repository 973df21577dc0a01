"""A backbone's frozen features of a list of inputs, through the per-example store: what the trainer's
feature cache and `recommend` call."""

from __future__ import annotations

import numpy as np

from tlkeras.features.extract import cached_features
from tlkeras.features.store import FeatureStore, extractor_key


def backbone_key(backbone, view: str = "identity", weights: str = "pretrained", seed: int = 0) -> str:
    """str: the store key of a built backbone: everything that changes its features besides the data."""
    entry = backbone.entry
    parts = dict(backbone=entry.name, weights=weights, source=entry.source, handle=entry.handle,
                 package_sha256=entry.package_sha256, weights_sha256=entry.weights_sha256,
                 pixel_mean=entry.pixel_mean, pixel_std=entry.pixel_std, channel_order=entry.channel_order,
                 pooling=entry.pooling, **backbone.kind.cache_key(entry, backbone.spec))
    if view != "identity":
        parts["view"] = view
    if weights == "random":
        parts["seed"] = seed  # random weights differ by seed
    return extractor_key(**parts)


def extract(extractor, dataset):
    """Yields the extractor's features batch by batch over `dataset` (one forward pass per batch)."""
    for batch in dataset:
        yield np.asarray(extractor.predict_on_batch(batch))


def backbone_features(backbone, items, batch_size: int = 8, view: str = "identity", weights: str = "pretrained",
                      seed: int = 0, progress: bool = True) -> np.ndarray:
    """np.ndarray (len(items), feature_dim): frozen features, computing only the inputs the store lacks.

    Args:
        backbone: tlkeras.backbones.Backbone. Built, frozen.
        items: list of str. File paths or texts, as its input kind reads them.
        batch_size: int. Inference batch size. Defaults to 8.
        view: str. One of the kind's feature views ("identity", "flip" for mirrored images).
        weights: str. "pretrained" or "random" (then `seed` is part of the key).
        progress: bool. A progress bar while extracting.

    Example:
    >>> backbone_features(backbones.build("efficientnet_lite0_imagenet"), paths).shape
    (1000, 1280)
    """
    kind = backbone.kind
    store = FeatureStore(backbone_key(backbone, view, weights, seed))
    keys = [kind.content_key(item) for item in items]

    def compute(indices):
        chosen = [items[i] for i in indices]
        dataset = kind.dataset(chosen, None, backbone.spec, batch_size, preprocessor=backbone.preprocessor, view=view)
        yield from extract(backbone.extractor, dataset)

    return np.asarray(cached_features(store, keys, compute, progress=progress))
