"""The run directory: the one place that knows its layout. The trainer writes it; `evaluate`, `export`
and `--resume` read it through this module.

A recipe's `output_dir` holds numbered runs and a `latest` link; a run is never overwritten:

    runs/fashion/
        latest -> 3
        1/  2/  3/
            config.yaml            the resolved recipe, plus `input:` (the input spec export needs)
            labels.json            class names in output order
            data_fingerprint.txt   hash of the training data
            skipped.txt            inputs skipped as unreadable, with the reason
            train.log              what the run did, stage by stage
            history.csv            one row per epoch, across stages
            tensorboard/           TensorBoard logs
            checkpoints/           best.keras (best by validation loss, value in best.json), stage ends
            backup/                BackupAndRestore state, for --resume
            state.json             stages finished, epochs done, finished or not
            model.keras            the final model (the kind's canonical inputs -> task outputs)
            metrics.json, *.png, report.html   the evaluation

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tlkeras import files, inputs, tasks
from tlkeras.errors import TlkerasError
from tlkeras.inputs import InputSpec

LATEST = "latest"
REQUIRED_FILES = ("config.yaml", "labels.json", "model.keras")


def numbered_runs(output_dir: Path) -> list[int]:
    """list of int: the run numbers under `output_dir`, ascending."""
    if not output_dir.is_dir():
        return []
    return sorted(int(p.name) for p in output_dir.iterdir() if p.name.isdigit() and p.is_dir())


def _is_legacy_run(path: Path) -> bool:
    # Runs of tlkeras before numbered runs lived directly in output_dir.
    return (path / "state.json").is_file() or (path / "model.keras").is_file()


def resolve(path: str | os.PathLike) -> Path:
    """Path: the run a user means: a run folder itself, or the latest run of a recipe's output_dir.

    Raises:
        TlkerasError: nothing there is a run.
    """
    path = Path(path)
    if (path / "config.yaml").is_file() or _is_legacy_run(path):
        return path
    latest = path / LATEST
    if latest.exists():
        return latest.resolve()
    runs = numbered_runs(path)
    if runs:
        return path / str(runs[-1])
    raise TlkerasError(f"{path} holds no tlkeras run: pass a run folder (e.g. runs/fashion/1) or a recipe's "
                       f"output_dir. Received: {str(path)!r}")


@dataclass(frozen=True)
class RunDir:
    """One run's folder.

    Example:
    >>> run = RunDir.create("runs/fashion")          # runs/fashion/1, and runs/fashion/latest -> 1
    >>> RunDir.open("runs/fashion").labels()          # the latest run
    """

    path: Path

    # ------------------------------------------------------------------------------------- creation
    @classmethod
    def create(cls, output_dir: str | os.PathLike) -> RunDir:
        """RunDir: a new numbered run under `output_dir`, pointed to by `latest`.

        Raises:
            TlkerasError: `output_dir` exists and holds something else than tlkeras runs, or cannot be
                created.
        """
        output_dir = files.writable_dir(output_dir, "output folder",
                                        "choose another output_dir (e.g. --set output_dir=runs/new)")
        if _is_legacy_run(output_dir):
            raise TlkerasError(f"{output_dir} holds a run of an older tlkeras, which this run must not overwrite: "
                               f"choose another output_dir (e.g. --set output_dir=runs/new)")
        foreign = [p.name for p in output_dir.iterdir()
                   if not (p.name.isdigit() or p.name in (LATEST, "lr_find") or p.name.startswith("."))]
        if foreign:
            raise TlkerasError(f"{output_dir} holds files that are not tlkeras runs ({', '.join(sorted(foreign)[:5])}): "
                               f"choose another output_dir (e.g. --set output_dir=runs/new)")
        number = next_number(output_dir)
        while True:
            path = output_dir / str(number)
            try:
                path.mkdir()  # atomic: two runs started at once get different numbers
                break
            except FileExistsError:
                number += 1
        _point_latest(output_dir, path.name)
        return cls(path)

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDir:
        """RunDir: an existing run (a run folder, or the latest run of an output_dir)."""
        return cls(resolve(path))

    @classmethod
    def for_resume(cls, output_dir: str | os.PathLike) -> RunDir:
        """RunDir: the latest run of `output_dir`, which must be unfinished, cleared of the temporary files
        a kill mid-write leaves. A run killed before it wrote state.json resumes from its start.

        Raises:
            TlkerasError: no run to resume, or the latest one finished.
        """
        output_dir = Path(output_dir)
        latest = output_dir / LATEST
        if latest.is_symlink() and latest.resolve().is_dir():
            run = cls(latest.resolve())
        elif numbered_runs(output_dir):
            run = cls(output_dir / str(numbered_runs(output_dir)[-1]))
        else:
            raise TlkerasError(f"nothing to resume in {output_dir}: drop --resume to start a new run")
        if run.state().get("finished"):
            raise TlkerasError(f"the latest run {run.path} finished; drop --resume to start a new run")
        run.remove_temporaries()
        return run

    # ---------------------------------------------------------------------------------------- paths
    @property
    def name(self) -> str:
        return self.path.name

    config_file = property(lambda self: self.path / "config.yaml")
    labels_file = property(lambda self: self.path / "labels.json")
    fingerprint_file = property(lambda self: self.path / "data_fingerprint.txt")
    skipped_file = property(lambda self: self.path / "skipped.txt")
    log_file = property(lambda self: self.path / "train.log")
    history_csv = property(lambda self: self.path / "history.csv")
    tensorboard_dir = property(lambda self: self.path / "tensorboard")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    best_model = property(lambda self: self.path / "checkpoints" / "best.keras")
    state_file = property(lambda self: self.path / "state.json")
    model_file = property(lambda self: self.path / "model.keras")
    metrics_file = property(lambda self: self.path / "metrics.json")

    backups_dir = property(lambda self: self.path / "backup")

    def backup_dir(self, stage: int) -> Path:
        return self.backups_dir / f"stage_{stage}"

    def stage_checkpoint(self, stage: int) -> Path:
        return self.checkpoints_dir / f"stage_{stage}.weights.h5"

    # -------------------------------------------------------------------------------------- writing
    def write_start(self, recipe: dict[str, Any], spec: InputSpec, labels: list[str], fingerprint: str,
                    skipped: list[tuple[str, str]]) -> None:
        """Writes what a run knows before training: the recipe with its input spec, labels, data hash."""
        files.write_text(self.config_file, yaml.safe_dump({**recipe, "input": spec.to_dict()}, sort_keys=False))
        files.write_json(self.labels_file, list(labels))
        files.write_text(self.fingerprint_file, fingerprint + "\n")
        if skipped:
            files.write_text(self.skipped_file, "".join(f"{path}\t{reason}\n" for path, reason in skipped))
        if not self.state_file.exists():
            self.write_state({"stages_done": 0, "epochs_done": 0, "finished": False})

    def state(self) -> dict:
        """dict: stages done, epochs done, finished; a missing or damaged file reads as a fresh start."""
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, json.JSONDecodeError):
            return {"stages_done": 0, "epochs_done": 0, "finished": False}
        return state if isinstance(state, dict) else {"stages_done": 0, "epochs_done": 0, "finished": False}

    def write_state(self, state: dict) -> None:
        files.write_json(self.state_file, state)

    def history(self) -> list[dict]:
        """list of dict: history.csv's rows, one per epoch (see `read_history`)."""
        return read_history(self.history_csv)

    def write_history(self, rows: list[dict]) -> None:
        write_history(self.history_csv, rows)

    def remove_backups(self, stages=None) -> None:
        """Deletes the epoch backups of `stages` (all by default): once a stage's checkpoint is written, or
        the run finished, they are obsolete."""
        targets = [self.backups_dir] if stages is None else [self.backup_dir(s) for s in stages]
        for target in targets:
            shutil.rmtree(target, ignore_errors=True)
        if self.backups_dir.is_dir() and not any(self.backups_dir.iterdir()):
            self.backups_dir.rmdir()

    def remove_temporaries(self) -> list[Path]:
        """list of Path: removes the temporary files of writes a kill interrupted (never a finished file)."""
        stale = [p for p in self.path.rglob(".*") if p.is_file() and files.is_temporary(p)]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    # -------------------------------------------------------------------------------------- reading
    def check_complete(self) -> None:
        """Raises naming the fix when the run lacks a file export or evaluate needs."""
        if not self.path.is_dir():
            raise TlkerasError(f"run directory not found; pass the folder `tlkeras train` wrote. "
                               f"Received: run_dir={str(self.path)!r}")
        missing = [name for name in REQUIRED_FILES if not (self.path / name).is_file()]
        if missing:
            raise TlkerasError(f"run directory lacks {', '.join(missing)}; train to completion with `tlkeras train` "
                               f"first (or `tlkeras train RECIPE --resume`). Received: run_dir={str(self.path)!r}")

    def config(self) -> dict[str, Any]:
        """dict: config.yaml, checked to be a mapping naming a known task and a backbone."""
        try:
            config = yaml.safe_load(self.config_file.read_text()) or {}
        except OSError as err:
            raise TlkerasError(f"cannot read {self.config_file} ({err.strerror}); re-train") from None
        except yaml.YAMLError as err:
            raise TlkerasError(f"config.yaml is not valid YAML ({str(err).strip().splitlines()[0]}); fix or re-train. "
                               f"Received: run_dir={str(self.path)!r}") from None
        if not isinstance(config, dict):
            raise TlkerasError(f"config.yaml must hold a mapping; re-train to rewrite it. Received: config={config!r}")
        tasks.get(config.get("task"))
        backbone = config.get("backbone")
        if not isinstance(backbone, (str, list)) or not backbone:
            raise TlkerasError(f"config.yaml needs 'backbone', a registry name. Received: backbone={backbone!r}")
        export = config.get("export") or {}
        if not isinstance(export, dict):
            raise TlkerasError(f"config.yaml 'export' must be a mapping of base_dir, name, tflite, threshold. "
                               f"Received: export={export!r}")
        return config

    def input_spec(self, config: dict | None = None) -> InputSpec:
        return inputs.parse_spec((config or self.config()).get("input"))

    def recipe_config(self) -> dict[str, Any]:
        """dict: config.yaml without the keys the trainer adds, i.e. the recipe as it ran."""
        return {k: v for k, v in self.config().items() if k != "input"}

    def labels(self, task: str | None = None) -> list[str]:
        try:
            labels = json.loads(self.labels_file.read_text())
        except OSError as err:
            raise TlkerasError(f"cannot read {self.labels_file} ({err.strerror}); re-train") from None
        except json.JSONDecodeError as err:
            raise TlkerasError(f"labels.json is not valid JSON ({err.msg}); it must be a list of names. "
                               f"Received: path={str(self.labels_file)!r}") from None
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise TlkerasError(f"labels.json must be a JSON list of strings. Received: labels={labels!r}")
        task = task or self.config().get("task")
        if task != "regression" and not labels:
            raise TlkerasError(f"labels.json is empty but task is {task}; list the class names in output order. "
                               f"Received: path={str(self.labels_file)!r}")
        if len(set(labels)) != len(labels):
            raise TlkerasError(f"labels.json repeats a name; class names must be unique. Received: labels={labels!r}")
        return labels

    def metrics(self) -> dict | None:
        """dict or None: metrics.json; None when missing or unreadable (metrics inform, they never block)."""
        try:
            value = json.loads(self.metrics_file.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return value if isinstance(value, dict) else None

    def data_fingerprint(self) -> str | None:
        return self.fingerprint_file.read_text().strip() if self.fingerprint_file.is_file() else None


def read_history(path: Path) -> list[dict]:
    """list of dict: the rows of a history.csv, each with an int `epoch` and its logged values as floats,
    sorted by epoch with one row per epoch (the last one written wins). A missing file has no rows; rows
    whose epoch is not a number (a line cut by a kill in an older tlkeras) are dropped."""
    try:
        with open(path, newline="") as stream:
            raw = list(csv.DictReader(stream))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    rows: dict[int, dict] = {}
    for row in raw:
        try:
            epoch = int(float(row.get("epoch") or ""))
        except ValueError:
            continue
        rows[epoch] = {"epoch": epoch, **{k: _number(v) for k, v in row.items() if k and k != "epoch"}}
    return [rows[e] for e in sorted(rows)]


def write_history(path: Path, rows: list[dict]) -> None:
    """Writes history.csv atomically: `epoch` first, then every other column in sorted order (as Keras's
    CSVLogger does), one row per epoch."""
    if not rows:  # no epoch trained (yet): no history, rather than a file without a header
        Path(path).unlink(missing_ok=True)
        return
    columns = sorted({key for row in rows for key in row if key != "epoch"})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, ["epoch", *columns], restval="", lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r["epoch"]):
        writer.writerow(row)
    files.write_text(path, buffer.getvalue())


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def next_number(output_dir: Path) -> int:
    runs = numbered_runs(output_dir)
    return runs[-1] + 1 if runs else 1


def _point_latest(output_dir: Path, target: str) -> None:
    link = output_dir / LATEST
    tmp = output_dir / f".{LATEST}.{os.getpid()}.tmp"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError:  # a file system without symlinks: resolve() falls back to the highest number
        if tmp.is_symlink():
            tmp.unlink()
