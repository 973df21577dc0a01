"""Every offline backbone whose weights are here trains a feature-extraction recipe, exports a SavedModel, and
answers over a real `tlkeras serve` process: the promise of `tlkeras registry list --offline`."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_colour_folder

from tlkeras import paths, registry
from tlkeras.weights import is_fetched

pytestmark = pytest.mark.slow

OFFLINE = sorted(registry.list_backbones(offline=True).name)
REVIEWS = [("a wonderful, moving film", "fresh"), ("dull and far too long", "rotten"),
           ("funny and warm, a delight", "fresh"), ("a tedious, lifeless mess", "rotten")] * 3


@pytest.fixture(scope="module")
def offline_home(tmp_path_factory):
    """A fresh $TLKERAS_HOME (empty feature cache) that sees the weights already fetched on this machine."""
    real_weights = paths.home() / "weights"
    home = tmp_path_factory.mktemp("home")
    if real_weights.is_dir():
        (home / "weights").symlink_to(real_weights)
    previous = os.environ.get("TLKERAS_HOME")
    os.environ["TLKERAS_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("TLKERAS_HOME")
    else:
        os.environ["TLKERAS_HOME"] = previous


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny training sets of each input kind."""
    from tlkeras import datasets

    root = tmp_path_factory.mktemp("data")
    images = write_colour_folder(root / "colours", per_class=4)
    texts = root / "reviews.csv"
    texts.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in REVIEWS))
    speech = datasets.spoken_digits(root / "speech", per_class=2, test_per_class=1)
    return {"image": {"train": str(images)}, "text": {"train": str(texts), "text_column": "text"},
            "audio": {"train": str(speech["train"]), "clip_seconds": 2}, "speech_test": speech["test"]}


@pytest.fixture(scope="module")
def exported(offline_home, data, tmp_path_factory):
    """{name: (run_dir, metrics) or the reason it was not trained} for every offline backbone; the exports go to
    one models folder."""
    from tlkeras.export import export_run
    from tlkeras.recipes import parse_recipe, train

    root = tmp_path_factory.mktemp("runs")
    done = {}
    for name in OFFLINE:
        entry = registry.get(name)
        if not is_fetched(entry):
            done[name] = f"weights not fetched here (`tlkeras fetch {name}`)"
            continue
        recipe = parse_recipe({"backbone": name, "data": {**data[entry.domain], "batch_size": 4},
                               "callbacks": {"tensorboard": False, "progress": False},
                               "output_dir": str(root / "runs" / name)})
        result = train(recipe, verbose=0)
        export_run(result.run_dir, root / "models", name)
        done[name] = (result.run_dir, result.metrics)
    return root / "models", done


@pytest.fixture(scope="module")
def server(exported):
    from tlkeras.serve.client import wait_until_ready

    models, done = exported
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "tlkeras", "serve", str(models), "--port", str(port),
                                "--host", "127.0.0.1"], env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    first = next(name for name, value in done.items() if not isinstance(value, str))
    wait_until_ready(f"{url}/v1/models/{first}", process, timeout=600)
    yield url
    process.terminate()
    process.wait(timeout=60)


def test_every_domain_has_offline_backbones():
    domains = {registry.get(name).domain for name in OFFLINE}
    assert {"image", "text", "audio"} <= domains and len(OFFLINE) >= 9


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_backbone_trains_exports_and_answers_over_serve(name, exported, server, data):
    from tlkeras.serve.client import predict

    models, done = exported
    if isinstance(done[name], str):
        if registry.get(name).opt_in:
            pytest.skip(f"opt-in: {done[name]}")
        pytest.fail(done[name])  # `make test` fetches every non-opt-in offline backbone
    run_dir, metrics = done[name]
    assert (run_dir / "model.keras").is_file() and metrics["num_samples"] > 0
    assert (models / name / "1" / "saved_model.pb").is_file()
    domain = registry.get(name).domain
    if domain == "image":
        inputs = sorted(Path(data["image"]["train"]).rglob("*.png"))[:2]
    elif domain == "text":
        inputs = ["a wonderful, moving film", "a tedious, lifeless mess"]
    else:
        inputs = sorted(Path(data["speech_test"]).rglob("*.wav"))[:2]
    replies = predict(server, name, inputs)
    labels = json.loads((run_dir / "labels.json").read_text())
    assert len(replies) == 2
    for reply in replies:
        assert reply["label"] in labels and abs(sum(reply["probabilities"]) - 1) < 1e-4


def test_recommend_and_backbone_auto_on_an_audio_folder(offline_home, data, tmp_path):
    import tlkeras
    from tlkeras.recommend import recommend

    whisper = "whisper_tiny_en_encoder"
    if not is_fetched(registry.get(whisper)):
        pytest.fail(f"weights not fetched here (`tlkeras fetch {whisper}`)")
    table = recommend(data["audio"]["train"], folds=2, progress=False)
    ranked = table[table["rank"].notna()]
    assert list(ranked["name"]) == [whisper] and 0 <= ranked.iloc[0]["probe_accuracy"] <= 1
    result = tlkeras.fit(data["audio"]["train"], backbone="auto", test=data["speech_test"], verbose=0,
                         output_dir=str(tmp_path / "runs"), data={"clip_seconds": 2}, schedule={"folds": 2})
    assert f"backbone: {whisper}" in (result.run_dir / "config.yaml").read_text()
    assert json.loads((result.run_dir / "recommendation.json").read_text())[0]["name"] == whisper
    assert result.metrics["split"] == "test" and result.metrics["num_samples"] == 10
