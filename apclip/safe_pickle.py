"""Read tensors out of torch zip files without running any code from them.

Two users:
- TorchScript archives (OpenAI's released ViT-B-16.pt): `torch.jit.load` would execute the
  archive's code. Here every `__torch__.*` class becomes an inert record of its attributes.
- torch.save files that `torch.load(weights_only=True)` rejects only because they pickle a known
  plain-data class (ViFi-CLIP pickles its yacs CfgNode config next to the weights).
`data.pkl` is unpickled with a restricted unpickler: storages are read straight from the zip and
any global outside a small allow-list is refused, so nothing in the file can run.
"""
from __future__ import annotations

import collections
import pickle
import zipfile
from typing import Any

import torch

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _ScriptObject:
    """Stand-in for a TorchScript module or object: holds its attributes, runs nothing."""

    state: Any = None  # a class default: NEWOBJ skips __init__, and an object may never get a BUILD

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *unused: Any) -> torch.Tensor:
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _identity(value: Any, *unused: Any) -> Any:
    return value


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
    ("torch.jit._pickle", "build_intlist"): _identity,
    ("torch.jit._pickle", "build_doublelist"): _identity,
    ("torch.jit._pickle", "build_boollist"): _identity,
    ("torch.jit._pickle", "build_tensorlist"): _identity,
    ("torch.jit._pickle", "build_tensor_from_id"): _identity,
}


class PlainConfig(dict):
    """Inert stand-in for dict-like config classes (yacs CfgNode): keeps items and attributes."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)


# Plain-data classes accepted in torch.save files, mapped to inert stand-ins.
DATA_CLASSES: dict[tuple[str, str], type] = {("yacs.config", "CfgNode"): PlainConfig}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, scripted: bool):
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix
        self.scripted = scripted
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if not self.scripted and (module, name) in DATA_CLASSES:
            return DATA_CLASSES[(module, name)]
        if module in ("builtins", "__builtin__") and name in ("set", "frozenset"):
            return {"set": set, "frozenset": frozenset}[name]
        if self.scripted and module.startswith("__torch__"):
            return type(name, (_ScriptObject,), {"__module__": module})
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refused global {module}.{name}")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
            flat = torch.frombuffer(raw, dtype=storage_type.dtype) if raw else torch.empty(0, dtype=storage_type.dtype)
            self.storages[key] = flat[:numel]
        return self.storages[key]


def is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    # torch.save zips have data.pkl too; only TorchScript archives carry code/ and constants.pkl.
    return any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names)


def _load_data_pkl(path: str, scripted: bool) -> Any:
    with zipfile.ZipFile(path) as zf:
        data_pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not data_pkl:
            raise pickle.UnpicklingError("no data.pkl at the archive's top level")
        prefix = data_pkl[0][: -len("data.pkl")]
        with zf.open(data_pkl[0]) as f:
            return _RestrictedUnpickler(f, zf, prefix, scripted).load()


def load_torch_zip(path: str) -> Any:
    """Like torch.load(weights_only=True) on a zip-format file, also accepting DATA_CLASSES."""
    if not zipfile.is_zipfile(path):
        raise pickle.UnpicklingError("not a zip-format torch file")
    return _load_data_pkl(path, scripted=False)


def read_torchscript_tensors(path: str) -> dict[str, torch.Tensor]:
    """All tensors of the archive's module tree, named as `ScriptModule.state_dict()` names them."""
    root = _load_data_pkl(path, scripted=True)
    tensors: dict[str, torch.Tensor] = {}
    _collect(root, "", tensors, depth=0)
    return tensors


def _collect(node: Any, prefix: str, out: dict[str, torch.Tensor], depth: int) -> None:
    if depth > 64:
        raise pickle.UnpicklingError("module tree deeper than 64 levels")
    state = node.state if isinstance(node, _ScriptObject) else None
    if isinstance(state, tuple) and state and isinstance(state[0], dict):
        state = state[0]
    if not isinstance(state, dict):
        return
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            out[prefix + str(name)] = value
        elif isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{name}.", out, depth + 1)
