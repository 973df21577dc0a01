"""Tests for tlkeras.recipes.evaluation: hand-checked metrics, written files and input errors."""

import base64
import json
import math
import re

import numpy as np
import pytest
from PIL import Image

from tlkeras.errors import TlkerasError
from tlkeras.evaluation import evaluate_predictions
from tlkeras.plots import training_history

# Three classes, eight samples: two mistakes (0 -> 1 and 1 -> 2), so accuracy is 6/8.
# The true class is always the runner-up of a mistake, so top-2 accuracy is 1.
Y3 = np.array([0, 0, 0, 1, 1, 1, 2, 2])
S3 = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.8, 0.1, 0.1],
        [0.3, 0.6, 0.1],
        [0.1, 0.8, 0.1],
        [0.1, 0.8, 0.1],
        [0.1, 0.3, 0.6],
        [0.1, 0.1, 0.8],
        [0.1, 0.1, 0.8],
    ],
    dtype=np.float32,
)
LABELS3 = ["cat", "dog", "<bird>"]

HISTORY_CSV = (
    "epoch,accuracy,learning_rate,loss,val_accuracy,val_loss\n"
    "0,0.50,0.001,1.20,0.55,1.10\n"
    "1,0.70,0.001,0.80,0.68,0.90\n"
    "2,0.82,0.0005,0.50,0.74,0.75\n"
)


def _assert_png(path):
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()


@pytest.fixture(scope="module")
def three_class_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    history = out / "history.csv"
    history.write_text(HISTORY_CSV)
    extra = {"backbone": "efficientnet_lite0", "train_seconds": 12.5, "config": {"lr": 1e-3, "note": "<x>"}}
    result = evaluate_predictions(
        Y3, S3, LABELS3, "classification", out_dir=out / "report", title="Pets & birds", extra=extra,
        history_csv=history,
    )
    return result, out / "report"


def test_three_class_metrics_match_hand_computation(three_class_run):
    result, _ = three_class_run
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert result["confusion_matrix"]["matrix"] == [[2, 1, 0], [0, 2, 1], [0, 0, 2]]
    assert result["confusion_matrix"]["labels"] == LABELS3
    assert result["top_k"] == 2 and result["top_k_accuracy"] == pytest.approx(1.0)
    expected_log_loss = -(6 * math.log(0.8) + 2 * math.log(0.3)) / 8
    assert result["log_loss"] == pytest.approx(expected_log_loss, rel=1e-5)
    cat, dog, bird = (result["per_class"][name] for name in LABELS3)
    assert (cat["precision"], cat["recall"], cat["support"]) == (pytest.approx(1.0), pytest.approx(2 / 3), 3)
    assert dog["precision"] == pytest.approx(2 / 3) and dog["recall"] == pytest.approx(2 / 3)
    assert bird["precision"] == pytest.approx(2 / 3) and bird["recall"] == pytest.approx(1.0)
    assert bird["f1"] == pytest.approx(0.8)
    assert result["f1_macro"] == pytest.approx((0.8 + 2 / 3 + 0.8) / 3)
    assert result["f1_weighted"] == pytest.approx((3 * 0.8 + 3 * 2 / 3 + 2 * 0.8) / 8)
    # cat vs rest: positives score 0.8, 0.8, 0.3; negatives 0.1 x5 -> every pair ranked right.
    assert cat["roc_auc"] == pytest.approx(1.0)
    assert result["roc_auc"] == pytest.approx(np.mean([m["roc_auc"] for m in result["per_class"].values()]))
    assert result["notes"] == []


def test_files_are_written_and_valid(three_class_run):
    result, out = three_class_run
    names = sorted(p.name for p in out.iterdir())
    assert names == ["confusion_matrix.png", "history.png", "metrics.json", "report.html", "roc.png"]
    assert sorted(result["files"]) == sorted(str(out / name) for name in names)
    for name in ("confusion_matrix.png", "roc.png", "history.png"):
        _assert_png(out / name)

    def reject(constant):
        raise AssertionError(f"metrics.json holds {constant}")

    assert json.loads((out / "metrics.json").read_text(), parse_constant=reject) == result


