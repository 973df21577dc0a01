"""`distribution: multi_worker` for real: two worker processes on 127.0.0.1 (TF_CONFIG, free ports) train the
tiny CNN's head, and the chief's model equals a single-process run of the same recipe with
`distribution: none`.

What makes the two runs the same computation:
- the global batch: `data.batch_size` is the batch over all workers (8 here, 4 per worker), and every batch
  splits evenly (18 training images: batches 8, 8, 2), so each worker's mean loss weighs as much as the
  single run's;
- the sharding: tf.data's DATA auto-shard policy (what AUTO falls back to for a list of files) gives worker i
  the i-th half of every global batch, in the single run's order;
- the order: epoch k's order depends only on the seed and k (`pipeline.epochs`), not on how many iterators
  Keras made before (it makes one more to build a distributed model);
- the randomness: the same seed; no dropout (`head.dropout: 0`) and no augmentation, whose masks would be
  drawn per worker; a frozen backbone, so BatchNormalization uses its stored statistics (a trainable BN
  would normalise each worker's half batch on its own);
- no feature cache (`data.cache_features: false`): the single run would otherwise train on cached features.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_CNN

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tlkeras_env")]


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _recipe(tmp_path, colour_folder, colour_test_folder, distribution):
    recipe = {
        "backbone": TINY_CNN, "distribution": distribution, "seed": 1, "output_dir": str(tmp_path / distribution),
        "data": {"train": str(colour_folder), "test": str(colour_test_folder), "validation_split": 0.25,
                 "image_size": [32, 32], "batch_size": 8, "cache_features": False,
                 "cross_validate_below": 0},  # keeps the validation split: its loss is compared too
        "head": {"dropout": 0.0},
        "schedule": {"strategy": "feature_extraction", "epochs": 3, "learning_rate": 0.01},
        "callbacks": {"tensorboard": False},
        "export": {"base_dir": str(tmp_path / "models"), "name": distribution},
    }
    path = tmp_path / f"{distribution}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _train(recipe, tf_config=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, "-m", "tlkeras", "train", str(recipe), "--verbose", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _weights(path):
    import tlkeras.layers  # noqa: F401 - registers the layers model.keras uses

    return keras.models.load_model(path, compile=False).get_weights()


def test_two_workers_train_the_same_model_as_one_process(tmp_path, colour_folder, colour_test_folder):
    single = _train(_recipe(tmp_path, colour_folder, colour_test_folder, "none"))
    recipe = _recipe(tmp_path, colour_folder, colour_test_folder, "multi_worker")
    hosts = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    workers = [_train(recipe, {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}) for i in (0, 1)]
    try:
        outputs = [process.communicate(timeout=900) for process in [single, *workers]]
    finally:
        for process in [single, *workers]:
            process.kill()
    for process, (_, err) in zip([single, *workers], outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    assert "this worker's copy of the run was discarded" in outputs[2][0]

    one, chief = tmp_path / "none" / "1", tmp_path / "multi_worker" / "1"
    assert sorted(p.name for p in (tmp_path / "multi_worker").iterdir()) == ["1", "latest"], "only the chief writes"
    assert (tmp_path / "models" / "multi_worker" / "1" / "saved_model.pb").is_file()
    assert not (tmp_path / "models" / "multi_worker" / "2").exists(), "only the chief exports"
    differences = [float(np.abs(a - b).max()) for a, b in zip(_weights(one / "model.keras"),
                                                                _weights(chief / "model.keras"), strict=True)]
    print(f"largest weight difference, two workers against one process: {max(differences):.3g}")
    assert max(differences) < 1e-5
    histories = [pd.read_csv(run / "history.csv") for run in (one, chief)]
    np.testing.assert_allclose(histories[0]["loss"], histories[1]["loss"], rtol=1e-5)
    np.testing.assert_allclose(histories[0]["val_loss"], histories[1]["val_loss"], rtol=1e-5)
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (one, chief)]
    assert metrics[0]["accuracy"] == metrics[1]["accuracy"] and metrics[1]["num_samples"] == 6
