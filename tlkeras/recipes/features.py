"""The frozen-feature cache.

With a frozen backbone and no per-epoch input augmentation, the backbone maps each example to the same
features every epoch. They are computed once, stored under `$TLKERAS_HOME/features/<key>.npy`, and
reused by every epoch, by reruns and by runs that only change the head. The key covers the backbone
(name, weights, normalisation), the input size or sequence length, and the data fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tlkeras import paths


def cache_key(**parts) -> str:
    """A stable hash of everything that determines the features.

    Example:
    >>> cache_key(backbone="minilm_l6_v2", sequence_length=128, data="3f2a...")
    """
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def extract(backbone, dataset, verbose: int = 1) -> np.ndarray:
    """Runs the backbone over a dataset of inputs: one pass, the thing the cache saves."""
    return np.asarray(backbone.predict(dataset, verbose=verbose))


def cached_features(key: str, compute: Callable[[], np.ndarray], cache_dir: Path | None = None) -> np.ndarray:
    """Returns the features stored under `key`, computing and storing them on a miss.

    The file is written to a temporary name and renamed, so an interrupted run never leaves a partial
    cache entry behind.
    """
    directory = Path(cache_dir or paths.features_dir())
    target = directory / f"{key}.npy"
    if target.exists():
        try:
            return np.load(target)
        except (OSError, ValueError, EOFError) as err:  # a disk error, or a file of another tlkeras
            logging.getLogger("tlkeras").warning("the feature cache file %s is unreadable (%s); computing the "
                                                 "features again", target.name, err)
    features = compute()
    directory.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".npy.tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, features)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return features
