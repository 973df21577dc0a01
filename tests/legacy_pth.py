"""A tiny writer for torch's legacy `.pth` format, so the reader and converter are tested without torch."""

import collections
import pickle
import struct
import sys
import types

import numpy as np

from tlkeras.backbones.efficientnet_lite import _weight_map


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
    """Write {name: FakeTensor} the way torch.save(..., _use_new_zipfile_serialization=False) does."""
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


def lite_state_dict(model, rng):
    """Random arrays in torch layout and lukemelas naming, shaped from the model's own layers."""
    sd = {}
    for layer_name, kind, prefix in _weight_map(model):
        layer = model.get_layer(layer_name)
        if kind == "conv":
            h, w, i, o = layer.kernel.shape
            sd[f"{prefix}.weight"] = rng.normal(size=(o, i, h, w)).astype("float32")
        elif kind == "dwconv":
            h, w, c, _ = layer.kernel.shape
            sd[f"{prefix}.weight"] = rng.normal(size=(c, 1, h, w)).astype("float32")
        elif kind == "dense":
            i, o = layer.kernel.shape
            sd[f"{prefix}.weight"] = rng.normal(size=(o, i)).astype("float32")
            sd[f"{prefix}.bias"] = rng.normal(size=(o,)).astype("float32")
        else:
            n = layer.gamma.shape[0]
            for suffix in ("weight", "bias", "running_mean", "running_var"):
                sd[f"{prefix}.{suffix}"] = rng.uniform(0.5, 1.5, size=(n,)).astype("float32")
            sd[f"{prefix}.num_batches_tracked"] = np.array(1, dtype=np.int64)
    return sd


def write_state_dict(path, state_dict, monkeypatch):
    """Write a {name: numpy array} state dict as a legacy .pth, one storage per tensor."""
    tensors = {}
    for index, (name, value) in enumerate(state_dict.items()):
        value = np.ascontiguousarray(value)
        storage = FakeStorage(str(index), value.reshape(-1))
        strides = tuple(int(s) // value.itemsize for s in value.strides) if value.ndim else ()
        tensors[name] = FakeTensor(storage, 0, value.shape, strides)
    write_legacy(path, tensors, monkeypatch)
