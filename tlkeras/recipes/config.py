"""The recipe schema: a YAML file maps onto `Recipe`, validated key by key.

Example recipe:

    task: classification
    backbone: efficientnet_lite0_imagenet
    data:
      train: data/train          # a folder with one subfolder per class, or a CSV/Parquet file
      validation_split: 0.2
      test: data/test
    head: {hidden_units: [256], dropout: 0.2}
    schedule: {strategy: feature_extraction, epochs: 10, learning_rate: 0.001}
    augment: {flip: horizontal}
    output_dir: runs/fashion
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tlkeras import tasks
from tlkeras.evaluation import DEFAULT_THRESHOLD
from tlkeras.files import is_plain_name
from tlkeras.schema import SchemaError, bounded, from_dict, to_dict

Strategy = Literal["feature_extraction", "layer_retraining", "gradual_unfreezing", "fine_tuning", "weight_init",
                   "contrastive", "auto"]


@dataclass
class DataConfig:
    train: str = ""
    validation: str | None = None
    validation_split: float = bounded(0.0, 0.0, 1.0, open_high=True)
    test: str | None = None
    path_column: str | None = None  # tables of files (images): column of file paths
    text_column: str | None = None  # tables of texts
    label_column: str | tuple[str, ...] = "label"  # a list for multi-target regression
    label_separator: str = "|"  # multilabel cells, e.g. "cat|dog"
    image_size: tuple[int, ...] = bounded((), 1, 8192)  # (height, width); defaults to the backbone's input size
    sequence_length: int | None = bounded(None, 1, 65536)  # texts; defaults to the backbone's
    clip_seconds: int | None = bounded(None, 1, 3600)  # audio: the window clips are padded or trimmed to
    batch_size: int = bounded(32, 1, 65536)
    # Feature extraction, validation and prediction. Batch 8 ran EfficientNet-Lite0 forward passes 1.27x
    # faster than batch 32 on a 2-core CPU and VGG16 no slower (bench/results/RESULTS.md, roofline).
    inference_batch_size: int = bounded(8, 1, 65536)
    skip_corrupt: bool = False  # skip unreadable inputs (listed in skipped.txt) instead of failing
    # Below this many training examples no validation split is held out: choices are made by k-fold
    # cross-validation over all of them (schedule.folds) and the final model is refit on every example.
    cross_validate_below: int = bounded(2000, 0)
    # "auto": balanced class weights when the smallest class has under half the examples of the largest.
    class_weight: Literal["auto", "balanced", "none"] = "auto"
    cache_features: bool = True  # reuse frozen-backbone features across epochs and runs


@dataclass
class HeadConfig:
    hidden_units: tuple[int, ...] = bounded((), 1, 1 << 20)
    dropout: float = bounded(0.2, 0.0, 1.0, open_high=True)
    activation: str = "relu"


@dataclass
class StageConfig:
    epochs: int = bounded(1, 0, 100000)
    unfreeze: int | str | tuple[str, ...] = bounded(0, 0)  # top N groups, "all", or group/layer-name prefixes
    learning_rate: float | None = bounded(None, 0.0, 10.0, open_low=True)  # defaults to the schedule's


@dataclass
class ScheduleConfig:
    strategy: Strategy = "feature_extraction"
    epochs: int = bounded(10, 0, 100000)
    learning_rate: float = bounded(1e-3, 0.0, 10.0, open_low=True)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: float = bounded(1e-4, 0.0, 1.0)
    backbone_lr_multiplier: float = bounded(0.1, 0.0, 100.0)  # discriminative LR: backbone LR = this × head LR
    head_epochs: int = bounded(0, 0, 100000)  # layer_retraining / fine_tuning: head-only epochs before unfreezing
    unfreeze: int | str | tuple[str, ...] = bounded(1, 0)  # layer_retraining: top N groups, or prefixes
    unfreeze_unit: Literal["groups", "layers"] = "groups"
    stages: tuple[StageConfig, ...] = ()  # gradual_unfreezing; empty = one more group per stage
    lr_schedule: Literal["constant", "cosine", "one_cycle"] = "constant"
    warmup_fraction: float = bounded(0.0, 0.0, 1.0)  # of each stage's steps, for cosine / one_cycle
    label_smoothing: float = bounded(0.0, 0.0, 1.0, open_high=True)
    recalibrate_batchnorm: bool = True  # after stages that train BN (weight_init): precise BN statistics
    folds: int = bounded(5, 2, 20)  # cross-validation folds for the probe's regularisation
    finetune_folds: int = bounded(3, 2, 20)  # LP-FT on small data: folds that choose the fine-tuning epochs
    lp_ft: bool = True  # layer_retraining / fine_tuning with a linear head: the converged probe first
    # contrastive (SetFit-style): pair rounds over the data, optimizer steps cap, encoder learning rate
    contrastive_iterations: int = bounded(20, 1, 1000)
    contrastive_max_steps: int = bounded(160, 1)
    contrastive_learning_rate: float = bounded(2e-5, 0.0, 1.0, open_low=True)
    contrastive_batch_size: int = bounded(16, 2, 4096)
    # auto: the time it may spend choosing among the probe, LP-FT and contrastive fine-tuning
    budget_minutes: float = bounded(30.0, 0.0, open_low=True)


@dataclass
class AugmentConfig:
    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = "none"
    rotation: float = bounded(0.0, 0.0, 1.0)  # fraction of a full turn
    zoom: float = bounded(0.0, 0.0, 1.0, open_high=True)
    contrast: float = bounded(0.0, 0.0, 1.0)
    translation: float = bounded(0.0, 0.0, 1.0)
    rand_augment: bool = False
    random_erasing: float = bounded(0.0, 0.0, 1.0)  # probability
    mixup: float = bounded(0.0, 0.0, 100.0)  # alpha; 0 disables
    cutmix: float = bounded(0.0, 0.0, 100.0)  # alpha; 0 disables
    tta: bool = False  # test-time augmentation: average each image's predictions with its mirror's
    def enabled(self) -> bool:
        """True when training inputs are augmented (test-time augmentation alone does not count)."""
        return dataclasses.replace(self, tta=False) != AugmentConfig()


@dataclass
class EarlyStoppingConfig:
    monitor: str = "val_loss"
    patience: int = bounded(3, 0, 100000)
    restore_best_weights: bool = True


@dataclass
class ReduceOnPlateauConfig:
    monitor: str = "val_loss"
    factor: float = bounded(0.3, 0.0, 1.0, open_low=True, open_high=True)
    patience: int = bounded(2, 0, 100000)
    min_lr: float = bounded(1e-6, 0.0, 10.0)


@dataclass
class CallbacksConfig:
    early_stopping: EarlyStoppingConfig | None = None
    reduce_on_plateau: ReduceOnPlateauConfig | None = None
    checkpoint: bool = True  # best model by val_loss, as checkpoints/best.keras
    backup: bool = True  # BackupAndRestore, for --resume
    tensorboard: bool = True
    progress: bool = True  # Keras progress bars (and the feature-extraction bar); false: silent


@dataclass
class ExportConfig:
    base_dir: str = "models"
    name: str = ""
    tflite: bool = False
    threshold: float = bounded(DEFAULT_THRESHOLD, 0.0, 1.0)  # multilabel: score at which a label is predicted


@dataclass
class RecommendConfig:
    """`backbone: auto`: how the backbone is chosen on the training data (`tlkeras recommend`)."""

    candidates: str | None = None  # fnmatch pattern on backbone names
    max_params: float | None = bounded(None, 0.0, open_low=True)
    max_latency_ms: float | None = bounded(None, 0.0, open_low=True)
    sample: int = bounded(500, 10)  # examples (stratified) the candidates are compared on


@dataclass
class Recipe:
    """A whole training recipe. `backbone` and `data.train` are required."""

    # a registry name; a list: the backbones' features concatenated; "auto": the best on the data (recommend:)
    backbone: str | tuple[str, ...] = ""
    task: str = "classification"  # a name in tlkeras.tasks
    backbone_weights: Literal["pretrained", "random"] = "pretrained"
    data: DataConfig = field(default_factory=DataConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    distribution: Literal["none", "mirrored", "multi_worker", "tpu"] = "none"
    seed: int = bounded(0, 0, 2**31 - 1)
    output_dir: str = "runs/run"
    export: ExportConfig | None = None
    recommend: RecommendConfig = field(default_factory=RecommendConfig)  # used when backbone is "auto"
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def parse_recipe(raw: dict[str, Any], overrides: list[str] = (), base_dir: Path | None = None) -> Recipe:
    """Validates a recipe mapping, after applying `--set key.sub=value` overrides.

    Relative paths (data, output_dir, export.base_dir) are resolved against `base_dir`, the recipe
    file's folder, so a recipe runs the same from any working directory.

    Example:
    >>> parse_recipe({"backbone": "minilm_l6_v2", "data": {"train": "t.csv"}}, ["schedule.epochs=3"])
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SchemaError(f"a recipe is a mapping of keys (backbone, data, schedule, ...). Received: {type(raw).__name__}")
    raw = copy.deepcopy(raw)  # overrides write into nested sections: keep the caller's intact
    for override in overrides:
        _apply_override(raw, override)
    recipe = from_dict(Recipe, raw)
    try:
        tasks.get(recipe.task)
    except tasks.UnknownTaskError as err:
        raise SchemaError(str(err)) from None
    if recipe.data.image_size and len(recipe.data.image_size) != 2:
        raise SchemaError(f"'data.image_size' is [height, width]. Received: data.image_size={list(recipe.data.image_size)}")
    if not recipe.backbone:
        raise SchemaError("the recipe needs 'backbone': a registry name (see `tlkeras registry list`)")
    if not recipe.data.train:
        raise SchemaError("the recipe needs 'data.train': an image folder or a CSV/Parquet file")
    if recipe.callbacks.reduce_on_plateau and recipe.schedule.lr_schedule != "constant":
        # Keras cannot change a scheduled learning rate: the first plateau would end the run.
        raise SchemaError("callbacks.reduce_on_plateau needs schedule.lr_schedule: constant; drop one of them. "
                          f"Received: lr_schedule={recipe.schedule.lr_schedule!r}")
    if recipe.export and recipe.export.name and not is_plain_name(recipe.export.name):
        raise SchemaError("'export.name' is the served model's folder under export.base_dir: a plain name (no '/', "
                          f"not starting with '.', not a number), e.g. pets. Received: export.name={recipe.export.name!r}")
    if base_dir is not None:
        resolve = lambda value: value if not value or Path(value).is_absolute() else str((base_dir / value).resolve())  # noqa: E731
        for key in ("train", "validation", "test"):
            setattr(recipe.data, key, resolve(getattr(recipe.data, key)))
        recipe.output_dir = resolve(recipe.output_dir)
        if recipe.export:
            recipe.export.base_dir = resolve(recipe.export.base_dir)
    return recipe


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` (no dot, or no exponent sign) as a string; in a recipe it is a float."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _mapping_without_repeats(loader, node, deep=False):
    # PyYAML keeps the last of two equal keys: the first value would be dropped without a word.
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen and key != "<<":
            raise yaml.constructor.ConstructorError(None, None, f"key '{key}' appears twice in one mapping",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_RecipeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Reads and validates a recipe YAML file; errors name the file and the key."""
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"recipe file {path} does not exist: pass the path of a recipe YAML file")
    if path.is_dir():
        raise SchemaError(f"{path} is a folder: pass the recipe YAML file itself (e.g. {path}/recipe.yaml)")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_RecipeLoader)
    except UnicodeDecodeError:
        raise SchemaError(f"{path} is not UTF-8 text: save the recipe as UTF-8 (is it a YAML file?)") from None
    except OSError as err:
        raise SchemaError(f"cannot read {path} ({err.strerror}): check its permissions") from None
    except yaml.YAMLError as err:
        raise SchemaError(f"{path}: not valid YAML: {_yaml_problem(err)}") from None
    try:
        return parse_recipe(raw, overrides, base_dir=path.parent)
    except SchemaError as err:
        raise SchemaError(f"{path}: {err}") from None


def _apply_override(raw: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise SchemaError(f"--set takes key=value, e.g. schedule.epochs=3. Received: {override!r}")
    try:
        value = yaml.load(text, Loader=_RecipeLoader)
    except yaml.YAMLError as err:
        raise SchemaError(f"--set {key}: the value is not valid YAML ({_yaml_problem(err)}); quote it, e.g. "
                          f"--set '{key}=\"{text}\"'. Received: {override!r}") from None
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if node.get(part) is None:  # absent, or an empty section in the YAML ("head:")
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise SchemaError(f"--set {key}: '{part}' is not a section")
    node[parts[-1]] = value


def _yaml_problem(err: yaml.YAMLError) -> str:
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(err).split())[:200]


__all__ = ["Recipe", "DataConfig", "HeadConfig", "ScheduleConfig", "StageConfig", "AugmentConfig",
           "CallbacksConfig", "ExportConfig", "load_recipe", "parse_recipe"]
