"""TF Serving configuration for a folder of exported models: `models.config` and `batching_parameters.txt`.

Both files are text-format protos built with the protos themselves, so they parse in the model server:
`ModelServerConfig` (tensorflow_serving/config/model_server_config.proto) and `BatchingParameters`
(tensorflow_serving/servables/tensorflow/session_bundle_config.proto). No TensorFlow import here.
"""

from __future__ import annotations

import os
from pathlib import Path

from tlkeras.errors import TlkerasError

CONFIG_FILE = "models.config"
BATCHING_FILE = "batching_parameters.txt"
DEFAULT_MOUNT = "/models"
STABLE_LABEL = "stable"
POLICIES = ("latest", "all", "specific")

# Batching defaults for CPU serving: a batch thread per core, batches up to 32, and a 1 ms wait that
# smooths batch sizes at low request rates without adding noticeable latency (TF Serving batching guide).
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_BATCH_TIMEOUT_MICROS = 1000
DEFAULT_MAX_ENQUEUED_BATCHES = 100


def model_versions(models_dir: str | Path) -> dict[str, list[int]]:
    """dict: Model name -> its complete versions (folders holding saved_model.pb), ascending.

    Args:
        models_dir: str or Path. The base folder holding one subfolder per model.
    """
    models_dir = Path(models_dir)
    found = {}
    for model_dir in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = sorted(int(v.name) for v in model_dir.iterdir()
                          if v.is_dir() and v.name.isdigit() and (v / "saved_model.pb").is_file())
        if versions:
            found[model_dir.name] = versions
    return found


def model_server_config(models: dict[str, list[int]], mount: str = DEFAULT_MOUNT, policy: str = "latest",
                        keep: int = 2, stable: dict[str, int] | None = None):
    """ModelServerConfig: One `config` per model, with the label "stable" on its newest version.

    Args:
        models: dict of model name -> versions, as `model_versions` returns.
        mount: str. Where the server sees the models folder (the container path). Defaults to "/models".
        policy: str. Which versions the server loads:
            "latest": the newest `keep` on disk, so a new export goes live by itself (unlabelled requests
                go to the newest loaded version) and rewriting this config later moves "stable" onto it;
            "all": every version on disk;
            "specific": the newest `keep` that exist now. A later export stays unloaded until this config
                is rewritten. TF Serving checks labels before loading, so it refuses a config that
                moves "stable" onto a version not loaded yet: promote in two steps, first with `stable`
                left on the old version, then again once the new one is loaded.
            Defaults to "latest".
        keep: int. Versions to load per model, for "latest" and "specific". Defaults to 2.
        stable: dict of model name -> version for the "stable" label. Defaults to each model's newest.
    """
    from tensorflow_serving.config import model_server_config_pb2

    if policy not in POLICIES:
        raise TlkerasError(f"policy must be one of {', '.join(POLICIES)}. Received: policy={policy!r}")
    if keep < 1:
        raise TlkerasError(f"keep must be at least 1. Received: keep={keep!r}")
    unknown = sorted(set(stable or {}) - set(models))
    if unknown:
        raise TlkerasError(f"--stable names a model that is not exported; pick from {sorted(models)}. "
                           f"Received: {unknown}")
    config = model_server_config_pb2.ModelServerConfig()
    for name, versions in sorted(models.items()):
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = f"{mount.rstrip('/')}/{name}"
        entry.model_platform = "tensorflow"
        if policy == "latest":
            entry.model_version_policy.latest.num_versions = keep
        elif policy == "all":
            entry.model_version_policy.all.SetInParent()
        else:
            entry.model_version_policy.specific.versions.extend(versions[-keep:])
        label_version = (stable or {}).get(name, versions[-1])
        if label_version not in served_versions(versions, policy, keep):
            raise TlkerasError(f"stable version {label_version} of '{name}' would not be loaded; pick one of "
                               f"{served_versions(versions, policy, keep)}. Received: stable={label_version!r}")
        entry.version_labels[STABLE_LABEL] = label_version
    return config


def served_versions(versions: list[int], policy: str = "latest", keep: int = 2) -> list[int]:
    """list of int: The versions on disk that the server loads under `policy`."""
    return list(versions) if policy == "all" else list(versions[-keep:])


