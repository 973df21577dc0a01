"""`InputKind`: everything that differs between images, texts and audio, behind one interface, and
`InputSpec`, what a trained model takes. Each kind lives in its own module (`image.py`, `text.py`, ...)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tlkeras.errors import TlkerasError

_SHOWN = 5


def first_few(items: Sequence, n: int = _SHOWN) -> str:
    """str: the first `n` items, comma-separated, and how many more there are."""
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def map_files(function: Callable[[str], Any], items) -> tuple[list[str], list]:
    """(paths, results): `function` of each file path, on a few threads (file checks are I/O bound)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    paths = [str(p) for p in items]
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        return paths, list(pool.map(function, paths))


def check_files(items, problem: Callable[[str], str | None], cannot: str, skip: bool) -> tuple[np.ndarray, list]:
    """(usable mask, [(path, reason)]): `problem(path)` of each file; unless `skip`, any problem is an error
    that says the files `cannot` (e.g. "images cannot be decoded") and names the fix."""
    paths, reasons = map_files(problem, items)
    bad = [(p, r) for p, r in zip(paths, reasons, strict=True) if r is not None]
    if bad and not skip:
        raise TlkerasError(f"{len(bad)} of {len(paths)} {cannot}: fix or delete them, or set data.skip_corrupt: "
                           f"true to skip them. Received: {first_few([f'{p} ({r})' for p, r in bad])}")
    return np.asarray([r is None for r in reasons], dtype=bool), bad


