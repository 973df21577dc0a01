"""What goes beside the graph in `assets.extra/`: labels, the model card and TF Serving warm-up requests.

TF Serving ignores `assets.extra/` except for `tf_serving_warmup_requests`, a TFRecord of PredictionLog
protos it replays (at most 1000) before marking a version available, so the first real request does not
pay for graph initialisation.
"""

from __future__ import annotations

import datetime
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tlkeras import files

ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000


def write_json(path: str | Path, value: Any) -> None:
    files.write_json(path, value)


def library_versions() -> dict[str, str | None]:
    """dict: Versions of the libraries an export depends on; None for one not installed."""
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("tlkeras", "tensorflow", "keras", "keras-hub", "tensorflow-text"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def backbone_metadata(name: str) -> dict[str, Any] | None:
    """dict or None: The registry entry of backbone `name` as a dict, or None when it is not in the catalog."""
    from tlkeras import registry

    try:
        return registry.get(name).to_dict()
    except Exception:  # noqa: BLE001 - a user's local backbone may be missing; the card says so with None
        return None


def model_card(*, name: str, version: int, task: str, backbone: str, input_spec: Mapping[str, Any],
               labels: Sequence[str], signatures: Mapping[str, Any], preprocessing: str,
               custom_ops: Sequence[str], config: Mapping[str, Any] | None = None,
               metrics: Any = None, data_fingerprint: str | None = None, threshold: float | None = None,
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """dict: The model card written to `assets.extra/model_card.json`.

    Args:
        name: str. The served model name.
        version: int. The SavedModel version.
        task: str. "classification", "multilabel" or "regression".
        backbone: str. The registry name of the backbone.
        input_spec: dict. The recipe's `input` section.
        labels: list of str. Output names in order.
        signatures: dict. Signature name -> {"inputs": {...}, "outputs": {...}} descriptions.
        preprocessing: str. What the serving graph does to raw inputs.
        custom_ops: list of str. Op types outside core TensorFlow that the server must provide.
        config: dict. The resolved recipe. Defaults to None.
        metrics: dict. Evaluation metrics of the run. Defaults to None.
        data_fingerprint: str. Hash of the training data. Defaults to None.
        threshold: float. Multilabel decision threshold. Defaults to None.
        extra: dict. More top-level fields, e.g. TFLite details. Defaults to None.
    """
    entry = backbone_metadata(backbone)
    card = {
        "name": name,
        "version": version,
        "task": task,
        "labels": list(labels),
        "input": dict(input_spec),
        "preprocessing": preprocessing,
        "signatures": dict(signatures),
        "threshold": threshold,
        "backbone": {"name": backbone, "registry": entry},
        "license": (entry or {}).get("license") or (config or {}).get("license") or "unknown",
        "metrics": metrics,
        "data_fingerprint": data_fingerprint,
        "custom_ops": list(custom_ops),
        "serving_requirements": serving_requirements(custom_ops),
        "recipe": dict(config or {}),
        "versions": library_versions(),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    card.update(extra or {})
    return card


def serving_requirements(custom_ops: Sequence[str]) -> str:
    """str: One sentence on what a model server needs to load a model using `custom_ops`."""
    if not custom_ops:
        return "core TensorFlow ops only: any tensorflow/serving build loads it"
    text_version = library_versions().get("tensorflow-text")
    return (f"ops outside core TensorFlow ({', '.join(custom_ops)}): the model server must link "
            f"tensorflow-text ops at least as new as the tensorflow-text {text_version} used for export; "
            "stock tensorflow/serving builds bundle an older TF Text that can lack some of them")


def predict_log(model_name: str, signature_name: str, inputs: Mapping[str, Any]):
    """PredictionLog: One warm-up record: a PredictRequest for `signature_name` with `inputs`.

    Args:
        model_name: str. The served model name.
        signature_name: str. E.g. "serving_default".
        inputs: dict of input name -> numpy array or list (strings as bytes).
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def write_warmup_requests(path: str | Path, logs: Iterable) -> int:
    """int: Writes PredictionLog records to a TFRecord file and returns how many were written.

    Raises:
        ValueError: more than 1000 records, TF Serving's limit.
    """
    import tensorflow as tf

    logs = list(logs)
    if len(logs) > MAX_WARMUP_RECORDS:
        raise ValueError(f"TF Serving replays at most {MAX_WARMUP_RECORDS} warm-up records. "
                         f"Received: {len(logs)} records")
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return len(logs)
