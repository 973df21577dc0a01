"""The report is a web page, so a real headless browser (Debian's chromium-headless-shell, installed by
`make test`) opens it: it must render, and every image in it (plots, gallery thumbnails) must load."""

import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import COLOURS, write_image

from tlkeras import inputs
from tlkeras.evaluation import evaluate_predictions

BROWSER = shutil.which("chromium-headless-shell") or shutil.which("chromium")


def _rendered(page, tmp_path):
    if BROWSER is None:
        pytest.fail("no headless Chromium: `make test` installs Debian's chromium-headless-shell")
    result = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_report_renders_and_every_image_loads(tmp_path):
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    paths = [str(write_image(tmp_path / "images" / f"{i}.png", COLOURS[names[i % 3]], seed=i)) for i in range(30)]
    y_true = np.arange(30) % 3
    scores = rng.dirichlet(np.ones(3), 30)
    result = evaluate_predictions(y_true, scores, names, "classification", out_dir=tmp_path / "eval",
                                  title="Browser check", examples=paths, kind=inputs.get("image"))
    dom = _rendered(tmp_path / "eval" / "report.html", tmp_path)
    assert "<h1>Browser check</h1>" in dom and "Most confidently wrong" in dom
    images = int(re.search(r'data-images="(\d+)"', dom).group(1))
    loaded = int(re.search(r'data-images-ok="(\d+)"', dom).group(1))
    wrong = int(np.sum(scores.argmax(1) != y_true))
    assert images == 2 + min(wrong, 12), (images, wrong)  # confusion matrix, ROC and one thumbnail per wrong example
    assert loaded == images
    assert len(result["confidence_intervals"]["accuracy"]) == 2
