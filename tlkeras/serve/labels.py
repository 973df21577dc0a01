"""Version labels (`stable`, `canary`, ...) from TF Serving's `models.config`, re-read when it changes.

`tlkeras deploy-config` writes the file; TF Serving reads the `version_labels` of each
`model_config_list.config` entry, and so does `tlkeras serve`. Requests name a label with
`/v1/models/NAME/labels/LABEL...` (REST) or `model_spec.version_label` (gRPC).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from tlkeras.errors import TlkerasError
from tlkeras.serve.errors import NOT_FOUND, ServingError

logger = logging.getLogger("tlkeras.serve")


def read_version_labels(path: str | Path) -> dict[str, dict[str, int]]:
    """dict: Model name -> {label: version} from a text-format `ModelServerConfig` file.

    Args:
        path: str | Path. The `models.config` file.

    Example:
    >>> read_version_labels("models/models.config")
    {'fashion': {'stable': 2}}
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(Path(path).read_text(encoding="utf-8"), config)
    except (OSError, UnicodeDecodeError, text_format.ParseError) as err:
        raise TlkerasError(f"cannot read the model config (a text ModelServerConfig, as `tlkeras deploy-config` "
                           f"writes): {err}. Received: path={str(path)!r}") from err
    labels: dict[str, dict[str, int]] = {}
    for entry in config.model_config_list.config:
        if entry.name in labels:
            raise TlkerasError(f"the model config names model '{entry.name}' twice; keep one entry. "
                               f"Received: path={str(path)!r}")
        labels[entry.name] = dict(entry.version_labels)
    return labels


class VersionLabels:
    """The version labels of a `models.config`, checked for changes on every look-up (one `stat`).

    A file that becomes unreadable or invalid is logged and the last good labels stay in force, as
    TF Serving keeps its last good config.

    Args:
        path: str | Path. The `models.config` file; it must be readable now.

    Example:
    >>> labels = VersionLabels("models/models.config")
    >>> labels.resolve("fashion", "stable")
    2
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._labels: dict[str, dict[str, int]] = {}
        self.reload(strict=True)

    def _file_stamp(self) -> tuple:
        info = os.stat(self.path)
        return info.st_mtime_ns, info.st_size, info.st_ino

    def reload(self, strict: bool = False) -> bool:
        """bool: Re-reads the file if it changed since the last read; True when new labels took effect.

        Args:
            strict: bool. Raise `TlkerasError` when the file cannot be read, instead of logging and
                keeping the last good labels. Defaults to False.
        """
        try:
            stamp = self._file_stamp()
        except OSError as err:
            if strict:
                raise TlkerasError(f"the model config file is missing: {err.strerror}. "
                                   f"Received: model_config_file={str(self.path)!r}") from err
            stamp = ("missing",)
            if stamp != self._stamp:
                logger.error("model config %s is gone; keeping its last labels", self.path)
                self._stamp = stamp
            return False
        if stamp == self._stamp:
            return False
        try:
            labels = read_version_labels(self.path)
        except TlkerasError as err:
            if strict:
                raise
            logger.error("%s; keeping the previous labels", err)
            self._stamp = stamp  # report a bad file once, not on every request
            return False
        with self._lock:
            self._labels, self._stamp = labels, stamp
        logger.info("version labels from %s: %s", self.path,
                    {name: found for name, found in sorted(labels.items()) if found} or "none")
        return True

    def for_model(self, name: str) -> dict[str, int]:
        """dict[str, int]: Label -> version for model `name` (empty when it has none)."""
        self.reload()
        with self._lock:
            return dict(self._labels.get(name, {}))

    def versions(self, name: str) -> set[int]:
        """set[int]: The versions of model `name` that some label points at."""
        return set(self.for_model(name).values())

    def resolve(self, name: str, label: str) -> int:
        """int: The version that `label` points at for model `name`; a 404 `ServingError` naming the known
        labels when there is no such label.

        Args:
            name: str. The model name.
            label: str. The label, e.g. "stable".
        """
        known = self.for_model(name)
        if label not in known:
            # TF Serving says "Unrecognized servable version label" (as a 400); the same words, as a 404.
            raise ServingError(
                f"Unrecognized servable version label: {label!r} for model '{name}'; its labels in "
                f"{self.path}: {sorted(known) or 'none'}. Received: label={label!r}", NOT_FOUND)
        return known[label]
