"""`distribution:` in a recipe -> a `tf.distribute` strategy."""

from __future__ import annotations

import json
import os

from tlkeras.errors import TlkerasError


def use_logical_cpus(count: int) -> None:
    """Splits the CPU into `count` logical devices, so MirroredStrategy can replicate on a CPU-only
    machine. Must run before TensorFlow initialises its devices; later calls change nothing."""
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        pass  # devices are already initialised: keep what exists


def cluster_config() -> dict:
    """dict: $TF_CONFIG, the cluster and this process's task in it ({} when unset).

    Raises:
        TlkerasError: TF_CONFIG is not a JSON mapping with `cluster` and `task`.
    """
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return {}
    try:
        config = json.loads(text)
        task = config["task"]
        kind, index = task["type"], int(task["index"])
        hosts = config["cluster"][kind]
        if not isinstance(hosts, list) or not 0 <= index < len(hosts):
            raise ValueError(f"task index {index} is not in cluster.{kind}")
    except (ValueError, KeyError, TypeError) as err:
        raise TlkerasError(f"TF_CONFIG must be JSON like {{\"cluster\": {{\"worker\": [\"host1:port\", \"host2:port\"]}}, "
                           f"\"task\": {{\"type\": \"worker\", \"index\": 0}}}} ({err}). Received: TF_CONFIG={text[:200]!r}") from None
    return config


def is_chief(name: str) -> bool:
    """bool: whether this process writes the run directory: always, except in a multi-worker cluster,
    where the chief does (the task of type "chief", or worker 0 when the cluster has no chief)."""
    if name != "multi_worker":
        return True
    config = cluster_config()
    if not config:
        return True  # no cluster: a single worker
    kind, index = config["task"]["type"], int(config["task"]["index"])
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in config["cluster"])


def _multi_worker_strategy():
    import tensorflow as tf

    class MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        """MultiWorkerMirroredStrategy whose `reduce` takes what Keras 3's fit gives it (keras-team/keras#20585):
        a nested (inputs, targets) batch, as MirroredStrategy's does, and scalar logs with `axis=0`."""

        def reduce(self, reduce_op, value, axis):
            parent = super()

            def one(v):
                rank = self.experimental_local_results(v)[0].shape.rank
                return parent.reduce(reduce_op, v, None if rank == 0 else axis)

            return tf.nest.map_structure(one, value)

    return MultiWorkerStrategy()


def make_strategy(name: str):
    """Returns the strategy for `name`: "none", "mirrored", "multi_worker" or "tpu".

    "mirrored" uses every GPU, or every logical CPU device when there is no GPU.

    Example:
    >>> with make_strategy("mirrored").scope():
    ...     model = build()
    """
    import tensorflow as tf

    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if not tf.config.list_physical_devices("GPU"):
            use_logical_cpus(os.cpu_count() or 1)  # one replica per core, if TensorFlow has not started yet
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        cluster_config()  # a malformed TF_CONFIG fails here with one line, not deep in TensorFlow
        return _multi_worker_strategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.NotFoundError) as err:
            raise TlkerasError(f"no TPU found ({err}); use distribution: none or mirrored") from None
        return tf.distribute.TPUStrategy(resolver)
    raise TlkerasError(f"unknown distribution '{name}'; use none, mirrored, multi_worker or tpu")
