"""`recommend` ranks the backbones that run here on the user's data; `backbone: auto` trains the winner;
`tlkeras.fit` goes from a folder to an exported model in three lines."""

import json

import pytest
from click.testing import CliRunner
from conftest import TINY_BERT, TINY_CNN

import tlkeras
from tlkeras import recommend as recommend_lib
from tlkeras.cli.app import main
from tlkeras.recommend import Candidate, _table

pytestmark = pytest.mark.usefixtures("tlkeras_env")


class _Entry:
    def __init__(self, name, params=1):
        self.name, self.domain, self.params, self.size_mb, self.feature_dim, self.license = name, "image", params, 1, 8, ""


def test_ranking_orders_by_probe_accuracy_and_marks_the_pareto_front():
    rows = _table([Candidate(_Entry("slow_best"), 0.9, 0.01, 1.0, 50.0, 10),
                   Candidate(_Entry("fast_good"), 0.8, 0.02, 0.5, 5.0, 100),
                   Candidate(_Entry("dominated"), 0.7, 0.02, 0.1, 20.0, 30),
                   Candidate(_Entry("broken"), status="failed: no weights")], max_latency_ms=None)
    assert [r["name"] for r in rows] == ["slow_best", "fast_good", "dominated", "broken"]
    assert [r["rank"] for r in rows] == [1, 2, 3, None]
    assert [r["pareto"] for r in rows] == [True, True, False, False]
    capped = _table([Candidate(_Entry("slow_best"), 0.9, 0.01, 1.0, 50.0, 10),
                     Candidate(_Entry("fast_good"), 0.8, 0.02, 0.5, 5.0, 100)], max_latency_ms=10)
    assert capped[0]["name"] == "fast_good" and capped[1]["status"].startswith("too slow")


def test_accuracies_within_one_standard_error_are_a_tie_that_logme_orders():
    def candidate(name, accuracy, logme, latency):  # 4 folds, fold spread 0.08: standard error 0.04
        return Candidate(_Entry(name), accuracy, 0.08, logme, latency, 10, probe_folds=4)

    rows = _table([candidate("noisy_top", 0.70, -0.80, 10.0), candidate("close_better_logme", 0.67, -0.70, 90.0),
                   candidate("far_best_logme", 0.61, -0.10, 5.0)], max_latency_ms=None)
    assert [(r["name"], r["tier"]) for r in rows] == [("close_better_logme", 1), ("noisy_top", 1), ("far_best_logme", 2)]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    # Without a fold spread (or with one fold) nothing ties: accuracy alone orders.
    plain = _table([Candidate(_Entry("a"), 0.70, 0.08, -0.8, 10.0, 10, probe_folds=1),
                    Candidate(_Entry("b"), 0.69, 0.08, -0.1, 10.0, 10, probe_folds=1)], max_latency_ms=None)
    assert [r["name"] for r in plain] == ["a", "b"]


def test_recommend_on_an_image_folder_ranks_runnable_backbones_and_reports(colour_folder, tmp_path):
    table = recommend_lib.recommend(colour_folder, candidates="test_*", sample=24, folds=3, out_dir=tmp_path / "rec",
                                    progress=False)
    assert list(table["name"]) == [TINY_CNN] and table["rank"].iloc[0] == 1
    row = table.iloc[0]
    assert 0 <= row["probe_accuracy"] <= 1 and row["latency_ms"] > 0 and row["throughput"] > 0
    assert row["logme"] is not None and bool(row["pareto"])
    for name in ("recommendation.csv", "recommendation.json", "pareto.png", "report.html"):
        assert (tmp_path / "rec" / name).is_file()


def test_recommend_on_a_text_table(text_csv):
    table = recommend_lib.recommend(text_csv, candidates="test_*", folds=3, progress=False)
    assert list(table["name"]) == [TINY_BERT]


def test_a_candidate_that_fails_is_a_row_with_its_reason_not_a_crash(colour_folder, monkeypatch):
    from tlkeras import backbones

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(backbones, "build", broken)
    table = recommend_lib.recommend(colour_folder, candidates="test_*", folds=3, progress=False)
    assert table.iloc[0]["status"] == "failed: RuntimeError: out of memory" and table.iloc[0]["rank"] is None


def test_cli_recommend_prints_json(colour_folder):
    result = CliRunner().invoke(main, ["recommend", str(colour_folder), "--candidates", "test_*", "--folds", "3",
                                       "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output[result.output.index("["):])
    assert rows[0]["name"] == TINY_CNN and rows[0]["rank"] == 1


def test_backbone_auto_trains_the_winner_and_keeps_the_ranking(colour_folder, tmp_path):
    result = tlkeras.fit(colour_folder, backbone="auto", output_dir=str(tmp_path / "runs"), verbose=0,
                         recommend={"candidates": "test_*", "sample": 24}, schedule={"folds": 3})
    config = (result.run_dir / "config.yaml").read_text()
    assert f"backbone: {TINY_CNN}" in config
    ranking = json.loads((result.run_dir / "recommendation.json").read_text())
    assert ranking[0]["name"] == TINY_CNN and "backbone: auto chose" in (result.run_dir / "train.log").read_text()


def test_fit_evaluate_predict_export_in_three_lines(colour_folder, colour_test_folder, tmp_path):
    result = tlkeras.fit(colour_folder, backbone=TINY_CNN, output_dir=str(tmp_path / "runs"), verbose=0)
    evaluated = result.evaluate(str(colour_test_folder))
    assert evaluated["num_samples"] == 6
    images = sorted(str(p) for p in colour_test_folder.rglob("*.png"))[:2]
    predictions = result.predict(images)
    assert len(predictions) == 2 and predictions[0]["label"] in ("blue", "green", "red")
    assert abs(sum(predictions[0]["probabilities"]) - 1) < 1e-4
    version = result.export(tmp_path / "models" / "colours")
    assert (version / "saved_model.pb").is_file() and version.name == "1"


def test_fit_takes_recipe_sections_as_keywords_the_data_section_too(text_csv, tmp_path):
    result = tlkeras.fit(text_csv, backbone=TINY_BERT, data={"text_column": "text"}, schedule={"folds": 3},
                         output_dir=str(tmp_path / "runs"), verbose=0)
    config = (result.run_dir / "config.yaml").read_text()
    assert "text_column: text" in config and f"train: {text_csv}" in config
