"""Shared contracts, in the spirit of keras-hub's `run_backbone_test`: every backbone source and
architecture family must build, pool, group its layers, train a step and survive a save/load the same way."""

from __future__ import annotations

import dataclasses
import textwrap

import keras
import numpy as np
import yaml

from tlkeras import backbones, registry
from tlkeras.backbones import group_layers


def register(catalog_dir, entry) -> str:
    """Writes `entry` (a BackboneEntry) into a catalog folder on $TLKERAS_REGISTRY_PATH; returns its name."""
    raw = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(entry).items()}
    (catalog_dir / f"{entry.name}.yaml").write_text(yaml.safe_dump({"entries": [raw]}, sort_keys=False))
    return entry.name


def example_batch(backbone, batch: int = 2):
    """Canonical inputs for a built backbone: random pixels, or tokenized sentences."""
    if backbone.spec.image_size is not None:
        h, w = backbone.spec.image_size
        return np.random.default_rng(0).uniform(0, 255, (batch, h, w, 3)).astype("float32")
    texts = ["the cat sat", "a dog"][:batch]
    return backbone.preprocessor(np.array(texts)) if backbone.preprocessor is not None else np.array(texts)


def run_backbone_contract(name: str, data=None, tmp_path=None) -> backbones.Backbone:
    """Builds `name` with random weights and checks what every recipe relies on.

    - the extractor maps canonical inputs to finite pooled features (B, feature_dim);
    - the catalog's layer groups each hold weighted layers, and together hold every weighted layer;
    - it saves as .keras and reloads (with tlkeras.layers registered) to the same outputs;
    - one gradient step on a head moves the backbone's weights (it can be fine-tuned).
    """
    entry = registry.get(name)
    backbone = backbones.build(name, weights=False, data=data)
    x = example_batch(backbone)
    features = keras.ops.convert_to_numpy(backbone.extractor(x))
    assert features.ndim == 2 and features.shape[0] == 2, features.shape
    assert np.isfinite(features).all()
    if entry.feature_dim:
        assert features.shape[1] == entry.feature_dim, (features.shape, entry.feature_dim)

    groups = group_layers(backbone.extractor, entry.layer_groups)
    weighted = [layer for group in groups for layer in group]
    assert all(groups), f"empty layer groups in {name}: {[len(g) for g in groups]}"
    if entry.layer_groups:
        assert len(groups) >= len([p for p in entry.layer_groups if not p.endswith("*")]), textwrap.shorten(
            str([len(g) for g in groups]), 200)
    assert len(weighted) == len({id(layer) for layer in weighted})

    if tmp_path is not None:
        import tlkeras.layers  # noqa: F401 - the custom layers saved models use

        path = tmp_path / f"{name}.keras"
        backbone.extractor.save(path)
        reloaded = keras.models.load_model(path, compile=False)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(x)),
                                   keras.ops.convert_to_numpy(backbone.extractor(x)), rtol=1e-4, atol=1e-5)
    head = keras.layers.Dense(1)
    model = keras.Model(backbone.extractor.inputs, head(backbone.extractor.output))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [keras.ops.convert_to_numpy(w).copy() for w in backbone.extractor.trainable_weights]
    model.train_on_batch(x, np.ones((2, 1), "float32"))
    after = [keras.ops.convert_to_numpy(w) for w in backbone.extractor.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True)), "backbone did not train"

    return backbone


def run_dir_round_trip(run_dir, models_dir):
    """Train -> evaluate -> export read the same run: labels, input spec and predictions agree."""
    import json

    import tensorflow as tf

    from tlkeras.export import export_run
    from tlkeras.recipes import evaluate_run
    from tlkeras.run_dir import RunDir

    run = RunDir.open(run_dir)
    metrics = run.metrics()
    evaluated = evaluate_run(run.path)
    assert evaluated["num_samples"] == metrics["num_samples"]
    assert evaluated[metrics["task"] == "regression" and "r2" or "accuracy"] == metrics[
        metrics["task"] == "regression" and "r2" or "accuracy"]
    version = export_run(run.path.parent, models_dir, "round_trip")
    card = json.loads((version / "assets.extra" / "model_card.json").read_text())
    assert card["labels"] == run.labels() and card["input"] == run.input_spec().to_dict()
    assert card["metrics"] == metrics and card["data_fingerprint"] == run.data_fingerprint()
    loaded = tf.saved_model.load(str(version))
    assert "serving_default" in loaded.signatures
    return version
