"""A tiny writer for torch's legacy `.pth` format, so the reader and converter are tested without torch."""

import collections
import pickle
import struct
import sys
import types

import numpy as np

class FakeStorage:
    def __init__(self, key, values):
        self.key = key
        self.values = np.ascontiguousarray(values)


class FakeTensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


def write_legacy(path, tensors, monkeypatch):
    """Write {name: _FakeTensor} the way torch.save(..., _use_new_zipfile_serialization=False) does."""
    torch_module = types.ModuleType("torch")
    utils_module = types.ModuleType("torch._utils")
    storage_types = {}
    for name in ("FloatStorage", "LongStorage"):
        storage_types[name] = type(name, (), {"__module__": "torch"})
        setattr(torch_module, name, storage_types[name])

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only used as a pickle reference")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils_module._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch_module)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_module)

    storages = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, FakeStorage):
                storages[obj.key] = obj
                kind = "LongStorage" if obj.values.dtype == np.int64 else "FloatStorage"
                return ("storage", storage_types[kind], obj.key, "cpu", obj.values.size, None)
            return None

    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        Pickler(f, protocol=2).dump(collections.OrderedDict(tensors))
        pickle.dump(list(storages), f, protocol=2)
        for storage in storages.values():
            f.write(struct.pack("<q", storage.values.size))
            f.write(storage.values.astype(storage.values.dtype.newbyteorder("<")).tobytes())
