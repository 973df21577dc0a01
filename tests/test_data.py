"""Reading, checking, splitting and batching recipe data (tlkeras.recipes.data)."""

import os
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tlkeras.errors import TlkerasError
from tlkeras.recipes.data import (
    Examples,
    array_image_dataset,
    check_images,
    fingerprint,
    image_dataset,
    load_examples,
    split_examples,
    text_dataset,
)

RNG = np.random.default_rng(0)


def _save(path, mode, size, fmt=None, value=None):
    """An image whose every pixel is `value` in RGB (or random), saved in `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    pixels = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) if value is None else np.full((h, w, 3), value,
                                                                                             np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)
    return path


@pytest.fixture
def image_folder(tmp_path):
    """Two classes; grey, RGB, RGBA, palette PNGs and JPEGs of odd sizes; a hidden file to ignore."""
    root = tmp_path / "images"
    _save(root / "cat" / "grey.png", "L", (17, 23), value=200)
    _save(root / "cat" / "rgba.png", "RGBA", (40, 12), value=50)
    _save(root / "cat" / "photo.JPG", "RGB", (31, 29))
    _save(root / "dog" / "rgb.png", "RGB", (8, 8), value=255)
    _save(root / "dog" / "nested" / "palette.png", "P", (64, 48))
    _save(root / "dog" / "cmyk.jpeg", "CMYK", (10, 30), fmt="JPEG")
    (root / "dog" / ".DS_Store").write_bytes(b"\0junk")
    return root


def _corrupt(folder):
    """A truncated JPEG and random bytes named .jpg in class 'dog'."""
    good = _save(folder / "dog" / "full.jpg", "RGB", (64, 64))
    data = good.read_bytes()
    (folder / "dog" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "dog" / "random.jpg").write_bytes(RNG.bytes(300))
    good.unlink()


def test_image_folder_reads_classes_in_sorted_order(image_folder):
    examples = load_examples(image_folder, task="classification")
    assert examples.labels == ["cat", "dog"]
    assert examples.kind == "image" and examples.task == "classification"
    names = {os.path.basename(p): int(t) for p, t in zip(examples.inputs, examples.targets, strict=True)}
    assert names == {"grey.png": 0, "rgba.png": 0, "photo.JPG": 0, "rgb.png": 1, "palette.png": 1,
                     "cmyk.jpeg": 1}
    assert examples.targets.dtype == np.int64


def test_image_dataset_yields_rgb_float_pixels_of_one_size(image_folder):
    examples = load_examples(image_folder, task="classification")
    batches = list(image_dataset(examples.inputs, examples.targets, image_size=(20, 24), batch_size=4))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 20, 24, 3), (2, 20, 24, 3)]
    pixels = np.concatenate([x.numpy() for x, _ in batches])
    targets = np.concatenate([y.numpy() for _, y in batches])
    assert pixels.dtype == np.float32 and pixels.min() >= 0 and pixels.max() <= 255
    np.testing.assert_array_equal(targets, examples.targets)
    by_name = dict(zip([os.path.basename(p) for p in examples.inputs], pixels, strict=True))
    np.testing.assert_allclose(by_name["grey.png"], 200, atol=1)  # grey copied to all three channels
    np.testing.assert_allclose(by_name["rgba.png"], 50, atol=1)  # alpha dropped, colour kept
    np.testing.assert_allclose(by_name["rgb.png"], 255, atol=1)


def test_image_dataset_shuffles_with_seed_and_applies_augment(image_folder):
    examples = load_examples(image_folder, task="classification")

    def order(seed):
        ds = image_dataset(examples.inputs, np.arange(len(examples)), 8, batch_size=6, shuffle=True, seed=seed)
        return next(iter(ds))[1].numpy().tolist()

    assert order(1) == order(1)
    assert sorted(order(1)) == list(range(6))
    assert any(order(1) != order(s) for s in (2, 3, 4))
    ds = image_dataset(examples.inputs, examples.targets, 8, batch_size=6, augment=lambda x, y: (255.0 - x, y))
    x, _ = next(iter(ds))
    np.testing.assert_allclose(x.numpy()[examples.inputs.index(str(image_folder / "dog" / "rgb.png"))], 0,
                               atol=1)


def test_array_image_dataset_turns_grey_and_rgba_arrays_into_rgb():
    grey = np.stack([np.full((28, 28), v, np.uint8) for v in (0, 100, 255)])
    x, y = next(iter(array_image_dataset(grey, np.array([0, 1, 2]), image_size=32, batch_size=3)))
    assert x.shape == (3, 32, 32, 3) and x.dtype == "float32"
    np.testing.assert_allclose(x.numpy()[:, 0, 0, :], [[0] * 3, [100] * 3, [255] * 3])
    np.testing.assert_array_equal(y.numpy(), [0, 1, 2])
    rgba = np.zeros((2, 5, 5, 4), np.float32)
    rgba[..., 3] = 255.0
    rgba[..., 0] = 9.0
    x = next(iter(array_image_dataset(rgba, None, image_size=(5, 7), batch_size=2)))
    assert x.shape == (2, 5, 7, 3)
    np.testing.assert_allclose(x.numpy()[..., 0], 9.0)
    np.testing.assert_allclose(x.numpy()[..., 1:], 0.0)


def test_array_image_dataset_refuses_pixels_scaled_to_unit_range():
    with pytest.raises(TlkerasError, match=r"\* 255"):
        array_image_dataset(np.full((2, 4, 4), 0.5, np.float32), None, 8, 2)


def test_hidden_files_are_ignored_but_other_files_are_reported(image_folder):
    (image_folder / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(TlkerasError, match="notes.txt"):
        load_examples(image_folder, task="classification")


def test_image_folder_is_classification_only(image_folder):
    with pytest.raises(TlkerasError, match="classification"):
        load_examples(image_folder, task="regression")


def test_corrupt_images_raise_naming_the_files(image_folder):
    _corrupt(image_folder)
    examples = load_examples(image_folder, task="classification")
    with pytest.raises(TlkerasError, match="skip_corrupt") as error:
        check_images(examples.inputs)
    assert "truncated.jpg" in str(error.value) and "random.jpg" in str(error.value)
    assert "2 of 8 images" in str(error.value)


def test_corrupt_images_are_skipped_and_reported(image_folder):
    _corrupt(image_folder)
    examples = load_examples(image_folder, task="classification")
    ok, bad = check_images(examples.inputs, on_error="skip")
    assert sorted(os.path.basename(p) for p, _ in bad) == ["random.jpg", "truncated.jpg"]
    assert ok.sum() == 6
    kept = examples.select(ok)
    assert not any(p.endswith(("random.jpg", "truncated.jpg")) for p in kept.inputs)
    assert len(list(image_dataset(kept.inputs, kept.targets, 8, batch_size=8))) == 1


def test_images_tensorflow_cannot_decode_are_bad(tmp_path):
    tiff = _save(tmp_path / "a.png", "RGB", (4, 4), fmt="TIFF")  # a TIFF hiding behind .png
    ok, bad = check_images([tiff], on_error="skip")
    assert not ok[0] and "TIFF" in bad[0][1]


def test_check_images_is_fast_on_thousands_of_small_images(tmp_path):
    import time

    paths = [_save(tmp_path / f"{i}.png", "L", (28, 28)) for i in range(2000)]
    start = time.perf_counter()
    ok, _ = check_images(paths)
    assert ok.all()
    assert time.perf_counter() - start < 10


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
    x, y = next(iter(image_dataset(examples.inputs, examples.targets, 4, batch_size=2)))
    assert x.shape == (2, 4, 4, 3)
    pd.DataFrame({"file": ["images/cat/grey.png", "images/cat/gone.png"], "label": ["cat", "dog"]}).to_csv(
        tmp_path / "broken.csv", index=False)
    with pytest.raises(TlkerasError, match="1 image files.*gone.png"):
        load_examples(tmp_path / "broken.csv", task="classification", path_column="file")


def test_stratified_split_keeps_class_balance():
    targets = np.repeat([0, 1, 2], [60, 30, 10])
    examples = Examples([str(i) for i in range(100)], targets, ["a", "b", "c"], "text", "test")
    train, val = split_examples(examples, 0.2, seed=0)
    assert len(val) == 20 and len(train) == 80
    np.testing.assert_array_equal(np.bincount(val.targets), [12, 6, 2])
    assert not set(train.inputs) & set(val.inputs)
    again, _ = split_examples(examples, 0.2, seed=0)
    assert again.inputs == train.inputs


def test_split_with_a_singleton_class_warns_and_falls_back():
    examples = Examples(list("abcdef"), np.array([0, 0, 0, 1, 1, 2]), ["x", "y", "z"], "text", "test")
    with pytest.warns(UserWarning, match="not stratified.*z"):
        train, val = split_examples(examples, 0.5, seed=0)
    assert len(train) + len(val) == 6


def test_regression_split_is_plain():
    examples = Examples(list("abcd"), np.arange(4, dtype=np.float32), ["y"], "text", "t")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, val = split_examples(examples, 0.25, seed=0)
    assert len(val) == 1


def test_fingerprint_changes_with_labels_targets_and_files(image_folder):
    examples = load_examples(image_folder, task="classification")
    first = fingerprint(examples)
    assert fingerprint(load_examples(image_folder, task="classification")) == first
    renamed = Examples(examples.inputs, examples.targets, ["kitten", "dog"], "image", "x")
    assert fingerprint(renamed) != first
    flipped = Examples(examples.inputs, 1 - examples.targets, examples.labels, "image", "x")
    assert fingerprint(flipped) != first
    changed = examples.inputs[0]
    stat = os.stat(changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert fingerprint(examples) != first


def test_text_fingerprint_depends_on_text():
    a = Examples(["ab", "c"], np.array([0, 1]), ["x", "y"], "text", "t")
    b = Examples(["a", "bc"], np.array([0, 1]), ["x", "y"], "text", "t")
    assert fingerprint(a) != fingerprint(b)


def test_text_dataset_runs_a_keras_hub_preprocessor():
    import keras_hub

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "was", "great"]
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer=keras_hub.models.BertTokenizer(vocabulary=vocab), sequence_length=6)
    ds = text_dataset(["the movie was great", "great"], np.array([1, 0]), 2, preprocessor=preprocessor)
    x, y = next(iter(ds))
    np.testing.assert_array_equal(x["token_ids"].numpy(), [[2, 5, 6, 7, 8, 3], [2, 8, 3, 0, 0, 0]])
    np.testing.assert_array_equal(x["padding_mask"].numpy()[1], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(y.numpy(), [1, 0])
    plain = next(iter(text_dataset(["a", "b", "c"], None, 2)))
    assert plain.numpy().tolist() == [b"a", b"b"]
