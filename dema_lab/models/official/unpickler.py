"""Reading an official DeMa checkpoint without running it: a restricted unpickler.

`read_official(path)` rebuilds tensors, storages and plain containers, stands an inert stub in for
every class under `torch.optim` (the pickled AdamW), and refuses every other global by name before
anything is called: a file whose `__reduce__` would run a command fails with UnsafeCheckpointError.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import collections
import io
import pickle
import types
import zipfile
from pathlib import Path

import numpy as np
import torch

from dema_lab.models.checkpoint import CheckpointError


class OfficialCheckpointError(CheckpointError):
    """An official checkpoint that is missing, not a torch pickle, or of a layout dema-lab cannot map."""


class UnsafeCheckpointError(OfficialCheckpointError):
    """A pickle naming a global that is neither a tensor rebuild function, a plain container nor a
    torch.optim class: it could run code on load, so it is refused before anything is called."""


class InertObject:
    """Stands in for a class a checkpoint names under torch.optim (the pickled AdamW): it keeps what
    the pickle gives it (`args`, `state`) and runs nothing."""

    _qualname = "torch.optim.?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.args, self.kwargs, self.state = (), {}, state

    def __repr__(self):
        return f"<inert stand-in for {self._qualname}>"


_STUBS: dict[tuple[str, str], type] = {}


def _stub(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STUBS:
        _STUBS[key] = type(name, (InertObject,), {"_qualname": f"{module}.{name}", "__module__": __name__})
    return _STUBS[key]


def _load_from_bytes(data: bytes):
    """torch.storage._load_from_bytes for plain (non-torch.save) pickles of tensors, read restrictedly."""
    return restricted_torch_load(io.BytesIO(data), "an embedded storage")


def _allowed_globals() -> dict[tuple[str, str], object]:
    """(module, name) -> what find_class hands out: rebuild functions that only make tensors, numpy
    arrays and plain containers; nothing that imports, evaluates, opens or runs."""
    import torch._tensor
    import torch._utils

    allowed: dict[tuple[str, str], object] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): collections.defaultdict,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
        ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
        ("torch._tensor", "Tensor"): torch.Tensor,
        ("torch", "Tensor"): torch.Tensor,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch.storage", "_load_from_bytes"): _load_from_bytes,
        ("_codecs", "encode"): __import__("_codecs").encode,  # protocol-2 pickles of bytes
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for name in (
        "dict",
        "list",
        "tuple",
        "set",
        "frozenset",
        "int",
        "float",
        "complex",
        "bool",
        "str",
        "bytes",
        "bytearray",
        "slice",
    ):
        allowed[("builtins", name)] = getattr(builtins, name)
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose find_class hands out only tensor/storage rebuild functions, plain
    containers, torch dtypes and devices, and inert stubs for classes under torch.optim; any
    other global raises UnsafeCheckpointError before it could be called. torch.load's
    UnpicklerWrapper subclasses it (`pickle_module=RESTRICTED_PICKLE`) and defers to this
    find_class for everything but the storage types, which it maps to plain dtype holders."""

    source = "the checkpoint"

    def find_class(self, module, name):
        global _ALLOWED
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)  # protocol 2: __builtin__ -> builtins
        if _ALLOWED is None:
            _ALLOWED = _allowed_globals()
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):
            return vars(torch)[name]  # torch.float32, ... (never torch.__getattr__)
        if module == "torch.optim" or module.startswith("torch.optim."):
            return _stub(module, name)  # the pickled AdamW (never run)
        raise UnsafeCheckpointError(
            f"{self.source} refuses global {module}.{name}: an official checkpoint holds only tensors, "
            f"plain containers and a torch.optim optimizer, so this file is not a plain checkpoint. "
            f"Nothing in it was run. If you trust it and it holds a whole model object, load it where "
            f"that class exists and re-save {{'model': model.state_dict()}}"
        )


def _module_like(source: str) -> types.SimpleNamespace:
    """A `pickle_module` for torch.load: its Unpickler is restricted and names `source` in errors."""
    unpickler = type("RestrictedUnpickler", (RestrictedUnpickler,), {"source": source})

    def load(f, **kw):
        return unpickler(f, **kw).load()

    return types.SimpleNamespace(
        __name__="dema_lab_restricted_pickle",
        Unpickler=unpickler,
        load=load,
        Pickler=pickle.Pickler,
        dump=pickle.dump,
        UnpicklingError=pickle.UnpicklingError,
    )


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def restricted_torch_load(f, source: str):
    """torch.load(f) on CPU through the restricted unpickler (zip and legacy torch formats, and plain
    pickles of tensors). Raises UnsafeCheckpointError for a forbidden global."""
    data = f.read() if hasattr(f, "read") else Path(f).read_bytes()
    module = _module_like(source)
    if data[:4] != b"PK\x03\x04":
        first = module.load(io.BytesIO(data))  # a plain pickle, or a legacy torch file's magic number
        if not (isinstance(first, int) and first == _LEGACY_MAGIC):
            return first
    return torch.load(io.BytesIO(data), map_location="cpu", pickle_module=module, weights_only=False)


def read_official(path) -> dict:
    """The object an official checkpoint file holds (usually a dict), read without executing
    anything. Raises OfficialCheckpointError (missing, not a pickle) or UnsafeCheckpointError."""
    path = Path(path).expanduser()
    if not path.exists():
        raise OfficialCheckpointError(f"official checkpoint {path} does not exist")
    if not path.is_file():
        raise OfficialCheckpointError(f"official checkpoint {path} is not a file (give the model_iter*.pkl file)")
    data = path.read_bytes()
    if not data:
        raise OfficialCheckpointError(f"official checkpoint {path} is empty")
    try:
        return restricted_torch_load(io.BytesIO(data), str(path))
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - torch and pickle raise many kinds for a foreign file
        hint = ""
        if _looks_like_safetensors(data):
            hint = (
                " It is a safetensors file: a dema-lab checkpoint opens with "
                "dema_lab.models.load_checkpoint, no import needed."
            )
        elif zipfile.is_zipfile(io.BytesIO(data)):
            hint = " It is a zip archive but not one torch.save wrote (or a TorchScript archive)."
        raise OfficialCheckpointError(
            f"{path} is not a torch checkpoint (pickle) that can be read: {type(e).__name__}: {e}.{hint} "
            f"Give the model_iter*.pkl file the official gym/experiment.py saved"
        ) from None


def _looks_like_safetensors(data: bytes) -> bool:
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    return 0 < n < len(data) and data[8:9] == b"{"
