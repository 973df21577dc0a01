"""SetFit-style contrastive fine-tuning and `strategy: auto`: pairs are balanced, the pair loss falls, and auto
records what it tried, what each scored and what it kept."""

import json

import numpy as np
import pytest
from conftest import TINY_BERT

from tlkeras.recipes import parse_recipe, train
from tlkeras.recipes.contrastive import make_pairs

pytestmark = pytest.mark.usefixtures("tlkeras_env")


def test_pairs_are_balanced_and_never_pair_an_example_with_itself():
    targets = np.array([0] * 8 + [1] * 2 + [2] * 5)
    pairs = make_pairs(targets, iterations=4, seed=0)
    assert len(pairs) == 2 * 4 * len(targets)
    assert pairs.similar.mean() == 0.5
    same = pairs.similar == 1
    assert (targets[pairs.first[same]] == targets[pairs.second[same]]).all()
    assert (targets[pairs.first[~same]] != targets[pairs.second[~same]]).all()
    assert (pairs.first != pairs.second).all()
    # Every example takes part equally often as the first of a pair, whatever its class size.
    assert set(np.bincount(pairs.first)) == {8}
    capped = make_pairs(targets, iterations=4, seed=0, max_pairs=40)
    assert len(capped) == 40 and capped.similar.mean() == 0.5


def _text_recipe(text_csv, tmp_path, strategy, **schedule):
    return parse_recipe({
        "backbone": TINY_BERT, "data": {"train": str(text_csv), "batch_size": 8},
        "schedule": {"strategy": strategy, "epochs": 2, "learning_rate": 0.01, "folds": 3, "finetune_folds": 2,
                     "contrastive_learning_rate": 1e-3, "contrastive_iterations": 4, **schedule},
        "callbacks": {"tensorboard": False}, "output_dir": str(tmp_path / "run")})


def _pair_loss(backbone, texts, pairs):
    import keras

    tokens = backbone.preprocessor(np.array(texts))
    embeddings = keras.ops.convert_to_numpy(backbone.extractor(tokens))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    cosine = (embeddings[pairs.first] * embeddings[pairs.second]).sum(1)
    return float(np.mean((cosine - pairs.similar) ** 2))


def test_contrastive_tuning_lowers_the_pair_loss(text_csv):
    import pandas as pd

    from tlkeras import backbones
    from tlkeras.recipes import contrastive

    table = pd.read_csv(text_csv)
    texts, targets = table.text.tolist(), (table.label == "pos").to_numpy().astype(int)
    backbone = backbones.build(TINY_BERT)
    pairs = make_pairs(targets, iterations=4, seed=1)
    before = _pair_loss(backbone, texts, pairs)
    history = contrastive.tune(backbone.extractor, backbone.kind, backbone.spec, backbone.preprocessor, texts,
                               targets, iterations=8, batch_size=8, learning_rate=3e-3, seed=0)
    after = _pair_loss(backbone, texts, pairs)
    assert history["pairs"] == 2 * 8 * len(texts)
    assert after < 0.7 * before, (before, after)


@pytest.mark.slow
def test_contrastive_recipe_keeps_a_probe_on_the_tuned_encoder(text_csv, tmp_path):
    result = train(_text_recipe(text_csv, tmp_path, "contrastive"), verbose=0)
    selection = json.loads((result.run_dir / "metrics.json").read_text())["selection"]
    assert selection["kept"] == "contrastive" and selection["pairs"] == 2 * 4 * 24
    assert "probe" in selection and result.metrics["accuracy"] >= 0.75


@pytest.mark.slow
def test_auto_records_every_trial_and_its_choice(text_csv, tmp_path):
    result = train(_text_recipe(text_csv, tmp_path, "auto"), verbose=0)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    selection = metrics["selection"]
    assert set(selection["trials"]) == {"probe", "lp_ft", "contrastive"}
    scored = {k: v["cv_score"] for k, v in selection["trials"].items() if "cv_score" in v}
    assert selection["kept"] == max(scored, key=scored.get)
    assert selection["kept"] in selection["reason"]
    log = (result.run_dir / "train.log").read_text()
    assert "auto: chose" in log and all(f"auto: {name}" in log for name in selection["trials"])
    assert "Model selection" in (result.run_dir / "report.html").read_text()


def test_auto_skips_what_the_budget_cannot_afford(text_csv, tmp_path):
    result = train(_text_recipe(text_csv, tmp_path, "auto", budget_minutes=0.001), verbose=0)
    trials = json.loads((result.run_dir / "metrics.json").read_text())["selection"]["trials"]
    assert "cv_score" in trials["probe"]
    assert all("budget" in trials[name]["skipped"] for name in ("lp_ft", "contrastive"))
