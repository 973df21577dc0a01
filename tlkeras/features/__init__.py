"""Frozen-backbone features, stored per example and keyed by content, so that a grown data set computes
only its new examples; and how well a backbone's features suit a task before training (LogME).

This package sits between `tlkeras.backbones` and `tlkeras.recipes`: it imports numpy and TensorFlow
(lazily) but nothing from recipes, export or serve.

Example:
>>> from tlkeras import features
>>> store = features.FeatureStore(features.extractor_key(backbone="efficientnet_lite0_imagenet", size=64))
>>> keys = features.content_keys_of_files(paths)
>>> x = features.cached_features(store, keys, compute)  # compute(indices) yields feature batches
>>> features.logme(np.asarray(x), labels)
"""

from tlkeras.features.backbone import backbone_features, backbone_key
from tlkeras.features.extract import cached_features
from tlkeras.features.store import (
    FeatureStore,
    MissingFeaturesError,
    content_key_of_file,
    content_key_of_text,
    content_keys_of_files,
    extractor_key,
)
from tlkeras.features.transferability import LogMEResult, logme, logme_result

__all__ = ["FeatureStore", "backbone_features", "backbone_key", "LogMEResult", "MissingFeaturesError", "cached_features", "content_key_of_file",
           "content_key_of_text", "content_keys_of_files", "extractor_key", "logme", "logme_result"]