def test_report_is_self_contained(three_class_run):
    _, out = three_class_run
    page = (out / "report.html").read_text()
    assert "http" not in page
    assert not re.search(r"<link\b|<script[^>]*\bsrc=|<img[^>]*src=\"(?!data:)", page)  # nothing fetched
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3  # confusion matrix, ROC, history
    assert all(base64.b64decode(data).startswith(b"\x89PNG") for data in images)
    assert "<title>Pets &amp; birds</title>" in page
    assert "&lt;bird&gt;" in page and "<bird>" not in page
    assert "<td>Accuracy</td><td class=\"num\">0.7500</td>" in page
    assert "<h2>Per class</h2>" in page and "<tr><th>class</th><th>precision</th>" in page
    assert "efficientnet_lite0" in page and "train_seconds" in page and "&lt;x&gt;" in page


def test_binary_separable_scores_auc_one(tmp_path):
    y_true = [0, 0, 1, 1]
    positive = [0.1, 0.4, 0.6, 0.9]
    result = evaluate_predictions(y_true, positive, ["neg", "pos"], "classification", out_dir=tmp_path)
    assert result["roc_auc"] == 1.0 and result["accuracy"] == 1.0
    assert "top_k_accuracy" not in result
    _assert_png(tmp_path / "roc.png")
    _assert_png(tmp_path / "confusion_matrix.png")
    two_columns = np.column_stack([1 - np.array(positive), positive])
    assert evaluate_predictions(y_true, two_columns, None, "classification")["roc_auc"] == 1.0


def test_binary_threshold_moves_predictions():
    result = evaluate_predictions([0, 0, 1, 1], [0.1, 0.4, 0.6, 0.9], None, "classification", threshold=0.7)
    assert result["accuracy"] == 0.75
    assert result["confusion_matrix"]["matrix"] == [[2, 0], [1, 1]]
    assert result["roc_auc"] == 1.0  # ranking metrics ignore the threshold


