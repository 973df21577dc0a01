"""Finds SavedModels in TF Serving's layout, loads them, and keeps them in step with the disk.

The layout is `BASE/<model name>/<integer version>/saved_model.pb` (plus `variables/`, `assets/`,
`assets.extra/`). BASE may also be a single model directory (`BASE/<version>/saved_model.pb`); its folder
name is then the model name. Like TF Serving:
- requests without a version go to the newest available version;
- the "latest" policy (the default) serves one version per model and the "all" policy serves every version
  on disk;
- new versions and new models are picked up while serving, and the old version keeps serving until the
  new one has loaded;
- directories whose names are not integers (the exporter's `.tmp-*` dirs, for example) are ignored;
- with a `models.config`, versions its labels point at are loaded too, so `/labels/stable` resolves;
- `assets.extra/tf_serving_warmup_requests` (a TFRecord of PredictionLog) is replayed before a version
  goes live, and a failing record fails the load.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlkeras.errors import TlkerasError
from tlkeras.serve.codec import check_input_names
from tlkeras.serve.errors import INTERNAL, NOT_FOUND, ServingError, first_error_line, status_for_op_error
from tlkeras.serve.labels import VersionLabels

logger = logging.getLogger("tlkeras.serve")

DEFAULT_SIGNATURE = "serving_default"
VERSION_POLICIES = ("latest", "all")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit

_VERSION_DIR = re.compile(r"[0-9]+")
# Model states as TF Serving reports them (ManagerState in its get_model_status.proto).
LOADING, AVAILABLE, END = "LOADING", "AVAILABLE", "END"


@dataclass(frozen=True)
class Signature:
    """One signature of a loaded SavedModel.

    Args:
        name: str. The signature key, e.g. "serving_default".
        function: ConcreteFunction. Called with the inputs as keyword arguments.
        inputs: dict[str, tf.TensorSpec]. Input specs by name.
        outputs: dict[str, tf.TensorSpec]. Output specs by name.
    """

    name: str
    function: Any
    inputs: dict
    outputs: dict


@dataclass
class VersionStatus:
    """The state of one model version, as reported by the status API.

    Args:
        version: int. The version number (the directory name).
        state: str. "LOADING", "AVAILABLE" or "END" (unloaded, or failed to load when `error` is set).
        error: str. Why the load failed. Defaults to "".
    """

    version: int
    state: str
    error: str = ""


class ServableVersion:
    """A loaded SavedModel version: its signatures, its SignatureDefs for metadata, and `predict`.

    Args:
        name: str. The model name.
        version: int. The version number.
        path: Path. The version directory.
        loaded: Any. The object returned by `tf.saved_model.load`; kept so its variables stay alive.
        meta_graph: MetaGraphDef. The "serve" meta graph read from `saved_model.pb`.
    """

    def __init__(self, name: str, version: int, path: Path, loaded, meta_graph):
        self.name = name
        self.version = version
        self.path = path
        self.meta_graph = meta_graph
        self._loaded = loaded
        self.signatures = {
            key: Signature(key, fn, dict(fn.structured_input_signature[1]), dict(fn.structured_outputs))
            for key, fn in loaded.signatures.items()
        }

    def signature(self, name: str | None = None) -> Signature:
        """Signature: The signature called `name`. Defaults to "serving_default"."""
        key = name or DEFAULT_SIGNATURE
        if key not in self.signatures:
            raise ServingError(
                f"model '{self.name}' version {self.version} has no signature '{key}'; "
                f"pick one of {sorted(self.signatures)}. Received: signature_name={key!r}"
            )
        return self.signatures[key]

    def signature_def_json(self) -> dict:
        """dict: The SignatureDef map in TF Serving's JSON form (proto3 JSON, default fields printed)."""
        from google.protobuf import json_format

        return {
            key: json_format.MessageToDict(
                signature_def, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
            for key, signature_def in sorted(self.meta_graph.signature_def.items())
        }

    def check_inputs(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> tuple[Signature, dict[str, np.ndarray]]:
        """tuple: The signature and the inputs as arrays, checked against its names, dtypes and shapes.

        Args:
            inputs: Mapping[str, np.ndarray]. One array per input name; strings as object arrays of bytes.
            signature_name: str, optional. Defaults to "serving_default".
        """
        import tensorflow as tf

        signature = self.signature(signature_name)
        check_input_names(inputs, signature.inputs, "the request")
        arrays = {}
        for name, spec in signature.inputs.items():
            array = np.asarray(inputs[name])
            if array.dtype == object or array.dtype.kind in "SU":
                dtype = tf.string
            else:
                try:
                    dtype = tf.as_dtype(array.dtype)
                except TypeError:
                    raise ServingError(f"input '{name}' has a dtype TensorFlow cannot take. "
                                       f"Received: dtype={array.dtype}") from None
            if dtype != spec.dtype:
                raise ServingError(f"input '{name}' expects dtype {spec.dtype.name}. Received: dtype={dtype.name}")
            if not spec.shape.is_compatible_with(array.shape):
                raise ServingError(
                    f"input '{name}' expects shape {spec.shape.as_list()} (None means any size). "
                    f"Received: shape={list(array.shape)}"
                )
            arrays[name] = array
        return signature, arrays

    @staticmethod
    def select_outputs(signature: Signature, output_filter: list[str] | None = None) -> list[str]:
        """list[str]: The output names a request gets: `output_filter`, checked, or all of them.

        Args:
            signature: Signature. The signature being called.
            output_filter: list[str], optional. Defaults to all outputs.
        """
        wanted = list(output_filter) if output_filter else list(signature.outputs)
        unknown = sorted(set(wanted) - set(signature.outputs))
        if unknown:
            raise ServingError(f"unknown output(s) {unknown}; this signature returns {sorted(signature.outputs)}")
        return wanted

    def run(self, signature: Signature, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """dict[str, np.ndarray]: Calls a signature on arrays from `check_inputs` and returns every output.

        TensorFlow errors become a `ServingError` with the status TF Serving answers them with; the ones
        that are server faults (5xx) are logged with their cause.

        Args:
            signature: Signature. From `check_inputs`.
            arrays: Mapping[str, np.ndarray]. From `check_inputs` (or several of them, concatenated).
        """
        import tensorflow as tf

        tensors = {name: tf.constant(arrays[name], dtype=spec.dtype) for name, spec in signature.inputs.items()}
        try:
            outputs = signature.function(**tensors)
        except tf.errors.OpError as err:
            status = status_for_op_error(err)
            if status >= INTERNAL:
                logger.error("model %s version %d: signature %s failed: %s", self.name, self.version,
                             signature.name, err)
            raise ServingError(first_error_line(err), status) from err
        return {name: value.numpy() for name, value in outputs.items()}

    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        signature_name: str | None = None,
        output_filter: list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """dict[str, np.ndarray]: Runs a signature on a batch of inputs.

        Args:
            inputs: Mapping[str, np.ndarray]. One array per input name; strings as object arrays of bytes.
            signature_name: str, optional. Defaults to "serving_default".
            output_filter: list[str], optional. Return only these outputs. Defaults to all outputs.
        """
        signature, arrays = self.check_inputs(inputs, signature_name)
        wanted = self.select_outputs(signature, output_filter)
        outputs = self.run(signature, arrays)
        return {name: outputs[name] for name in wanted}


def load_servable(name: str, version: int, path: Path) -> ServableVersion:
    """ServableVersion: Loads one SavedModel version and replays its warm-up requests, if any.

    Args:
        name: str. The model name.
        version: int. The version number.
        path: Path. The version directory holding `saved_model.pb`.
    """
    meta_graph = read_meta_graph(path)
    servable = ServableVersion(name, version, path, _load_saved_model(path, meta_graph), meta_graph)
    warmup = path / WARMUP_FILE
    if warmup.is_file():
        count = replay_warmup(servable, warmup)
        logger.info("model %s version %d: replayed %d warm-up request(s)", name, version, count)
    return servable


class ModelLoadError(TlkerasError):
    """A SavedModel that cannot be loaded in this process, with the fix in its message."""


def _load_saved_model(path: Path, meta_graph):
    import tensorflow as tf

    missing = unregistered_ops(meta_graph)
    if missing:
        try:
            # Text models exported with keras-hub tokenizers use TF Text ops; importing it registers
            # them (TF Serving needs them linked in for the same reason).
            import tensorflow_text  # noqa: F401
        except ImportError as err:
            raise ModelLoadError(f"the SavedModel uses ops {missing} that only tensorflow-text registers; "
                                 "pip install tensorflow-text") from err
        missing = unregistered_ops(meta_graph)
        if missing:
            raise ModelLoadError(f"the SavedModel uses ops this TensorFlow does not register: {missing}; "
                                 "install the package that defines them")
    return tf.saved_model.load(str(path))


def unregistered_ops(meta_graph) -> list[str]:
    """list[str]: The op types a meta graph uses that are not registered in this process, sorted.

    Args:
        meta_graph: MetaGraphDef. From `read_meta_graph`.
    """
    from tensorflow.python.framework import op_def_registry

    used = {op.name for op in meta_graph.meta_info_def.stripped_op_list.op}
    if not used:  # SavedModels written without a stripped op list: read the graph itself
        library = meta_graph.graph_def.library.function
        used = {node.op for node in meta_graph.graph_def.node}
        used |= {node.op for function in library for node in function.node_def}
        used -= {function.signature.name for function in library}
    return sorted(name for name in used if op_def_registry.get(name) is None)


def read_meta_graph(path: Path):
    """MetaGraphDef: The meta graph tagged "serve" (or the only one) in a SavedModel directory.

    Args:
        path: Path. The version directory.
    """
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    if (path / "saved_model.pb").is_file():
        saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    else:
        text_format.Parse((path / "saved_model.pbtxt").read_text(), saved_model)
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph
    if len(saved_model.meta_graphs) == 1:
        return saved_model.meta_graphs[0]
    raise ValueError(f"{path} has no meta graph tagged 'serve'")


def replay_warmup(servable: ServableVersion, warmup_file: Path) -> int:
    """int: Runs the predict requests of a TF Serving warm-up file against `servable`; returns how many.

    Args:
        servable: ServableVersion. The freshly loaded version.
        warmup_file: Path. A TFRecord file of `tensorflow_serving.apis.PredictionLog` records.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    count = 0
    for record in tf.data.TFRecordDataset(str(warmup_file)).take(MAX_WARMUP_RECORDS):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if log.WhichOneof("log_type") != "predict_log":
            logger.warning("skipping a %s warm-up record: only predict is served", log.WhichOneof("log_type"))
            continue
        request = log.predict_log.request
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        servable.predict(inputs, request.model_spec.signature_name or None, list(request.output_filter))
        count += 1
    return count


def _version_dirs(model_dir: Path) -> dict[int, Path]:
    versions = {}
    try:
        entries = list(os.scandir(model_dir))
    except OSError:
        return versions
    for entry in entries:
        if _VERSION_DIR.fullmatch(entry.name) and entry.is_dir():
            path = Path(entry.path)
            if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
                versions.setdefault(int(entry.name), path)
    return versions


def _stamp(path: Path) -> tuple:
    """A cheap fingerprint of a version directory, so a failed load is retried only after files change."""
    stamp = []
    for folder in (path, path / "variables"):
        try:
            for entry in os.scandir(folder):
                info = entry.stat()
                stamp.append((folder.name, entry.name, info.st_size, info.st_mtime_ns))
        except OSError:
            pass
    return tuple(sorted(stamp))


class ModelRepository:
    """The models under a base directory, loaded and kept in step with the disk by `refresh`.

    Args:
        base_path: str | Path. `BASE` holding `<name>/<version>/saved_model.pb`, or one model directory.
        version_policy: str. "latest" serves the newest version of each model; "all" serves every version.
            Defaults to "latest".
        loader: Callable, optional. `(name, version, path) -> ServableVersion`. Defaults to
            `load_servable`.
        labels: VersionLabels, optional. Version labels from a `models.config`; the versions they name
            are loaded too (when on disk), whatever the policy. Defaults to no labels.

    Example:
    >>> repository = ModelRepository("exports")
    >>> repository.refresh()
    >>> repository.get("flowers").predict({"image_bytes": np.array([jpeg_bytes], dtype=object)})
    """

    def __init__(
        self,
        base_path,
        version_policy: str = "latest",
        loader: Callable[[str, int, Path], ServableVersion] | None = None,
        labels: VersionLabels | None = None,
    ):
        self.base_path = Path(base_path).expanduser()
        if not self.base_path.is_dir():
            raise TlkerasError(
                "the model base path must be a directory holding <model name>/<version>/saved_model.pb. "
                f"Received: base_path={str(base_path)!r}"
            )
        if version_policy not in VERSION_POLICIES:
            raise TlkerasError(f"version_policy must be one of {VERSION_POLICIES}. Received: {version_policy!r}")
        self.version_policy = version_policy
        self._loader = loader or load_servable
        self.labels = labels
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._servables: dict[str, dict[int, ServableVersion]] = {}
        self._states: dict[str, dict[int, VersionStatus]] = {}
        self._failed: dict[tuple[str, int], tuple] = {}
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def discover(self) -> dict[str, dict[int, Path]]:
        """dict: The models on disk now: `{name: {version: path}}`, skipping hidden and non-integer dirs."""
        single = _version_dirs(self.base_path)
        if single:
            return {self.base_path.resolve().name: single}
        models = {}
        try:
            entries = list(os.scandir(self.base_path))
        except OSError:
            return models
        for entry in entries:
            if entry.name.startswith((".", "_")) or ":" in entry.name or not entry.is_dir():
                continue
            versions = _version_dirs(Path(entry.path))
            if versions:
                models[entry.name] = versions
        return models

    def refresh(self) -> None:
        """Loads versions that appeared on disk and unloads those that left or were superseded."""
        with self._refresh_lock:
            on_disk = self.discover()
            for name in sorted(set(on_disk) | set(self._states)):
                self._refresh_model(name, on_disk.get(name, {}))

    def _refresh_model(self, name: str, versions: dict[int, Path]) -> None:
        if self.version_policy == "all":
            aspired = set(versions)
        else:
            aspired = {max(versions)} if versions else set()
        if self.labels is not None:
            aspired |= self.labels.versions(name) & set(versions)
        for version in sorted(aspired - set(self._servables.get(name, {})), reverse=True):
            self._load(name, version, versions[version])

        with self._lock:
            loaded = self._servables.get(name, {})
            replacement_ready = bool(aspired & set(loaded))
            for version in sorted(set(loaded) - aspired):
                # Keep the old version serving until a newer one is up, unless its files are gone.
                if version in versions and not replacement_ready:
                    continue
                del loaded[version]
                self._states[name][version] = VersionStatus(version, END)
                logger.info("model %s: unloaded version %d", name, version)
            if not versions and not loaded:
                self._servables.pop(name, None)
                self._states.pop(name, None)

    def _load(self, name: str, version: int, path: Path) -> None:
        key = (name, version)
        if key in self._failed:
            stamp = _stamp(path)
            if self._failed[key] == stamp:
                return
        with self._lock:
            self._states.setdefault(name, {})[version] = VersionStatus(version, LOADING)
        logger.info("model %s: loading version %d from %s", name, version, path)
        try:
            servable = self._loader(name, version, path)
        except Exception as err:  # a broken SavedModel must not stop the others from serving
            message = first_error_line(err)
            logger.error("model %s: version %d failed to load: %s", name, version, message)
            self._failed[key] = _stamp(path)
            with self._lock:
                self._states[name][version] = VersionStatus(version, END, message)
            return
        self._failed.pop(key, None)
        with self._lock:
            self._servables.setdefault(name, {})[version] = servable
            self._states[name][version] = VersionStatus(version, AVAILABLE)
        logger.info("model %s: version %d is available (signatures %s)", name, version, sorted(servable.signatures))

    def model_names(self) -> list[str]:
        """list[str]: The names of the models known to the server, sorted."""
        with self._lock:
            return sorted(self._states)

    def _check_served(self, name: str) -> None:
        # Names are only looked up among the models found on disk; nothing a request names is opened.
        if name not in self._states:
            raise ServingError(f"model '{name}' is not served here; served models: {sorted(self._states)}",
                               NOT_FOUND)

    def _labelled_version(self, name: str, label: str) -> int:
        if self.labels is None:
            raise ServingError(
                "version labels come from a models.config (`tlkeras deploy-config` writes one; pass "
                f"--model-config-file) and this server has none. Received: label={label!r}", NOT_FOUND)
        return self.labels.resolve(name, label)

    def get(self, name: str, version: int | None = None, label: str | None = None) -> ServableVersion:
        """ServableVersion: A loaded version of a model; the newest available one when `version` is None.

        Args:
            name: str. The model name.
            version: int, optional. Defaults to the newest available version.
            label: str, optional. A version label from the model config, instead of `version`.
                Defaults to none.
        """
        with self._lock:
            self._check_served(name)
        if label is not None:
            version = self._labelled_version(name, label)
        with self._lock:
            loaded = dict(self._servables.get(name, {}))
        if version is None:
            if not loaded:
                raise ServingError(f"model '{name}' has no available version yet", NOT_FOUND)
            return loaded[max(loaded)]
        if version not in loaded:
            via = f" (label '{label}')" if label is not None else ""
            raise ServingError(
                f"version {version}{via} of model '{name}' is not available; available versions: {sorted(loaded)}",
                NOT_FOUND,
            )
        return loaded[version]

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        """list[VersionStatus]: The states of a model's versions, newest first; only `version` if given.

        Args:
            name: str. The model name.
            version: int, optional. Defaults to all versions the server has seen.
            label: str, optional. A version label from the model config, instead of `version`.
                Defaults to none.
        """
        with self._lock:
            self._check_served(name)
        if label is not None:
            version = self._labelled_version(name, label)
        with self._lock:
            states = dict(self._states.get(name, {}))
        if version is None:
            return [states[v] for v in sorted(states, reverse=True)]
        if version not in states:
            raise ServingError(f"model '{name}' has no version {version}; known: {sorted(states)}", NOT_FOUND)
        return [states[version]]

    def start_polling(self, seconds: float = 2.0) -> threading.Thread:
        """threading.Thread: Starts a daemon thread that calls `refresh` every `seconds`.

        Args:
            seconds: float. The poll interval. Defaults to 2.0.
        """

        def poll():
            while not self._stop.wait(seconds):
                try:
                    self.refresh()
                except Exception:  # keep polling: a transient file-system error must not end hot reload
                    logger.exception("refreshing models under %s failed", self.base_path)

        self._poller = threading.Thread(target=poll, name="tlkeras-model-poller", daemon=True)
        self._poller.start()
        return self._poller

    def stop(self) -> None:
        """Stops the polling thread."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
