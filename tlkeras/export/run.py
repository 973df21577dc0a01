"""Reads and checks a training run directory, the contract between recipes and export.

A run directory holds `config.yaml` (the resolved recipe), `labels.json`, `model.keras`, and optionally
`metrics.json` and `data_fingerprint.txt`. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlkeras.errors import TlkerasError

TASKS = ("classification", "multilabel", "regression")
INPUT_KINDS = ("image", "text")
REQUIRED_FILES = ("config.yaml", "labels.json", "model.keras")


@dataclass(frozen=True)
class InputSpec:
    """What the exported model takes: images resized to `image_size`, or text tokenized to
    `sequence_length` tokens."""

    kind: str  # one of INPUT_KINDS
    image_size: tuple[int, int] | None = None  # (height, width), images only
    sequence_length: int | None = None  # text only

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "image":
            return {"kind": "image", "image_size": list(self.image_size)}
        return {"kind": "text", "sequence_length": self.sequence_length}


@dataclass(frozen=True)
class RunInfo:
    """Everything export needs from a run directory, checked. The model itself loads separately."""

    run_dir: Path
    config: dict[str, Any]
    task: str
    backbone: str
    input: InputSpec
    labels: list[str]
    metrics: dict[str, Any] | None = None
    data_fingerprint: str | None = None
    export_options: dict[str, Any] = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        return self.run_dir / "model.keras"


def read_run(run_dir: str | Path) -> RunInfo:
    """RunInfo: Reads `run_dir` and checks it against the run directory contract.

    Args:
        run_dir: str or Path. A directory written by `tlkeras train`.

    Raises:
        TlkerasError: a missing file, an unknown task or input kind, or malformed labels; the message
            names the fix.

    Example:
    >>> info = read_run("runs/fashion")
    >>> info.task, info.input.image_size
    ('classification', (96, 96))
    """
    import yaml

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TlkerasError(f"run directory not found; pass the folder `tlkeras train` wrote. Received: "
                           f"run_dir={str(run_dir)!r}")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise TlkerasError(f"run directory lacks {', '.join(missing)}; train to completion with `tlkeras "
                           f"train` first. Received: run_dir={str(run_dir)!r}")
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except yaml.YAMLError as err:
        raise TlkerasError(f"config.yaml is not valid YAML ({_first_line(err)}); fix or re-train. "
                           f"Received: run_dir={str(run_dir)!r}") from None
    if not isinstance(config, dict):
        raise TlkerasError(f"config.yaml must hold a mapping; re-train to rewrite it. Received: "
                           f"config={config!r}")

    task = config.get("task")
    if task not in TASKS:
        raise TlkerasError(f"config.yaml 'task' must be one of {', '.join(TASKS)}. Received: task={task!r}")
    backbone = config.get("backbone")
    if not isinstance(backbone, str) or not backbone:
        raise TlkerasError(f"config.yaml needs 'backbone', a registry name. Received: backbone={backbone!r}")

    labels = _read_labels(run_dir / "labels.json", task)
    export_options = config.get("export") or {}
    if not isinstance(export_options, dict):
        raise TlkerasError(f"config.yaml 'export' must be a mapping of base_dir, name, tflite. Received: "
                           f"export={export_options!r}")
    return RunInfo(
        run_dir=run_dir,
        config=config,
        task=task,
        backbone=backbone,
        input=parse_input_spec(config.get("input")),
        labels=labels,
        metrics=_read_optional_json(run_dir / "metrics.json"),
        data_fingerprint=_read_optional_text(run_dir / "data_fingerprint.txt"),
        export_options=export_options,
    )


def parse_input_spec(raw: Any) -> InputSpec:
    """InputSpec: Checks a recipe's `input` mapping.

    Args:
        raw: dict. `{kind: image, image_size: [H, W]}` or `{kind: text, sequence_length: L}`.
    """
    if not isinstance(raw, dict) or raw.get("kind") not in INPUT_KINDS:
        raise TlkerasError("config.yaml 'input' must be {kind: image, image_size: [H, W]} or {kind: text, "
                           f"sequence_length: L}}. Received: input={raw!r}")
    if raw["kind"] == "image":
        size = raw.get("image_size")
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(s, int) and s > 0 for s in size)):
            raise TlkerasError(f"config.yaml 'input.image_size' must be [height, width] in pixels. "
                               f"Received: image_size={size!r}")
        return InputSpec("image", image_size=(int(size[0]), int(size[1])))
    length = raw.get("sequence_length")
    if not isinstance(length, int) or length <= 0:
        raise TlkerasError(f"config.yaml 'input.sequence_length' must be a positive int. "
                           f"Received: sequence_length={length!r}")
    return InputSpec("text", sequence_length=length)


def _read_labels(path: Path, task: str) -> list[str]:
    try:
        labels = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TlkerasError(f"labels.json is not valid JSON ({err.msg}); it must be a list of names. "
                           f"Received: path={str(path)!r}") from None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise TlkerasError(f"labels.json must be a JSON list of strings. Received: labels={labels!r}")
    if task != "regression" and not labels:
        raise TlkerasError(f"labels.json is empty but task is {task}; list the class names in output "
                           f"order. Received: path={str(path)!r}")
    if len(set(labels)) != len(labels):
        raise TlkerasError(f"labels.json repeats a name; class names must be unique. Received: labels={labels!r}")
    return labels


def _read_optional_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # metrics are informative only; a broken file must not block an export


def _read_optional_text(path: Path) -> str | None:
    return path.read_text().strip() if path.is_file() else None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]
