"""Reading data: a folder with one subfolder per class, or a CSV / TSV / Parquet table, into `Examples`.

The input kind says which files a folder may hold and which column a table keeps its inputs in. Nothing is
dropped silently: missing values and missing files raise; what is skipped (OS metadata files such as
Thumbs.db) or converted (a table's text encoding) is recorded in `Examples.notes`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tlkeras import inputs, tasks
from tlkeras.data.examples import Examples
from tlkeras.errors import TlkerasError
from tlkeras.suggest import did_you_mean

TABLE_EXTENSIONS = (".csv", ".tsv", ".parquet", ".pq")
SPREADSHEET_EXTENSIONS = (".xlsx", ".xls", ".ods", ".numbers")
# Files operating systems drop into folders; they are nobody's data.
OS_METADATA_FILES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r", ".ds_store"})
OS_METADATA_DIRS = frozenset({"__macosx", "$recycle.bin", "system volume information"})
_TEXT_ENCODINGS = ("utf-8", "utf-8-sig", "cp1252", "latin-1")
_SHOWN = 5


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
    """Examples: reads a class folder or a CSV / TSV / Parquet table.

    A folder holds one subfolder per class (classification only); class names are the sorted subfolder
    names, and files below a class folder belong to it. Files that are not of the kind (by extension)
    raise, unless hidden (leading dot) or OS metadata (Thumbs.db, desktop.ini: skipped, with a note). A
    table holds one row per example.

    Args:
        source: str. A folder, or a `.csv`, `.tsv`, `.parquet` file.
        task: str. "classification", "multilabel" or "regression".
        kind: str. The input kind ("image", "text"). Defaults to None: guessed from the folder's files or
            from the table's columns (`path_column` means files, `text_column` texts).
        path_column: str. Column of file paths; relative paths are read from the table's folder.
            Defaults to the kind's column ("path").
        text_column: str. Column of texts. Defaults to "text".
        label_column: str or list[str]. Column of labels; for regression, one or more numeric columns.
            Defaults to "label".
        label_separator: str. For multilabel, what joins the labels of one cell ("cat|dog"). Defaults to "|".
        labels: list[str]. The training set's labels, when loading validation or test data, so that ids
            match; a label not among them raises. Defaults to None (labels found here, sorted).

    Example:
    >>> train = load_examples("reviews/train.csv", task="classification", kind="text")
    >>> test = load_examples("reviews/test.csv", task="classification", kind="text", labels=train.labels)
    """
    task = tasks.get(task)
    if kind is not None:
        inputs.get(kind)
    source = Path(source).expanduser()
    if source.is_dir():
        return _load_folder(source, task, kind, labels)
    if not source.exists():
        raise TlkerasError(f"data source not found: give a class folder or a table file. Received: source={source}")
    suffix = source.suffix.lower()
    if suffix in SPREADSHEET_EXTENSIONS:
        raise TlkerasError(f"{source.name} is a spreadsheet: save it as CSV (or Parquet) and point data at that "
                           f"file. Received: source={source}")
    if suffix not in TABLE_EXTENSIONS:
        raise TlkerasError(f"cannot read {source.name}: data must be a class folder or a {'/'.join(TABLE_EXTENSIONS)} "
                           f"table. Received: source={source}")
    return _load_table(source, task, kind, path_column, text_column, label_column, label_separator, labels)


def _folder_kind(folder: Path, kind: str | None, files: list[str]):
    if kind is not None:
        chosen = inputs.get(kind)
        if not chosen.reads_files:
            raise TlkerasError(f"{folder} is a folder, which holds files: {kind} data comes in a table (a "
                               f"'{chosen.table_column}' column). Received: kind={kind!r}")
        return chosen
    counts = {k: sum(os.path.splitext(f)[1].lower() in k.file_extensions for f in files)
              for k in inputs.KINDS.values() if k.reads_files}
    best = max(counts, key=counts.get, default=None)
    if best is None or counts[best] == 0:
        raise TlkerasError(f"no image or audio files in {folder}; for texts give a table. Received: source={folder}")
    return best


def _load_folder(folder: Path, task, kind: str | None, labels) -> Examples:
    if not task.folders:
        raise TlkerasError(f"a class folder (one subfolder per class) holds classification data only; for "
                           f"{task.name} use a CSV or Parquet table with a path column. Received: task={task.name!r}, "
                           f"source={folder}")
    everything = sorted(folder.iterdir())
    skipped = [p.name for p in everything if _is_os_metadata(p)]
    hidden = [p.name for p in everything if p.name.startswith(".") and not _is_os_metadata(p)]
    entries = [p for p in everything if not p.name.startswith(".") and not _is_os_metadata(p)]
    class_dirs = [p for p in entries if p.is_dir()]
    stray = [p.name for p in entries if not p.is_dir()]
    if not class_dirs:
        raise TlkerasError(f"no class subfolders in {folder}: put each class's files in a subfolder named after "
                           f"the class (e.g. {folder}/cat/1.jpg). Received: source={folder}")
    if stray:
        raise TlkerasError(f"{len(stray)} files at the top level of {folder} belong to no class: move them into a "
                           f"class subfolder or delete them. Received: {_first(stray)}")
    loops: list[str] = []
    below = {d.name: _files_below(d.absolute(), skipped, hidden, loops) for d in class_dirs}
    chosen = _folder_kind(folder, kind, [f for files in below.values() for f in files])
    class_names = _class_names([d.name for d in class_dirs], labels, f"the subfolders of {folder}")
    ids = {name: i for i, name in enumerate(class_names)}
    found, targets, foreign, empty = [], [], [], []
    for name, files in below.items():
        mine = [f for f in files if os.path.splitext(f)[1].lower() in chosen.file_extensions]
        foreign += [f for f in files if os.path.splitext(f)[1].lower() not in chosen.file_extensions]
        if not mine:
            empty.append(name)
        found += mine
        targets += [ids[name]] * len(mine)
    if foreign:
        raise TlkerasError(f"{len(foreign)} files in {folder} are not {chosen.name} files "
                           f"({', '.join(chosen.file_extensions)}): move or delete them, or hide them with a leading "
                           f"dot. Received: {_first(foreign)}")
    if empty:
        raise TlkerasError(f"class folders with no {chosen.name} files in {folder}: add files or delete the folders. "
                           f"Received: {_first(empty)}")
    notes = [f"skipped {len(skipped)} OS metadata files in {folder}: {_first(skipped)}"] if skipped else []
    if hidden:
        notes.append(f"skipped {len(hidden)} hidden files or folders (names starting with a dot) in {folder}: "
                     f"{_first(hidden)}")
    if loops:
        notes.append(f"did not follow {len(loops)} symlinks back into a folder already read (a loop) in {folder}: "
                     f"{_first(loops)}")
    found, converted = chosen.prepare_inputs(found)
    return Examples(found, np.asarray(targets, np.int64), class_names, chosen.name, str(folder), task.name,
                    notes + converted)


def _is_os_metadata(path: Path) -> bool:
    name = path.name.lower()
    if path.is_dir():
        return name in OS_METADATA_DIRS
    return name in OS_METADATA_FILES or name.startswith("._")  # ._x: macOS resource forks on foreign disks


def _files_below(folder: Path, skipped: list, hidden: list, loops: list) -> list[str]:
    found = []
    seen = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a symlink back into a folder already read: os.walk would loop forever
            loops.append(root)
            dirs[:] = []
            continue
        seen.add(real)
        where = os.path.relpath(root, folder.parent)
        skipped += [os.path.join(where, d) for d in dirs if d.lower() in OS_METADATA_DIRS]
        hidden += [os.path.join(where, d) for d in dirs if d.startswith(".")]
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d.lower() not in OS_METADATA_DIRS)
        for name in sorted(names):
            if name.lower() in OS_METADATA_FILES or name.startswith("._"):
                skipped.append(os.path.join(where, name))
            elif name.startswith("."):
                hidden.append(os.path.join(where, name))
            else:
                found.append(os.path.join(root, name))
    return found


def read_table(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """(DataFrame, notes): a CSV / TSV / Parquet file. Texts that are not UTF-8 are decoded as UTF-16 (with a
    byte-order mark), Windows-1252 or Latin-1, and a CSV whose header splits on ';', tab or '|' but not on
    ',' is read with that separator, each with a note saying so. Repeated column names raise (pandas would
    rename them silently)."""
    suffix = path.suffix.lower()
    notes = []
    _refuse_disguised(path, suffix)
    try:
        if suffix in (".parquet", ".pq"):
            table = pd.read_parquet(path)
            header = [str(c) for c in table.columns]
        else:
            encoding = _text_encoding(path)
            if encoding not in ("utf-8", "utf-8-sig"):
                notes.append(f"{path.name} is not UTF-8; read it as {encoding}")
            separator = "\t" if suffix == ".tsv" else _separator(path, encoding)
            if separator not in (",", "\t") or (separator == "\t" and suffix != ".tsv"):
                notes.append(f"{path.name} separates its columns by {_SEPARATOR_NAMES[separator]}; read it so")
            # Only empty cells are missing: a label or a review reading "NA" or "null" is data.
            table = pd.read_csv(path, sep=separator, keep_default_na=False, na_values=[""], encoding=encoding)
            header = _header(path, encoding, separator)
    except pd.errors.EmptyDataError:
        raise TlkerasError(f"{path} is empty: it needs a header row and one row per example") from None
    except PermissionError:
        raise TlkerasError(f"cannot read {path} (permission denied): make it readable (chmod +r)") from None
    except Exception as error:  # pandas and pyarrow raise many types for a malformed file
        raise TlkerasError(f"cannot read {path} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
                           f": check that it is a valid {suffix[1:].upper()} file") from error
    if len(header) != len(table.columns):
        header = [str(c) for c in table.columns]  # the csv module and pandas disagree: trust pandas
    columns = [str(c).lstrip("\ufeff").strip() for c in header]
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise TlkerasError(f"{path} has repeated column names ({', '.join(map(repr, repeated))}): rename or remove the "
                           f"copies. Received: columns={columns}")
    table.columns = columns
    if table.empty:
        raise TlkerasError(f"{path} has a header but no rows: add one row per example. Received: columns="
                           f"{list(table.columns)}")
    return table, notes


_SEPARATOR_NAMES = {",": "commas", ";": "semicolons", "\t": "tabs", "|": "'|'"}
# Files that are not text tables, by their first bytes.
_MAGIC = {b"PK\x03\x04": "a zip archive (an .xlsx or .ods spreadsheet?)",
          b"\xd0\xcf\x11\xe0": "an Excel .xls spreadsheet", b"PAR1": "a Parquet file",
          b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"%PDF": "a PDF document"}


def _refuse_disguised(path: Path, suffix: str) -> None:
    try:
        with open(path, "rb") as stream:
            head = stream.read(8)
    except PermissionError:
        raise TlkerasError(f"cannot read {path} (permission denied): make it readable (chmod +r)") from None
    except OSError:
        return  # read_csv / read_parquet report it
    for magic, what in _MAGIC.items():
        if head.startswith(magic) and not (magic == b"PAR1" and suffix in (".parquet", ".pq")):
            fix = "rename it .parquet" if magic == b"PAR1" else "export it as CSV (UTF-8) and point data at that file"
            raise TlkerasError(f"{path.name} is {what}, not a {suffix[1:].upper()} table: {fix}. Received: {path}")
    if suffix in (".parquet", ".pq") and head and not head.startswith(b"PAR1"):
        raise TlkerasError(f"{path.name} is not a Parquet file (no PAR1 header): rename it to what it is (.csv?) or "
                           f"write it again with pandas' to_parquet. Received: {path}")


def _text_encoding(path: Path) -> str:
    with open(path, "rb") as stream:
        head = stream.read(4)
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "utf-32"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"  # what Excel calls "Unicode text"
    data = path.read_bytes()
    for encoding in _TEXT_ENCODINGS:
        try:
            data.decode(encoding)
            return encoding
        except UnicodeDecodeError:
            continue
    return "latin-1"  # decodes any bytes


def _first_line(path: Path, encoding: str) -> str:
    with open(path, encoding=encoding, newline="") as stream:
        return stream.readline()


def _separator(path: Path, encoding: str) -> str:
    line = _first_line(path, encoding)
    if "," in line:
        return ","
    counts = {sep: line.count(sep) for sep in (";", "\t", "|")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _header(path: Path, encoding: str, separator: str) -> list[str]:
    import csv

    with open(path, encoding=encoding, newline="") as stream:
        return next(csv.reader(stream, delimiter=separator), [])


def _load_table(path, task, kind, path_column, text_column, label_column, separator, labels) -> Examples:
    table, notes = read_table(path)
    source = str(path)
    chosen = inputs.get(kind) if kind is not None else _guess_kind(table, path_column, text_column, source)
    input_column = chosen.input_column(path_column, text_column)
    label_columns = [label_column] if isinstance(label_column, str) else list(label_column)
    if task.name != "regression" and len(label_columns) != 1:
        raise TlkerasError(f"{task.name} takes one label column; several are for regression. "
                           f"Received: label_column={label_columns}")
    for column in (input_column, *label_columns):
        _require_column(table, column, source)
        _require_no_missing(table[column], column, source)
    items = chosen.table_inputs([str(x) for x in table[input_column]], path.parent.absolute(), input_column, source)
    items, converted = chosen.prepare_inputs(items)
    notes = notes + converted
    if task.name == "regression":
        targets = np.stack([_numeric(table[c], c, source) for c in label_columns], axis=-1)
        if isinstance(label_column, str):
            targets = targets[:, 0]
        return Examples(items, targets, label_columns, chosen.name, source, task.name, notes)
    cells = table[label_columns[0]]
    if task.name == "classification":
        names = [_label_text(v) for v in cells]
        class_names = _class_names(names, labels, f"column '{label_columns[0]}' of {source}")
        ids = {name: i for i, name in enumerate(class_names)}
        targets = np.asarray([ids[n] for n in names], np.int64)
        return Examples(items, targets, class_names, chosen.name, source, task.name, notes)
    rows = [[part.strip() for part in _label_text(v).split(separator) if part.strip()] for v in cells]
    found = [n for row in rows for n in row]
    class_names = _class_names(found, labels, f"column '{label_columns[0]}' of {source}")
    ids = {name: i for i, name in enumerate(class_names)}
    targets = np.zeros((len(rows), len(class_names)), np.float32)
    for r, row in enumerate(rows):
        targets[r, [ids[n] for n in row]] = 1.0
    return Examples(items, targets, class_names, chosen.name, source, task.name, notes)


def _guess_kind(table: pd.DataFrame, path_column, text_column, source: str):
    if path_column and text_column:
        raise TlkerasError(f"give path_column (files) or text_column (texts), not both. "
                           f"Received: path_column={path_column!r}, text_column={text_column!r}")
    file_kinds = [k for k in inputs.KINDS.values() if k.reads_files]
    text_kinds = [k for k in inputs.KINDS.values() if not k.reads_files]
    if path_column or (not text_column and "path" in table.columns and "text" not in table.columns):
        paths = [str(p) for p in table[path_column or "path"]] if (path_column or "path") in table.columns else []
        counts = {k: sum(os.path.splitext(p)[1].lower() in k.file_extensions for p in paths) for k in file_kinds}
        return max(counts, key=counts.get)
    if text_column or "text" in table.columns:
        return text_kinds[0]
    raise TlkerasError(f"cannot tell whether {source} holds file paths or texts: set data.path_column or "
                       f"data.text_column. Received: columns={list(table.columns)}")


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
        raise TlkerasError(f"column '{column}' of {source} has {len(rows)} missing values: fill them or remove those "
                           f"rows (tlkeras drops nothing silently). Received: rows {_first(rows.tolist())} "
                           "(0-based, header excluded)")


def _numeric(values: pd.Series, column: str, source: str) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(numbers))
    if len(bad):
        raise TlkerasError(f"regression column '{column}' of {source} has {len(bad)} values that are not finite "
                           f"numbers: fix them. Received: {_first([f'row {i}: {values.iloc[i]!r}' for i in bad])}")
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
            raise TlkerasError(f"label '{unseen[0]}' in {where} is not among the {len(labels)} training labels"
                               f"{did_you_mean(unseen[0], labels)}: fix or remove those examples. Received: unseen "
                               f"labels {_first(unseen)}")
        return labels
    names = sorted(set(found))
    if names and all(n.lstrip("-").isdigit() for n in names):
        names.sort(key=int)  # class ids 2 < 10
    return names


def _first(items: Sequence, n: int = _SHOWN) -> str:
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")