def test_binary_with_one_class_in_y_true_skips_auc(tmp_path):
    result = evaluate_predictions([1, 1, 1], [0.2, 0.7, 0.9], None, "classification", out_dir=tmp_path)
    assert result["roc_auc"] is None
    assert any("single class" in note for note in result["notes"])
    assert not (tmp_path / "roc.png").exists()
    assert result["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.filterwarnings("error")
def test_absent_and_never_predicted_class_produce_notes_not_warnings():
    # "bird" never occurs in y_true and is never predicted.
    y_true = [0, 0, 1, 1]
    scores = [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1]]
    result = evaluate_predictions(y_true, scores, ["cat", "dog", "bird"], "classification")
    assert result["accuracy"] == 1.0
    assert result["per_class"]["bird"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "roc_auc": None
    }
    assert result["roc_auc"] == 1.0  # mean over cat and dog only
    assert result["f1_macro"] == pytest.approx(2 / 3)  # bird counts as 0
    assert result["confusion_matrix"]["matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 0]]
    notes = " | ".join(result["notes"])
    assert "absent from y_true: 'bird'" in notes
    assert "ROC AUC skipped for class 'bird'" in notes
    assert "never predicted: 'bird'" in notes
    json.dumps(result, allow_nan=False)


def test_one_hot_y_true_is_accepted():
    result = evaluate_predictions(np.eye(3)[Y3], S3, None, "classification")
    assert result["accuracy"] == pytest.approx(0.75)


def test_multilabel_metrics_match_hand_computation(tmp_path):
    y_true = [[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]]
    scores = [[0.9, 0.2, 0.1], [0.3, 0.8, 0.2], [0.7, 0.4, 0.1], [0.1, 0.1, 0.3]]
    labels = ["red", "round", "rare"]
    result = evaluate_predictions(y_true, scores, labels, "multilabel", out_dir=tmp_path)
    # Only row 2 is wrong ("round" scored 0.4): one of 12 label decisions.
    assert result["subset_accuracy"] == 0.75
    assert result["hamming_loss"] == pytest.approx(1 / 12)
    assert result["per_label"]["round"]["recall"] == 0.5 and result["per_label"]["round"]["precision"] == 1.0
    assert result["precision_micro"] == 1.0 and result["recall_micro"] == 0.75
    assert result["f1_micro"] == pytest.approx(6 / 7)
    assert result["f1_macro"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert result["per_label"]["red"]["roc_auc"] == 1.0 and result["per_label"]["round"]["roc_auc"] == 1.0
    assert result["per_label"]["round"]["average_precision"] == 1.0
    assert result["per_label"]["rare"]["roc_auc"] is None
    assert any("label 'rare'" in note for note in result["notes"])
    assert result["roc_auc_macro"] == 1.0
    _assert_png(tmp_path / "roc.png")
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()

    lower = evaluate_predictions(y_true, scores, labels, "multilabel", threshold=0.35)
    assert lower["subset_accuracy"] == 1.0 and lower["hamming_loss"] == 0.0


def test_regression_metrics_match_hand_computation(tmp_path):
    y_true = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])
    y_pred = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [6.0, 40.0]])
    result = evaluate_predictions(y_true, y_pred, ["width", "height"], "regression", out_dir=tmp_path)
    width = result["per_target"]["width"]
    # One error of 2 over 4 samples; the mean of 1..4 is 2.5, so SS_tot = 5 and SS_res = 4.
    assert width == {"mae": 0.5, "rmse": 1.0, "r2": pytest.approx(0.2)}
    assert result["per_target"]["height"] == {"mae": 0.0, "rmse": 0.0, "r2": 1.0}
    assert result["mae"] == 0.25 and result["r2"] == pytest.approx(0.6)
    _assert_png(tmp_path / "pred_vs_true.png")

    single = evaluate_predictions(y_true[:, 0], y_pred[:, :1], None, "regression")  # Dense(1) output
    assert single["rmse"] == 1.0 and "per_target" not in single


def test_history_plot_from_csv_logger_file(tmp_path):
    csv_path = tmp_path / "history.csv"
    csv_path.write_text(HISTORY_CSV)
    out = tmp_path / "history.png"
    out.write_bytes(training_history(csv_path))
    _assert_png(out)
    with pytest.raises(TlkerasError, match="not found"):
        training_history(tmp_path / "missing.csv")


@pytest.mark.parametrize(
    "y_true, y_score, labels, task, problem",
    [
        ([0, 1, 2], S3, None, "classification", "same number of samples"),
        (Y3, S3.reshape(8, 3, 1), None, "classification", "shape"),
        (Y3, np.where(np.eye(8, 3) > 0, np.nan, S3), None, "classification", "NaN"),
        (Y3, S3, ["a", "b"], "classification", "one column of y_score each"),
        (Y3 + 1, S3, None, "classification", "class ids in \\[0, 3\\)"),
        (Y3, S3 * 5, None, "classification", "softmax"),
        (Y3, S3 / 2, None, "classification", "sum to 1"),
        (np.eye(3)[Y3] * 2, S3, None, "multilabel", "only 0 and 1"),
        ([1.0, 2.0], [[1.0, 2.0]], None, "regression", "same number of samples"),
        ([[1.0, 2.0]], [[1.0, 2.0, 3.0]], None, "regression", "same shape"),
        (Y3, S3, None, "ranking", "unknown task: use one of"),
    ],
)
def test_bad_inputs_raise_one_line_errors(y_true, y_score, labels, task, problem):
    with pytest.raises(TlkerasError, match=problem) as info:
        evaluate_predictions(y_true, y_score, labels, task)
    message = str(info.value)
    assert "\n" not in message and "Received: " in message