def batching_parameters_class():
    """type: The `tensorflow.serving.BatchingParameters` message class.

    tensorflow-serving-api does not ship session_bundle_config_pb2, so the message is declared here with
    the field names, numbers and types of session_bundle_config.proto.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)

    file_proto = descriptor_pb2.FileDescriptorProto(
        name="tlkeras/session_bundle_config_subset.proto", package="tensorflow.serving", syntax="proto3",
        dependency=[wrappers.name],
    )
    message = file_proto.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    for number, name, type_name in [(1, "max_batch_size", "Int64Value"), (2, "batch_timeout_micros", "Int64Value"),
                                    (3, "max_enqueued_batches", "Int64Value"),
                                    (4, "num_batch_threads", "Int64Value"),
                                    (5, "thread_pool_name", "StringValue")]:
        message.field.add(name=name, number=number, label=field.LABEL_OPTIONAL, type=field.TYPE_MESSAGE,
                          type_name=f".google.protobuf.{type_name}")
    message.field.add(name="allowed_batch_sizes", number=6, label=field.LABEL_REPEATED, type=field.TYPE_INT64)
    message.field.add(name="pad_variable_length_inputs", number=7, label=field.LABEL_OPTIONAL,
                      type=field.TYPE_BOOL)
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def batching_parameters(max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                        batch_timeout_micros: int = DEFAULT_BATCH_TIMEOUT_MICROS,
                        num_batch_threads: int | None = None,
                        max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES):
    """BatchingParameters: Server-side batching settings for CPU serving.

    Args:
        max_batch_size: int. Largest batch the server forms. Defaults to 32.
        batch_timeout_micros: int. Longest wait for a batch to fill, in microseconds. Defaults to 1000.
        num_batch_threads: int. Batches processed in parallel. Defaults to the number of CPU cores.
        max_enqueued_batches: int. Queue length before requests fail fast. Defaults to 100.
    """
    params = batching_parameters_class()()
    params.max_batch_size.value = max_batch_size
    params.batch_timeout_micros.value = batch_timeout_micros
    params.num_batch_threads.value = num_batch_threads or os.cpu_count() or 1
    params.max_enqueued_batches.value = max_enqueued_batches
    return params


def write_deploy_config(models_dir: str | Path, out_dir: str | Path | None = None, mount: str = DEFAULT_MOUNT,
                        policy: str = "latest", keep: int = 2, stable: dict[str, int] | None = None,
                        num_batch_threads: int | None = None) -> tuple[Path, Path]:
    """tuple of Path: Writes `models.config` and `batching_parameters.txt` for every model in `models_dir`.

    Args:
        models_dir: str or Path. The base folder `tlkeras export` wrote to.
        out_dir: str or Path. Where to write. Defaults to `models_dir`, so one volume holds everything.
        mount: str. The models folder's path inside the server container. Defaults to "/models".
        policy: str. "latest", "all" or "specific"; see `model_server_config`. Defaults to "latest".
        keep: int. Versions to load per model under "latest" and "specific". Defaults to 2.
        stable: dict of model name -> version for the "stable" label. Defaults to each model's newest.
        num_batch_threads: int. Batch threads; match the server's cores. Defaults to this machine's cores.

    Example:
    >>> write_deploy_config("models")
    (PosixPath('models/models.config'), PosixPath('models/batching_parameters.txt'))
    """
    from google.protobuf import text_format

    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise TlkerasError(f"models folder not found; pass the --base-dir you exported to. "
                           f"Received: models_dir={str(models_dir)!r}")
    models = model_versions(models_dir)
    if not models:
        raise TlkerasError(f"no exported model under {models_dir}; run `tlkeras export RUN_DIR --base-dir "
                           f"{models_dir} --name NAME` first")
    config = model_server_config(models, mount, policy, keep, stable)
    batching = batching_parameters(num_batch_threads=num_batch_threads)
    from tlkeras import files

    out_dir = files.writable_dir(Path(out_dir) if out_dir else models_dir, "deploy-config folder", "pass another --out")
    config_path, batching_path = out_dir / CONFIG_FILE, out_dir / BATCHING_FILE
    # Rewriting models.config is what the command is for. TF Serving may poll it meanwhile: it must never
    # read half a file.
    files.write_text(config_path, text_format.MessageToString(config))
    files.write_text(batching_path, text_format.MessageToString(batching))
    return config_path, batching_path
