"""Train -> export -> `tlkeras serve` as a real process -> HTTP, checked against the Keras model."""

import io
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY_BERT, TINY_CNN
from PIL import Image

from tlkeras.export import export_run
from tlkeras.recipes import parse_recipe, train
from tlkeras.serve.client import predict, wait_until_ready

pytestmark = pytest.mark.usefixtures("tlkeras_env")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(tmp_path, colour_folder, text_csv):
    """Two trained and exported models, served by a real `tlkeras serve` process on loopback."""
    runs = {}
    for name, backbone, data in (("colours", TINY_CNN, {"train": str(colour_folder)}),
                                 ("reviews", TINY_BERT, {"train": str(text_csv), "text_column": "text"})):
        recipe = parse_recipe({"backbone": backbone, "data": {**data, "batch_size": 8},
                               "schedule": {"strategy": "fine_tuning", "epochs": 1},
                               "callbacks": {"tensorboard": False}, "output_dir": str(tmp_path / name)})
        runs[name] = train(recipe, verbose=0).run_dir
        export_run(runs[name], tmp_path / "models", name)
    port = _free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    server = subprocess.Popen([sys.executable, "-m", "tlkeras", "serve", str(tmp_path / "models"), "--port",
                               str(port), "--host", "127.0.0.1"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(f"{url}/v1/models/reviews", server, timeout=120)
    yield url, runs
    server.terminate()
    server.wait(timeout=30)


def _jpeg(colour, size) -> bytes:
    rng = np.random.default_rng(0)
    pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (*size, 3)), 0, 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.slow
def test_served_predictions_match_the_keras_models(served, tmp_path):
    import tlkeras.backbones  # noqa: F401 - custom layers of model.keras

    url, runs = served
    images = [_jpeg((220, 30, 40), (45, 60)), _jpeg((30, 40, 220), (32, 32))]
    paths = []
    for i, data in enumerate(images):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(data)
    replies = predict(url, "colours", paths)
    model = keras.models.load_model(runs["colours"] / "model.keras")
    pixels = np.stack([tf.image.resize(tf.io.decode_jpeg(data, channels=3), (32, 32)).numpy() for data in images])
    expected = model.predict(pixels, verbose=0)
    np.testing.assert_allclose([r["probabilities"] for r in replies], expected, atol=1e-5)
    labels = ["blue", "green", "red"]
    assert [r["label"] for r in replies] == [labels[i] for i in expected.argmax(1)]

    sentences = ["the movie was very good", "awful and sad"]
    replies = predict(url, "reviews", sentences)
    text_model = keras.models.load_model(runs["reviews"] / "model.keras")
    tokenize = tlkeras.backbones.load_preprocessor(TINY_BERT, 16)
    expected = text_model.predict(tokenize(tf.constant(sentences)), verbose=0)
    np.testing.assert_allclose([r["probabilities"] for r in replies], expected, atol=1e-5)