@dataclass(frozen=True)
class InputSpec:
    """What a model takes, as written in a run's `config.yaml` (`input:`) and a model card.

    Attributes:
        kind: str. The input kind's name ("image", "text", ...).
        image_size: (height, width) for images, else None.
        sequence_length: int for texts, else None.
        sample_rate: int for audio (Hz), else None.
        clip_seconds: float for audio: every clip is padded or trimmed to this length, else None.
    """

    kind: str
    image_size: tuple[int, int] | None = None
    sequence_length: int | None = None
    sample_rate: int | None = None
    clip_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """dict: the set fields, lists for tuples (YAML- and JSON-ready)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if v is not None}


class InputKind:
    """One input kind. Subclasses override what differs; the defaults suit kinds read from files.

    Attributes:
        name: str. "image", "text", ...
        file_extensions: tuple of str. Lower-case extensions of this kind's files in class folders;
            empty when the kind's data comes in tables only.
        table_column: str. The column a table holds this kind's inputs in by default.
        spec_fields: tuple of str. The `InputSpec` fields this kind sets.
    """

    name: str = ""
    preprocessor_files: bool = False  # the preprocessor reads the backbone's files (a tokenizer's vocabulary)
    file_extensions: tuple[str, ...] = ()
    table_column: str = ""
    spec_fields: tuple[str, ...] = ()
    # `strategy: auto` also scores SetFit-style contrastive tuning: for kinds whose encoders it is measured
    # to help (sentence encoders; see the README's Benchmarks for images).
    auto_tries_contrastive: bool = False

    @property
    def reads_files(self) -> bool:
        """bool: inputs are file paths (images, audio) rather than the data itself (texts)."""
        return bool(self.file_extensions)

    def input_column(self, path_column: str | None, text_column: str | None) -> str:
        """str: the table column holding this kind's inputs, from a recipe's `data.path_column` /
        `data.text_column`."""
        return path_column or self.table_column

    def table_inputs(self, values: Sequence[str], base, column: str, source: str) -> list[str]:
        """list of str: a table column's cells as this kind's inputs. File kinds resolve relative paths
        against the table's folder `base` and raise naming any file that does not exist."""
        import os

        resolved = [p if os.path.isabs(p) else os.path.join(base, p) for p in map(os.path.expanduser, values)]
        missing = [p for p in resolved if not os.path.isfile(p)]
        if missing:
            shown = ", ".join(missing[:5]) + (f", ... ({len(missing) - 5} more)" if len(missing) > 5 else "")
            raise TlkerasError(f"{len(missing)} files named in column '{column}' of {source} do not exist (relative "
                               f"paths are read from {base}): fix the paths. Received: {shown}")
        return resolved

    def prepare_inputs(self, items: Sequence[str]) -> tuple[list[str], list[str]]:
        """(inputs, notes): `items` as training reads them; a kind may replace an input it cannot decode as it
        is by a converted copy (images in formats TensorFlow lacks), and says so in a note. Defaults to the
        items unchanged."""
        return list(items), []

    # ------------------------------------------------------------------------------------ input spec
    def spec(self, entry, data) -> InputSpec:
        """InputSpec: the input a recipe trains at, from the backbone's entry and the recipe's `data`."""
        raise NotImplementedError

    def parse_spec(self, raw: dict) -> InputSpec:
        """InputSpec: a spec read back from a run's config.yaml, checked."""
        raise NotImplementedError

    # -------------------------------------------------------------------------------------- checking
    def check(self, items: Sequence[str], skip: bool) -> tuple[np.ndarray, list[tuple[str, str]]]:
        """Checks that every input can be read, so a bad file fails now rather than mid-epoch.

        Returns:
            `(ok, bad)`: a boolean mask over `items`, and `(item, reason)` for each bad one. With
            `skip=False` a bad item raises instead, naming `data.skip_corrupt`.
        """
        return np.ones(len(items), dtype=bool), []

    def fingerprint_item(self, item: str) -> bytes:
        """bytes: what identifies one input in a data set's fingerprint (cheap: no file is read)."""
        return item.encode("utf-8", "surrogatepass")

    def content_key(self, item: str) -> str:
        """str: a hash of one input's content, the per-example key of the feature cache."""
        return hashlib.sha256(item.encode("utf-8", "surrogatepass")).hexdigest()

    # ------------------------------------------------------------------------------ building models
    def network_input(self, spec: InputSpec):
        """keras.KerasTensor: the input a SavedModel / TF-Hub module of this kind takes."""
        raise NotImplementedError

    def adapt(self, inputs, spec_in: InputSpec, spec_out: InputSpec):
        """The canonical `inputs` of `spec_in` as a network built for `spec_out` takes them (an ensemble
        member's own input size). Kinds whose specs must match refuse a difference."""
        if spec_in != spec_out:
            raise TlkerasError(f"the ensemble's backbones take different {self.name} inputs ({spec_in.to_dict()} vs "
                               f"{spec_out.to_dict()}); pick backbones that agree")
        return inputs

    def feature_extractor(self, entry, network, spec: InputSpec):
        """keras.Model: `network` wrapped to take this kind's canonical inputs and return pooled
        features (B, feature_dim)."""
        raise NotImplementedError

    def preprocessor(self, entry, handle: str, spec: InputSpec):
        """The layer mapping raw inputs to what the extractor takes (a tokenizer), or None when the
        kind's own decoding is enough."""
        return None

    def cache_key(self, entry, spec: InputSpec) -> dict:
        """dict: this kind's part of the feature-cache key: what changes features besides the data."""
        return {"kind": self.name, **spec.to_dict()}

    # ------------------------------------------------------------------------------------- datasets
    def dataset(self, inputs: Sequence[str], targets, spec: InputSpec, batch_size: int, preprocessor=None,
                shuffle: bool = False, seed: int = 0, augment: Callable | None = None, repeat: bool = False,
                first_epoch: int | None = None, view: str = "identity"):
        """tf.data.Dataset: batches of the extractor's inputs (and targets when given), in one of the kind's
        `feature_views`. With `first_epoch`, an endless run of epochs from that one on, each in an order fixed
        by `seed` and its number (`pipeline.epochs`), for `fit(steps_per_epoch=...)`: the same in fresh,
        resumed and distributed runs."""
        raise NotImplementedError

    def augmenter(self, config, seed: int, mix_labels: bool) -> Callable | None:
        """The batch-level `augment(inputs, targets)` a recipe's `augment:` section asks for, or None.

        Kinds without augmentation refuse a non-empty section rather than ignore it.
        """
        if config.enabled():
            raise TlkerasError(f"the augment: section applies to image recipes; a {self.name} recipe cannot use "
                               f"it: remove it. Received: augment={config}")
        return None

    def feature_views(self, config) -> tuple[str, ...] | None:
        """The deterministic views of each input an `augment:` section amounts to, when it amounts to some
        (images: `flip: horizontal` alone -> ("identity", "flip")), so a frozen backbone's features can be
        cached once per view; None when the augmentation is random and must run every epoch."""
        return None if config.enabled() else ("identity",)

    # The feature views `test_time_augmented` averages over, for predictions from cached features.
    tta_views: tuple[str, ...] = ("identity",)

    def test_time_augmented(self, model):
        """keras.Model: `model` averaging its outputs over augmented views of each input (`augment.tta`, the
        views `tta_views` names). Kinds without such views refuse."""
        raise TlkerasError(f"augment.tta averages over mirrored images; a {self.name} recipe cannot use it: remove "
                           "it")

    # ---------------------------------------------------------------------------------------- serving
    def signatures(self, model, spec: InputSpec, task, labels: Sequence[str], threshold: float,
                   preprocessor=None) -> dict[str, Callable]:
        """dict: serving signature name -> tf.function taking raw inputs and returning named outputs."""
        raise NotImplementedError

    def warmup_inputs(self, spec: InputSpec) -> list[tuple[str, dict]]:
        """list of (signature name, inputs): a few real requests TF Serving replays before serving."""
        raise NotImplementedError

    def preprocessing_description(self, spec: InputSpec, preprocessor=None) -> str:
        """str: what the serving graph does to raw inputs, for the model card."""
        raise NotImplementedError

    def describe_example(self, item: str) -> dict:
        """dict: how the report shows one example: {"text": ...} or {"image": PNG bytes}."""
        return {"text": item}

    def __repr__(self) -> str:
        return f"InputKind({self.name!r})"


def positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise TlkerasError(f"{what} must be a positive integer. Received: {value!r}")
    return int(value)
