"""The generated catalog files are what their generators write today (`--check`, from the committed
measurements, builds nothing and needs no network)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.mark.slow  # each imports Keras (about 20 s)
@pytest.mark.parametrize("command", [
    ["generate_keras_hub_catalog.py", "--check"],
    ["generate_keras_applications_catalog.py", "--cache", str(SCRIPTS / "keras_applications_measurements.json"),
     "--check"],
], ids=["keras_hub", "keras_applications"])
def test_generated_catalog_files_are_up_to_date(command):
    result = subprocess.run([sys.executable, str(SCRIPTS / command[0]), *command[1:]], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
