"""The frozen-feature cache: each example is extracted once and reused by epochs, reruns, new heads and grown
data sets (only new examples are computed)."""

import dataclasses

import numpy as np
import pytest
from conftest import COLOURS, write_colour_folder, write_image
from training_helpers import fit, make_recipe

from tlkeras.recipes import train

pytestmark = pytest.mark.usefixtures("tlkeras_env")


def test_feature_cache_computes_each_split_once_and_reuses_it(colour_folder, colour_test_folder, tmp_path,
                                                               backbone_passes, tlkeras_env):
    holdout = write_colour_folder(tmp_path / "holdout", per_class=1, seed=9000)
    splits = [f"data.validation={colour_test_folder}", f"data.test={holdout}"]

    result = train(make_recipe(colour_folder, tmp_path / "run1", *splits, "schedule.epochs=3",
                               "head.hidden_units=[8]"), verbose=0)
    assert len(result.history["loss"]) == 3
    assert sorted(backbone_passes) == [3, 6, 24]  # test, validation, train: once each, not once per epoch
    stores = list((tlkeras_env / "features").iterdir())
    assert len(stores) == 1 and list((stores[0] / "chunks").glob("*.npy"))  # one extractor, chunked per example
    assert not [p for p in (tlkeras_env / "features").rglob("*") if p.name.endswith(".tmp")]

    backbone_passes.clear()  # another head on the same backbone and data: nothing to compute
    train(make_recipe(colour_folder, tmp_path / "run2", *splits, "head.hidden_units=[8]", "schedule.epochs=2"),
          verbose=0)
    assert backbone_passes == []

    backbone_passes.clear()  # one more training image: only it is computed
    write_image(colour_folder / "red" / "extra.png", COLOURS["red"], seed=77)
    fit(make_recipe(colour_folder, tmp_path / "run3", *splits))
    assert backbone_passes == [1]

    backbone_passes.clear()  # the same images under other names: the content is what counts
    renamed = write_colour_folder(tmp_path / "copy", per_class=1, seed=9000)
    fit(make_recipe(colour_folder, tmp_path / "run3b", f"data.validation={renamed}"))
    assert backbone_passes == []

    backbone_passes.clear()  # another input size: every split is recomputed
    trainer, *_ = fit(make_recipe(colour_folder, tmp_path / "run4", *splits, "data.image_size=[24, 24]"))
    assert sorted(backbone_passes) == [6, 25]

    backbone_passes.clear()  # the same backbone name registered again with other weights: recomputed
    trainer.backbone.entry = dataclasses.replace(trainer.backbone.entry, weights_sha256="0" * 64)
    trainer.cached_features(trainer.splits.validation)
    assert backbone_passes == [6]


def test_cached_head_predicts_like_the_whole_model(colour_folder, tmp_path):
    trainer, *_ = fit(make_recipe(colour_folder, tmp_path / "run", "data.cross_validate_below=0"))
    assert trainer.uses_feature_cache()
    examples = trainer.splits.validation
    whole = trainer.model.predict(trainer.dataset(examples, False, targets=False), verbose=0)
    np.testing.assert_allclose(trainer.predict(examples), whole, rtol=1e-4, atol=1e-6)
