"""`export_model` (a Keras model + its preprocessing -> a served SavedModel version) and `export_run`
(a training run directory -> the same). The input kind supplies the serving signatures and warm-up
requests; the task supplies the named outputs."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tlkeras import inputs, tasks
from tlkeras.errors import TlkerasError
from tlkeras.evaluation import DEFAULT_THRESHOLD
from tlkeras.export import assets, saved_model
from tlkeras.inputs import InputSpec
from tlkeras.run_dir import RunDir

logger = logging.getLogger(__name__)


class CustomOpsWarning(UserWarning):
    """An exported graph uses ops that stock TF Serving builds may lack (e.g. tensorflow-text ops)."""


def export_model(model, base_dir: str | Path, name: str, *, task: str, labels: Sequence[str],
                 input_spec: InputSpec | dict, preprocessor=None, version: int | None = None,
                 tflite: bool = False, threshold: float = DEFAULT_THRESHOLD, backbone: str = "",
                 config: dict | None = None, metrics: Any = None, data_fingerprint: str | None = None) -> Path:
    """Path: Writes `model` with its preprocessing as version `base_dir/name/<version>` for TF Serving.

    Args:
        model: keras.Model. Takes its input kind's canonical inputs: float32 RGB pixels in [0, 255]
            (B, H, W, 3) for images; the tokenizer's dict for texts (or strings when `preprocessor` is None).
        base_dir: str or Path. The model base folder TF Serving is pointed at.
        name: str. The served model name, a folder under `base_dir`.
        task: str. "classification", "multilabel" or "regression".
        labels: list of str. Output names in order; empty for regression.
        input_spec: InputSpec or dict. E.g. `{kind: image, image_size: [H, W]}` or `{kind: text,
            sequence_length: L}`.
        preprocessor: the layer mapping raw inputs to the model's (a text model's keras-hub tokenizer).
            Defaults to None.
        version: int. Version to write. Defaults to the largest existing version + 1.
        tflite: bool. Also write `assets.extra/model.tflite`. Defaults to False.
        threshold: float. Multilabel decision threshold. Defaults to 0.5.
        backbone: str. Registry name of the backbone, for the model card. Defaults to "".
        config: dict. The resolved recipe, for the model card. Defaults to None.
        metrics: dict. Evaluation metrics, for the model card. Defaults to None.
        data_fingerprint: str. Training data hash, for the model card. Defaults to None.

    Returns:
        The version folder, e.g. `models/fashion/3`.

    Example:
    >>> export_model(model, "models", "fashion", task="classification", labels=names,
    ...              input_spec={"kind": "image", "image_size": [96, 96]})
    PosixPath('models/fashion/1')
    """
    spec = input_spec if isinstance(input_spec, InputSpec) else inputs.parse_spec(input_spec)
    kind = inputs.get(spec.kind)
    task = tasks.get(task)
    _check_name(name)
    _check_model(model, task, labels, spec)
    functions = kind.signatures(model, spec, task, labels, threshold, preprocessor)
    tracked = [preprocessor] if preprocessor is not None else []
    warmup = [assets.predict_log(name, signature, request) for signature, request in kind.warmup_inputs(spec)]

    def write(tmp_dir: Path, version_number: int) -> None:
        saved_model.save_signatures(tmp_dir, functions, tracked)
        custom_ops = saved_model.non_core_ops(tmp_dir)
        extra_dir = tmp_dir / assets.ASSETS_EXTRA
        extra_dir.mkdir(exist_ok=True)
        extra = {}
        if tflite:
            from tlkeras.export.tflite import TFLITE_FILE, convert_to_tflite

            extra["tflite"] = convert_to_tflite(model, extra_dir / TFLITE_FILE)
        assets.write_json(extra_dir / "labels.json", list(labels))
        assets.write_warmup_requests(extra_dir / assets.WARMUP_FILE, warmup)
        card = assets.model_card(
            name=name, version=version_number, task=task.name, backbone=backbone, input_spec=spec.to_dict(),
            labels=labels, signatures=describe_signatures(functions),
            preprocessing=kind.preprocessing_description(spec, preprocessor), custom_ops=custom_ops, config=config,
            metrics=metrics, data_fingerprint=data_fingerprint,
            threshold=threshold if task.name == "multilabel" else None, extra=extra,
        )
        assets.write_json(extra_dir / "model_card.json", card)
        if custom_ops:
            warnings.warn(CustomOpsWarning(
                f"{name}/{version_number} needs ops outside core TensorFlow ({', '.join(custom_ops)}); serve "
                "it with a model server that links tensorflow-text ops (README, Deploy section)"), stacklevel=3)

    return saved_model.write_version(Path(base_dir) / name, write, version)


def export_run(run_dir: str | Path, base_dir: str | Path | None = None, name: str | None = None,
               version: int | None = None, tflite: bool = False) -> Path:
    """Path: Exports a training run as a new TF Serving version, preprocessing included.

    Args:
        run_dir: str or Path. A run folder written by `tlkeras train`, or a recipe's output_dir (its
            latest run).
        base_dir: str or Path. The model base folder. Defaults to the recipe's `export.base_dir`.
        name: str. The served model name. Defaults to the recipe's `export.name`, else the recipe's
            output folder name.
        version: int. Version to write. Defaults to the largest existing version + 1.
        tflite: bool. Also write `assets.extra/model.tflite`. Defaults to the recipe's `export.tflite`.

    The recipe's `export.threshold` sets the multilabel decision threshold (default 0.5).

    Example:
    >>> export_run("runs/fashion", "models", "fashion")
    PosixPath('models/fashion/1')
    """
    run = RunDir.open(run_dir)
    run.check_complete()
    config = run.config()
    options = config.get("export") or {}
    base_dir = base_dir or options.get("base_dir")
    if not base_dir:
        raise TlkerasError("no export folder: pass --base-dir MODELS or set export.base_dir in the recipe. "
                           f"Received: run_dir={str(run.path)!r}")
    name = name or options.get("name") or _default_name(run)
    _check_name(name)  # before the model loads: the usual mistakes fail at once
    if Path(base_dir).exists() and not Path(base_dir).is_dir():
        raise TlkerasError(f"the export folder {base_dir} is a file, not a folder: pass another --base-dir. "
                           f"Received: base_dir={str(base_dir)!r}")
    tflite = bool(tflite or options.get("tflite", False))
    threshold = float(options.get("threshold", DEFAULT_THRESHOLD))
    spec = run.input_spec(config)
    model = load_run_model(run.model_file)
    preprocessor = None
    if not _takes_strings(model):
        from tlkeras import backbones

        preprocessor = backbones.load_preprocessor(config["backbone"], spec.sequence_length)
    return export_model(
        model, base_dir, name, task=config["task"], labels=run.labels(config["task"]), input_spec=spec,
        preprocessor=preprocessor, version=version, tflite=tflite, threshold=threshold, backbone=config["backbone"],
        config=run.recipe_config(), metrics=run.metrics(), data_fingerprint=run.data_fingerprint(),
    )


def _default_name(run: RunDir) -> str:
    # runs/<recipe>/<N>: the recipe's folder names the model, not the run number.
    folder = run.path.resolve()
    return folder.parent.name if folder.name.isdigit() else folder.name


def load_run_model(path: str | Path):
    """keras.Model: Loads a run's `model.keras`, with tlkeras's custom layers registered."""
    import keras

    import tlkeras.layers  # noqa: F401 - registers custom layers for deserialisation

    try:
        return keras.models.load_model(path, compile=False)
    except (ValueError, TypeError, OSError) as err:
        raise TlkerasError(f"cannot load {path} ({str(err).splitlines()[0]}); re-train or check that "
                           "tlkeras matches the version that trained it") from err


def describe_signatures(functions) -> dict[str, dict]:
    """dict: Signature name -> {"inputs": {name: {dtype, shape}}, "outputs": {name: {dtype, shape}}}."""
    described = {}
    for sig_name, function in functions.items():
        concrete = function.get_concrete_function()
        inputs_ = {spec.name: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
                   for spec in function.input_signature}
        outputs = {key: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
                   for key, spec in concrete.structured_outputs.items()}
        described[sig_name] = {"inputs": inputs_, "outputs": outputs}
    return described


def _check_name(name: str) -> None:
    from tlkeras.files import is_plain_name

    if not is_plain_name(name):
        raise TlkerasError("model name must be a plain folder name (not a number, no '/', not starting "
                           f"with '.'). Received: name={name!r}")


def _check_model(model, task, labels: Sequence[str], spec: InputSpec) -> None:
    output_shape = getattr(model, "output_shape", None)
    if isinstance(output_shape, tuple) and output_shape and isinstance(output_shape[-1], int):
        width = output_shape[-1]
        if task.name != "regression" and width != len(labels):
            raise TlkerasError(f"model has {width} outputs but labels.json lists {len(labels)} names; they "
                               f"must match, in output order. Received: labels={list(labels)!r}")
    if spec.image_size is not None:
        input_shape = getattr(model, "input_shape", None)
        if isinstance(input_shape, tuple) and len(input_shape) == 4:
            size = tuple(input_shape[1:3])
            if all(isinstance(s, int) for s in size) and size != tuple(spec.image_size):
                raise TlkerasError(f"model input is {size[0]}x{size[1]} but input.image_size is "
                                   f"{spec.image_size[0]}x{spec.image_size[1]}; fix config.yaml to the size "
                                   f"it was trained at. Received: image_size={list(spec.image_size)}")


def _takes_strings(model) -> bool:
    structure = model.input
    return not isinstance(structure, (dict, list, tuple)) and structure.dtype == "string"
