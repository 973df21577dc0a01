"""Data for recipes: read an image folder or a table into `Examples`, check images, split, fingerprint,
and build the `tf.data` pipelines that feed training.

Images reach the model as float32 RGB pixels in [0, 255] of shape (B, H, W, 3); backbones normalise inside.
Reading, checking and splitting use numpy, pandas and PIL only: TensorFlow is imported by the functions
that build datasets.

Example:
>>> train = load_examples("flowers/train", task="classification")
>>> ok, bad = check_images(train.inputs, on_error="skip")
>>> train, val = split_examples(train.select(ok), fraction=0.2, seed=0)
>>> ds = image_dataset(train.inputs, train.targets, image_size=224, batch_size=32, shuffle=True)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tlkeras.errors import TlkerasError
from tlkeras.suggest import did_you_mean

TASKS = ("classification", "multilabel", "regression")
KINDS = ("image", "text")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
TABLE_EXTENSIONS = (".csv", ".tsv", ".parquet", ".pq")
# What tf.io.decode_image reads. PIL opens more (TIFF, ICO, ...), which would then fail mid-epoch.
_TF_DECODABLE = {"JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP"}
_SHOWN = 5  # how many offending rows or files a message lists


@dataclass
class Examples:
    """A labelled set of inputs, as `load_examples` reads it.

    Attributes:
        inputs: list[str]. Image file paths (kind "image") or texts (kind "text").
        targets: np.ndarray. int64 class ids (N,) for classification, float32 multi-hot (N, C) for
            multilabel, float32 (N,) or (N, T) for regression.
        labels: list[str]. Class names in id order; for regression, the target column names.
        kind: str. "image" or "text".
        source: str. Where the examples came from, for messages.
        task: str. One of `TASKS`. Defaults to None, inferred from `targets`: integer ids mean
            classification, 0/1 rows as wide as `labels` mean multilabel, anything else regression.
    """

    inputs: list[str]
    targets: np.ndarray
    labels: list[str]
    kind: str
    source: str
    task: str | None = None

    def __post_init__(self):
        if len(self.inputs) != len(self.targets):
            raise TlkerasError(
                f"inputs and targets differ in length; Received: len(inputs)={len(self.inputs)}, "
                f"len(targets)={len(self.targets)}"
            )
        if self.task is None:
            self.task = _infer_task(self.targets, self.labels)

    def __len__(self) -> int:
        return len(self.inputs)

    def select(self, indices: Sequence[int] | np.ndarray) -> Examples:
        """Examples: the examples at `indices` (positions or a boolean mask), in that order."""
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        indices = indices.astype(np.int64)
        return dataclasses.replace(
            self, inputs=[self.inputs[i] for i in indices], targets=self.targets[indices],
            labels=list(self.labels),
        )


def _infer_task(targets: np.ndarray, labels: list[str]) -> str:
    if np.issubdtype(targets.dtype, np.integer):
        return "classification"
    if targets.ndim == 2 and targets.shape[1] == len(labels) and np.isin(targets, (0, 1)).all():
        return "multilabel"
    return "regression"


def load_examples(
    source: str | Path,
    task: str,
    kind: str | None = None,
    path_column: str | None = None,
    text_column: str | None = None,
    label_column: str | Sequence[str] = "label",
    label_separator: str = "|",
    labels: Sequence[str] | None = None,
) -> Examples:
    """Examples: reads an image folder or a CSV / TSV / Parquet table.

    An image folder holds one subfolder per class (classification only); class names are the sorted
    subfolder names. Files that are not images (by extension) raise, unless hidden (leading dot). A table
    holds one row per example. Nothing is dropped silently: missing values and missing files raise.

    Args:
        source: str. An image folder, or a `.csv`, `.tsv`, `.parquet` file.
        task: str. "classification", "multilabel" or "regression".
        kind: str. "image" or "text" for tables. Defaults to None: "image" when `path_column` is given,
            "text" when `text_column` is, otherwise guessed from a column named "text" or "path".
        path_column: str. Column of image paths; relative paths are read from the table's folder.
            Defaults to None ("path").
        text_column: str. Column of texts. Defaults to None ("text").
        label_column: str or list[str]. Column of labels; for regression, one or more numeric
            columns. Defaults to "label".
        label_separator: str. For multilabel, what joins the labels of one cell ("cat|dog").
            Defaults to "|".
        labels: list[str]. The training set's labels, when loading validation or test data, so that
            ids match; a label not among them raises. Defaults to None (labels found here, sorted).

    Example:
    >>> train = load_examples("reviews/train.csv", task="classification", kind="text")
    >>> test = load_examples("reviews/test.csv", task="classification", kind="text", labels=train.labels)
    """
    if task not in TASKS:
        raise TlkerasError(f"unknown task{did_you_mean(str(task), TASKS)}: use one of {', '.join(TASKS)}. "
                           f"Received: task={task!r}")
    if kind is not None and kind not in KINDS:
        raise TlkerasError(f"unknown data kind{did_you_mean(str(kind), KINDS)}: use 'image' or 'text'. "
                           f"Received: kind={kind!r}")
    source = Path(source).expanduser()
    if source.is_dir():
        return _load_image_folder(source, task, kind, labels)
    if not source.exists():
        raise TlkerasError(f"data source not found: give an image folder or a table file. "
                           f"Received: source={source}")
    if source.suffix.lower() not in TABLE_EXTENSIONS:
        raise TlkerasError(
            f"cannot read {source.name}: data must be an image folder or a {'/'.join(TABLE_EXTENSIONS)} "
            f"table. Received: source={source}"
        )
    return _load_table(source, task, kind, path_column, text_column, label_column, label_separator, labels)


def _load_image_folder(folder: Path, task: str, kind: str | None, labels) -> Examples:
    if task != "classification":
        raise TlkerasError(
            f"an image folder (one subfolder per class) holds classification data only; for {task} "
            f"use a CSV or Parquet table with a path column. Received: task={task!r}, source={folder}"
        )
    if kind not in (None, "image"):
        raise TlkerasError(f"{folder} is a folder, which tlkeras reads as images: for texts give a table. "
                           f"Received: kind={kind!r}")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    class_dirs = [p for p in entries if p.is_dir()]
    stray = [p.name for p in entries if not p.is_dir()]
    if not class_dirs:
        raise TlkerasError(f"no class subfolders in {folder}: put each class's images in a subfolder named "
                           f"after the class (e.g. {folder}/cat/1.jpg). Received: source={folder}")
    if stray:
        raise TlkerasError(
            f"{len(stray)} files at the top level of {folder} belong to no class: move them into a class "
            f"subfolder or delete them. Received: {_first(stray)}"
        )
    class_names = _class_names([d.name for d in class_dirs], labels, f"the subfolders of {folder}")
    ids = {name: i for i, name in enumerate(class_names)}
    inputs, targets, not_images, empty = [], [], [], []
    for class_dir in class_dirs:
        files = _files_below(class_dir.absolute())
        images = [f for f in files if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
        not_images += [f for f in files if os.path.splitext(f)[1].lower() not in IMAGE_EXTENSIONS]
        if not images:
            empty.append(class_dir.name)
        inputs += images
        targets += [ids[class_dir.name]] * len(images)
    if not_images:
        raise TlkerasError(
            f"{len(not_images)} files in {folder} are not images ({', '.join(IMAGE_EXTENSIONS)}): move or "
            f"delete them, or hide them with a leading dot. Received: {_first(not_images)}"
        )
    if empty:
        raise TlkerasError(f"class folders with no images in {folder}: add images or delete the folders. "
                           f"Received: {_first(empty)}")
    return Examples(inputs, np.asarray(targets, np.int64), class_names, "image", str(folder), task)


def _files_below(folder: Path) -> list[str]:
    files = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
    return files


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            table = pd.read_parquet(path)
        else:
            # Only empty cells are missing: a label or a review reading "NA" or "null" is data.
            table = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False,
                                na_values=[""])
    except Exception as error:  # pandas and pyarrow raise many types for a malformed file
        raise TlkerasError(f"cannot read {path}: {type(error).__name__}: {error}") from error
    table.columns = [str(c) for c in table.columns]
    return table


def _load_table(path, task, kind, path_column, text_column, label_column, separator, labels) -> Examples:
    table = _read_table(path)
    source = str(path)
    if kind is None:
        kind = _guess_kind(table, path_column, text_column, source)
    input_column = (path_column or "path") if kind == "image" else (text_column or "text")
    label_columns = [label_column] if isinstance(label_column, str) else list(label_column)
    if task != "regression" and len(label_columns) != 1:
        raise TlkerasError(f"{task} takes one label column; several are for regression. "
                           f"Received: label_column={label_columns}")
    for column in (input_column, *label_columns):
        _require_column(table, column, source)
        _require_no_missing(table[column], column, source)
    inputs = [str(x) for x in table[input_column]]
    if kind == "image":
        inputs = _resolve_image_paths(inputs, path.parent.absolute(), input_column, source)
    if task == "regression":
        targets = np.stack([_numeric(table[c], c, source) for c in label_columns], axis=-1)
        if isinstance(label_column, str):
            targets = targets[:, 0]
        return Examples(inputs, targets, label_columns, kind, source, task)
    cells = table[label_columns[0]]
    if task == "classification":
        names = [_label_text(v) for v in cells]
        class_names = _class_names(names, labels, f"column '{label_columns[0]}' of {source}")
        ids = {name: i for i, name in enumerate(class_names)}
        targets = np.asarray([ids[n] for n in names], np.int64)
        return Examples(inputs, targets, class_names, kind, source, task)
    rows = [[part.strip() for part in _label_text(v).split(separator) if part.strip()] for v in cells]
    found = [n for row in rows for n in row]
    class_names = _class_names(found, labels, f"column '{label_columns[0]}' of {source}")
    ids = {name: i for i, name in enumerate(class_names)}
    targets = np.zeros((len(rows), len(class_names)), np.float32)
    for r, row in enumerate(rows):
        targets[r, [ids[n] for n in row]] = 1.0
    return Examples(inputs, targets, class_names, kind, source, task)


def _guess_kind(table: pd.DataFrame, path_column, text_column, source: str) -> str:
    if path_column and text_column:
        raise TlkerasError(f"give path_column (images) or text_column (texts), not both. "
                           f"Received: path_column={path_column!r}, text_column={text_column!r}")
    if path_column or (not text_column and "path" in table.columns and "text" not in table.columns):
        return "image"
    if text_column or "text" in table.columns:
        return "text"
    raise TlkerasError(
        f"cannot tell whether {source} holds images or texts: set data.kind ('image' or 'text') and "
        f"path_column or text_column. Received: columns={list(table.columns)}"
    )


def _require_column(table: pd.DataFrame, column: str, source: str) -> None:
    if column not in table.columns:
        raise TlkerasError(f"column '{column}' not found in {source}{did_you_mean(column, table.columns)}. "
                           f"Received: columns={list(table.columns)}")


def _require_no_missing(values: pd.Series, column: str, source: str) -> None:
    missing = values.isna().to_numpy(dtype=bool)
    if not pd.api.types.is_numeric_dtype(values):
        missing = missing | np.asarray([isinstance(v, str) and not v.strip() for v in values], dtype=bool)
    if missing.any():
        rows = np.flatnonzero(missing)
        raise TlkerasError(
            f"column '{column}' of {source} has {len(rows)} missing values: fill them or remove those rows "
            f"(tlkeras drops nothing silently). Received: rows {_first(rows.tolist())} "
            "(0-based, header excluded)"
        )


def _numeric(values: pd.Series, column: str, source: str) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(numbers))
    if len(bad):
        raise TlkerasError(
            f"regression column '{column}' of {source} has {len(bad)} values that are not finite numbers: "
            f"fix them. Received: {_first([f'row {i}: {values.iloc[i]!r}' for i in bad])}"
        )
    return numbers.astype(np.float32)


def _label_text(value) -> str:
    # Integer-valued floats come from numeric columns; "1.0" and "1" must be the same class.
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return str(value).strip()


def _class_names(found: Sequence[str], labels: Sequence[str] | None, where: str) -> list[str]:
    if labels is not None:
        labels = [str(x) for x in labels]
        unseen = sorted(set(found) - set(labels))
        if unseen:
            raise TlkerasError(
                f"label '{unseen[0]}' in {where} is not among the {len(labels)} training labels"
                f"{did_you_mean(unseen[0], labels)}: fix or remove those examples. Received: unseen labels "
                f"{_first(unseen)}"
            )
        return labels
    names = sorted(set(found))
    if names and all(n.lstrip("-").isdigit() for n in names):
        names.sort(key=int)  # class ids 2 < 10
    return names


def _resolve_image_paths(paths: list[str], base: Path, column: str, source: str) -> list[str]:
    resolved = [p if os.path.isabs(p) else os.path.join(base, p) for p in map(os.path.expanduser, paths)]
    missing = [p for p in resolved if not os.path.isfile(p)]
    if missing:
        raise TlkerasError(
            f"{len(missing)} image files named in column '{column}' of {source} do not exist (relative paths "
            f"are read from {base}): fix the paths. Received: {_first(missing)}"
        )
    return resolved


def _first(items: Sequence, n: int = _SHOWN) -> str:
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def check_images(paths: Sequence[str], on_error: str = "raise") -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Checks that every image decodes, so a bad file fails now rather than in the middle of an epoch.

    Each file is opened, verified and fully decoded with PIL (JPEGs at reduced scale, which still reads
    every byte), in threads. Formats PIL reads but `tf.io.decode_image` does not (TIFF, ...) count as bad.

    Args:
        paths: list[str]. Image files.
        on_error: str. "raise" raises listing the first bad files; "skip" returns them for the caller to
            report. Defaults to "raise".

    Returns:
        `(ok, bad)`: a boolean mask over `paths`, and `(path, reason)` for each bad file.

    Example:
    >>> ok, bad = check_images(train.inputs, on_error="skip")
    >>> train = train.select(ok)
    """
    if on_error not in ("raise", "skip"):
        raise TlkerasError(f"on_error must be 'raise' or 'skip'. Received: on_error={on_error!r}")
    paths = [str(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        reasons = list(pool.map(_image_problem, paths))
    bad = [(p, r) for p, r in zip(paths, reasons, strict=True) if r is not None]
    if bad and on_error == "raise":
        raise TlkerasError(
            f"{len(bad)} of {len(paths)} images cannot be decoded: fix or delete them, or set "
            f"data.skip_corrupt: true to skip them. Received: {_first([f'{p} ({r})' for p, r in bad])}"
        )
    return np.asarray([r is None for r in reasons], dtype=bool), bad


def _image_problem(path: str) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image_format = image.format
            image.verify()
        if image_format not in _TF_DECODABLE:
            return f"{image_format} is not decodable by TensorFlow; convert to PNG or JPEG"
        with Image.open(path) as image:  # verify() leaves the image unusable: open again to decode
            if image_format == "JPEG":
                image.draft(image.mode, (1, 1))
            image.load()
    except Exception as error:  # any failure means the file cannot be trained on
        return f"{type(error).__name__}: {error}"
    return None


def split_examples(examples: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    """Splits off a validation set, stratified by class for classification.

    Stratifying needs two examples of every class and at least one per class on each side; otherwise the
    split is plain and a `UserWarning` says why.

    Args:
        examples: Examples.
        fraction: float. Share of examples for validation, in (0, 1).
        seed: int. Seed of the shuffle.

    Returns:
        `(train, val)`, each in the original order.

    Example:
    >>> train, val = split_examples(load_examples("flowers", task="classification"), 0.2, seed=0)
    """
    from sklearn.model_selection import train_test_split

    n = len(examples)
    n_val = math.ceil(fraction * n) if 0 < fraction < 1 else 0
    if not 0 < n_val < n:
        raise TlkerasError(f"the validation fraction must leave at least one example on each side of the "
                           f"split of {n} examples. Received: fraction={fraction}")
    stratify = None
    if examples.task == "classification":
        counts = np.bincount(examples.targets)
        present = np.flatnonzero(counts)
        rare = [examples.labels[i] for i in present if counts[i] < 2]
        if rare:
            warnings.warn(f"validation split is not stratified: classes with one example: {_first(rare)}",
                          stacklevel=2)
        elif min(n_val, n - n_val) < len(present):
            warnings.warn(f"validation split is not stratified: {len(present)} classes do not fit in "
                          f"{min(n_val, n - n_val)} examples", stacklevel=2)
        else:
            stratify = examples.targets
    train_idx, val_idx = train_test_split(np.arange(n), test_size=n_val, random_state=seed, stratify=stratify)
    train = dataclasses.replace(examples.select(np.sort(train_idx)),
                                source=f"{examples.source} (train split)")
    val = dataclasses.replace(examples.select(np.sort(val_idx)),
                              source=f"{examples.source} (validation split, {fraction:g})")
    return train, val


def fingerprint(examples: Examples) -> str:
    """str: a sha256 hex digest of the examples, stable across runs; a cache key for frozen features.

    Images count by path, size and modification time (cheap: no file is read); texts by their content.
    Targets, labels, kind and task count too.
    """
    digest = hashlib.sha256()
    header = {"kind": examples.kind, "task": examples.task, "labels": list(examples.labels)}
    digest.update(json.dumps(header, sort_keys=True).encode())
    targets = np.ascontiguousarray(examples.targets)
    digest.update(f"{targets.dtype.str}{targets.shape}".encode())
    digest.update(targets.tobytes())
    for item in examples.inputs:
        if examples.kind == "image":
            try:
                stat = os.stat(item)
            except OSError as error:
                raise TlkerasError(f"image file disappeared: {item} ({error.strerror})") from error
            item = f"{item}\0{stat.st_size}\0{stat.st_mtime_ns}"
        data = item.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def image_dataset(
    paths: Sequence[str],
    targets: np.ndarray | None,
    image_size: int | tuple[int, int],
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    augment: Callable | None = None,
    repeat: bool = False,
):
    """tf.data.Dataset: batches of `(pixels, targets)` read from image files.

    Pixels are float32 RGB in [0, 255] of shape (B, H, W, 3): grey images become RGB, alpha is dropped,
    animations keep their first frame, and every image is resized bilinearly (no antialiasing) to
    `image_size`.

    Args:
        paths: list[str]. Image files (JPEG, PNG, BMP, GIF, WebP).
        targets: np.ndarray. One row per path, or None to yield pixels only.
        image_size: int or (height, width).
        batch_size: int.
        shuffle: bool. Reshuffle every epoch. Defaults to False.
        seed: int. Seed of the shuffle. Defaults to 0.
        augment: callable. Called on each batch as `augment(pixels, targets)` and returning the
            pair, so label-mixing augmentations (MixUp, CutMix) can change targets too. Build its
            Keras layers outside this function. Needs targets. Defaults to None.
        repeat: bool. Repeat forever. Defaults to False.

    Example:
    >>> ds = image_dataset(train.inputs, train.targets, 224, 32, shuffle=True,
    ...                    augment=lambda x, y: (flip(x, training=True), y))
    """
    import tensorflow as tf

    height, width = _pair(image_size)

    def read(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.image.resize(image, (height, width), method="bilinear", antialias=False)

    ds = _shuffled(_slices([str(p) for p in paths], targets), len(paths), shuffle, seed, repeat)
    ds = _map_inputs(ds, read, targets is not None).batch(batch_size)
    return _finish(ds, targets is not None, augment)


def array_image_dataset(
    images: np.ndarray,
    targets: np.ndarray | None,
    image_size: int | tuple[int, int],
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    augment: Callable | None = None,
    repeat: bool = False,
):
    """tf.data.Dataset: batches of `(pixels, targets)` from images in memory, as `image_dataset` yields.

    Args:
        images: np.ndarray. (N, h, w) or (N, h, w, c) with c in 1 (grey), 3 (RGB) or 4 (RGBA, alpha is
            dropped); uint8, or floats already in [0, 255].
        targets, image_size, batch_size, shuffle, seed, augment, repeat: as in `image_dataset`.

    Example:
    >>> (x, y), _ = tlkeras.datasets.load_fashion_mnist_arrays()
    >>> ds = array_image_dataset(x, y, image_size=224, batch_size=32)
    """
    import tensorflow as tf

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise TlkerasError(f"images must have shape (N, h, w) or (N, h, w, 1|3|4). "
                           f"Received: shape={images.shape}")
    _check_pixel_range(images)
    height, width = _pair(image_size)
    channels = images.shape[-1]

    def to_pixels(batch):
        batch = tf.cast(batch, tf.float32)
        if channels == 1:
            batch = tf.image.grayscale_to_rgb(batch)
        elif channels == 4:
            batch = batch[..., :3]
        return tf.image.resize(batch, (height, width), method="bilinear", antialias=False)

    # Batch before converting: the shuffle buffer keeps the compact dtype, and resizing runs per batch.
    ds = _shuffled(_slices(images, targets), len(images), shuffle, seed, repeat).batch(batch_size)
    ds = _map_inputs(ds, to_pixels, targets is not None)
    return _finish(ds, targets is not None, augment)


def _check_pixel_range(images: np.ndarray) -> None:
    if images.size == 0:
        return
    top = images.max()
    if np.issubdtype(images.dtype, np.floating) and top <= 1.0:
        raise TlkerasError(f"images look scaled to [0, 1]; tlkeras expects pixels in [0, 255]: pass "
                           f"images * 255. Received: max={top}")
    if np.issubdtype(images.dtype, np.integer) and top > 255:
        raise TlkerasError(f"integer images must hold 8-bit pixels in [0, 255]: rescale them. "
                           f"Received: dtype={images.dtype}, max={top}")


def text_dataset(
    texts: Sequence[str],
    targets: np.ndarray | None,
    batch_size: int,
    preprocessor: Callable | None = None,
    shuffle: bool = False,
    seed: int = 0,
    repeat: bool = False,
):
    """tf.data.Dataset: batches of `(texts, targets)`, tokenised by `preprocessor` when given.

    Args:
        texts: list[str].
        targets: np.ndarray. One row per text, or None to yield inputs only.
        batch_size: int.
        preprocessor: callable. Maps a batch of strings to the backbone's inputs, e.g. the keras-hub
            preprocessor from `backbones.load_tokenizer` (a dict of token_ids and padding_mask).
            Defaults to None (batches of strings).
        shuffle: bool. Reshuffle every epoch. Defaults to False.
        seed: int. Seed of the shuffle. Defaults to 0.
        repeat: bool. Repeat forever. Defaults to False.

    Example:
    >>> ds = text_dataset(train.inputs, train.targets, 32, backbones.load_tokenizer("minilm_l6_v2", 128))
    """
    ds = _shuffled(_slices([str(t) for t in texts], targets), len(texts), shuffle, seed, repeat)
    ds = ds.batch(batch_size)
    if preprocessor is not None:
        ds = _map_inputs(ds, preprocessor, targets is not None)
    return _finish(ds, targets is not None, None)


def _pair(image_size: int | Sequence[int]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise TlkerasError(f"image_size must be a positive int or (height, width). "
                           f"Received: image_size={image_size}")
    return int(size[0]), int(size[1])


def _slices(inputs, targets):
    import tensorflow as tf

    if targets is None:
        return tf.data.Dataset.from_tensor_slices(inputs)
    targets = np.asarray(targets)
    if len(targets) != len(inputs):
        raise TlkerasError(f"inputs and targets differ in length. Received: len(inputs)={len(inputs)}, "
                           f"len(targets)={len(targets)}")
    return tf.data.Dataset.from_tensor_slices((inputs, targets))


def _shuffled(ds, size: int, shuffle: bool, seed: int, repeat: bool):
    # Shuffle before decoding, so the buffer holds every example's path (or compact array) and the
    # whole set is mixed; shuffle before repeat, so epochs differ yet never overlap.
    if shuffle:
        ds = ds.shuffle(max(size, 1), seed=seed, reshuffle_each_iteration=True)
    return ds.repeat() if repeat else ds


def _map_inputs(ds, fn: Callable, has_targets: bool):
    import tensorflow as tf

    if has_targets:
        return ds.map(lambda x, y: (fn(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _finish(ds, has_targets: bool, augment: Callable | None):
    import tensorflow as tf

    if augment is not None:
        if not has_targets:
            raise TlkerasError("augmentation needs targets: pass them with the images")
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
