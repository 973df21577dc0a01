"""Reading class folders and tables into Examples (tlkeras.data.reading)."""

import os

import numpy as np
import pandas as pd
import pytest

from tlkeras import inputs
from tlkeras.data import load_examples
from tlkeras.errors import TlkerasError
from tlkeras.inputs import InputSpec


def test_image_folder_reads_classes_in_sorted_order(image_folder):
    examples = load_examples(image_folder, task="classification")
    assert examples.labels == ["cat", "dog"]
    assert examples.kind == "image" and examples.task == "classification"
    names = {os.path.basename(p): int(t) for p, t in zip(examples.inputs, examples.targets, strict=True)}
    assert names == {"grey.png": 0, "rgba.png": 0, "photo.JPG": 0, "rgb.png": 1, "palette.png": 1,
                     "cmyk.jpeg": 1}
    assert examples.targets.dtype == np.int64










def test_hidden_files_are_ignored_but_other_files_are_reported(image_folder):
    (image_folder / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(TlkerasError, match="notes.txt"):
        load_examples(image_folder, task="classification")


def test_image_folder_is_classification_only(image_folder):
    with pytest.raises(TlkerasError, match="classification"):
        load_examples(image_folder, task="regression")










def _texts_csv(tmp_path, rows, name="texts.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_text_table_classification_with_validation_labels(tmp_path):
    train_path = _texts_csv(tmp_path, {"text": ["good", "bad", "great", "NA"], "label": ["pos", "neg", "pos",
                                                                                         "neg"]})
    train = load_examples(train_path, task="classification")
    assert train.kind == "text" and train.labels == ["neg", "pos"]
    assert train.inputs[3] == "NA"  # a text reading "NA" is data, not a missing value
    np.testing.assert_array_equal(train.targets, [1, 0, 1, 0])
    val = load_examples(_texts_csv(tmp_path, {"text": ["fine"], "label": ["pos"]}, "val.csv"),
                        task="classification", labels=["pos", "neg"])
    np.testing.assert_array_equal(val.targets, [0])


def test_unseen_label_in_validation_is_named(tmp_path):
    val = _texts_csv(tmp_path, {"text": ["x", "y"], "label": ["pos", "neutral"]})
    with pytest.raises(TlkerasError, match="'neutral'"):
        load_examples(val, task="classification", labels=["neg", "pos"])


def test_integer_labels_sort_numerically(tmp_path):
    path = _texts_csv(tmp_path, {"text": list("abc"), "label": [10, 2, 1]})
    assert load_examples(path, task="classification").labels == ["1", "2", "10"]


def test_missing_values_name_column_count_and_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\nok,a\n,b\nfine,a\n   ,b\n")
    with pytest.raises(TlkerasError, match=r"column 'text' .* 2 missing values.*rows 1, 3"):
        load_examples(path, task="classification")
    path.write_text("text,label\nok,a\nfine,\n")
    with pytest.raises(TlkerasError, match=r"column 'label' .* 1 missing values.*rows 1"):
        load_examples(path, task="classification")


def test_wrong_column_suggests_the_right_one(tmp_path):
    path = _texts_csv(tmp_path, {"review": ["a"], "label": ["x"]})
    with pytest.raises(TlkerasError, match="did you mean 'review'"):
        load_examples(path, task="classification", text_column="reveiw")
    with pytest.raises(TlkerasError, match="did you mean 'label'"):
        load_examples(path, task="classification", text_column="review", label_column="lable")


def test_multilabel_cells_become_multi_hot_rows(tmp_path):
    path = tmp_path / "tags.tsv"
    pd.DataFrame({"text": ["a", "b", "c"], "tags": ["cat|dog", "dog", " bird | cat "]}).to_csv(
        path, sep="\t", index=False)
    examples = load_examples(path, task="multilabel", label_column="tags")
    assert examples.labels == ["bird", "cat", "dog"]
    assert examples.targets.dtype == np.float32
    np.testing.assert_array_equal(examples.targets, [[0, 1, 1], [0, 0, 1], [1, 1, 0]])
    assert examples.task == "multilabel"


def test_regression_targets_from_one_or_several_columns(tmp_path):
    path = tmp_path / "scores.parquet"
    pd.DataFrame({"text": ["a", "b"], "y": [1.5, -2], "z": [0, 3]}).to_parquet(path)
    one = load_examples(path, task="regression", label_column="y")
    assert one.targets.shape == (2,) and one.targets.dtype == np.float32 and one.labels == ["y"]
    both = load_examples(path, task="regression", label_column=["y", "z"])
    np.testing.assert_array_equal(both.targets, [[1.5, 0], [-2, 3]])
    bad = _texts_csv(tmp_path, {"text": ["a", "b"], "y": ["1.0", "high"]})
    with pytest.raises(TlkerasError, match="'high'"):
        load_examples(bad, task="regression", label_column="y")


def test_image_table_resolves_relative_paths_and_reports_missing_files(tmp_path, image_folder):
    table = tmp_path / "images.parquet"
    pd.DataFrame({"path": ["images/cat/grey.png", str(image_folder / "dog" / "rgb.png")],
                  "label": ["cat", "dog"]}).to_parquet(table)
    examples = load_examples(table, task="classification")
    assert examples.kind == "image"
    x, y = next(iter(inputs.get("image").dataset(examples.inputs, examples.targets, InputSpec("image", image_size=(4, 4)), 2)))
    assert x.shape == (2, 4, 4, 3)
    pd.DataFrame({"file": ["images/cat/grey.png", "images/cat/gone.png"], "label": ["cat", "dog"]}).to_csv(
        tmp_path / "broken.csv", index=False)
    with pytest.raises(TlkerasError, match="1 files.*gone.png"):
        load_examples(tmp_path / "broken.csv", task="classification", path_column="file")












