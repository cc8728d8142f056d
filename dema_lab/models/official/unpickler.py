"""Reading an official DeMa checkpoint without running it: a restricted unpickler.

`read_official(path)` rebuilds tensors, storages and plain containers, stands an inert stub in for
every class under `torch.optim` (the pickled AdamW), and refuses every other global by name before
anything is called: a file whose `__reduce__` would run a command fails with UnsafeCheckpointError.
Nothing it hands out allocates by a count the file gives (bytes(n), torch.Tensor(n), numpy arrays
of a shape), and the sizes a file declares (storages, tensor views) are checked against the file's
own size (LoadBudget) before anything is allocated or copied, so a small file cannot ask for gigabytes.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import collections
import io
import pickle
import threading
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


class LoadBudget:
    """What one file may declare: its storages hold at most the file's own bytes (they are stored in
    it, uncompressed), and its tensors at most twice that plus a little (weights tied to one storage
    count twice). Checked from the declared sizes before anything is allocated, cloned or copied, so
    a small file cannot make the reader allocate gigabytes (an expanded stride-0 view of a huge
    shape, a storage that claims more elements than the file holds)."""

    SLACK = 16 * 2**20

    def __init__(self, source: str, file_bytes: int):
        self.source, self.file_bytes = source, int(file_bytes)
        self.storage_bytes = 0
        self.tensor_bytes = 0

    def refuse(self, what: str) -> UnsafeCheckpointError:
        return UnsafeCheckpointError(
            f"{self.source} declares {what}; a checkpoint's weights never do, so it is refused before "
            f"anything was allocated or copied (the file is corrupt or crafted)"
        )

    def storage(self, saved_id) -> None:
        """A persistent storage id ('storage', type, key, location, numel[, view]): its bytes must fit
        the file, and all storages together too."""
        if not (isinstance(saved_id, tuple) and len(saved_id) >= 5 and saved_id[0] in ("storage", b"storage")):
            return  # torch itself refuses other ids
        storage_type, numel = saved_id[1], saved_id[4]
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise self.refuse(f"a storage of {numel!r} elements")
        dtype = getattr(storage_type, "dtype", torch.uint8)
        size = numel * (dtype.itemsize if isinstance(dtype, torch.dtype) else 1)
        self.storage_bytes += size
        if size > self.file_bytes or self.storage_bytes > self.file_bytes + self.SLACK:
            raise self.refuse(f"storages of {self.storage_bytes:,} bytes in a file of {self.file_bytes:,} bytes")

    def tensor(self, storage, offset, size, stride) -> None:
        """A tensor view (storage, offset, size, stride): plain non-negative sizes, no more elements
        than its storage holds past the offset (an expanded or overlapping view is refused), and all
        tensors together within twice the file."""
        dims = tuple(size) if isinstance(size, (tuple, list, torch.Size)) else None
        if dims is None or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
            raise self.refuse(f"a tensor of shape {size!r}")
        strides = tuple(stride) if isinstance(stride, (tuple, list, torch.Size)) else None
        if strides is None or len(strides) != len(dims) or not all(isinstance(s, int) and s >= 0 for s in strides):
            raise self.refuse(f"a tensor of shape {dims} with strides {stride!r}")
        numel = 1
        for d in dims:
            numel *= d
        if isinstance(storage, torch.storage.TypedStorage):
            item = storage.dtype.itemsize
            capacity = storage._untyped_storage.nbytes() // item  # (size() warns that TypedStorage is deprecated)
        elif isinstance(storage, torch.UntypedStorage):
            capacity, item = storage.nbytes(), 1
        else:
            raise self.refuse(f"a tensor over a {type(storage).__name__}, not a storage")
        if not isinstance(offset, int) or offset < 0 or numel > max(0, capacity - offset):
            raise self.refuse(
                f"a tensor of shape {dims} ({numel:,} elements) over a storage of {capacity:,} elements "
                f"at offset {offset!r}: an expanded (stride-0) or overlapping view"
            )
        self.tensor_bytes += numel * item
        if self.tensor_bytes > 2 * self.file_bytes + self.SLACK:
            raise self.refuse(f"tensors of {self.tensor_bytes:,} bytes in a file of {self.file_bytes:,} bytes")


_LOADS = threading.local()  # .budget: the LoadBudget of this thread's load under way


def _budget() -> LoadBudget:
    budget = getattr(_LOADS, "budget", None)
    if budget is None:
        raise UnsafeCheckpointError("a tensor rebuild outside a restricted load is refused")
    return budget


def _rebuild_tensor(storage, storage_offset, size, stride):
    """torch._utils._rebuild_tensor after the budget's check of the declared view."""
    import torch._utils

    _budget().tensor(storage, storage_offset, size, stride)
    return torch._utils._rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *args, **kwargs):
    """torch._utils._rebuild_tensor_v2 after the budget's check of the declared view."""
    import torch._utils

    _budget().tensor(storage, storage_offset, size, stride)
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, *args, **kwargs)


class _TensorType:
    """What find_class gives for torch.Tensor: usable as the type argument of a rebuild, never
    called (torch.Tensor(n) would allocate n elements a file names)."""

    def __new__(cls, *args, **kwargs):
        raise UnsafeCheckpointError(
            "the checkpoint calls torch.Tensor(...) (which allocates by a size from the file); refused"
        )


def _rebuild_from_type_v2(func, new_type, args, state):
    import torch._tensor

    if new_type is _TensorType:
        new_type = torch.Tensor
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


def _sized_constructor(kind: type):
    """bytes/bytearray as find_class hands them out: from a string, bytes or a list, never from a
    count (bytearray(3_000_000_000) would allocate what a 69-byte file asks)."""

    def construct(*args):
        if args and not isinstance(args[0], (str, bytes, bytearray, list, tuple)):
            raise UnsafeCheckpointError(
                f"the checkpoint calls {kind.__name__}({type(args[0]).__name__}): a constructor that "
                f"allocates by a size from the file; refused before anything was allocated"
            )
        return kind(*args)

    construct.__name__ = kind.__name__
    return construct


def _encode(obj, encoding="utf-8", errors="strict"):
    """_codecs.encode as protocol-2 pickles of bytes use it: a str to latin-1, nothing else (other
    codecs can expand their input many times over)."""
    import _codecs

    if not isinstance(obj, str) or str(encoding).lower().replace("-", "").replace("_", "") not in ("latin1",):
        raise UnsafeCheckpointError(f"the checkpoint calls _codecs.encode with {encoding!r}; only latin1 is read")
    return _codecs.encode(obj, encoding, errors)


class _NdarrayType:
    """What find_class gives for numpy.ndarray: the type argument of _reconstruct, never called."""

    def __new__(cls, *args, **kwargs):
        raise UnsafeCheckpointError("the checkpoint calls numpy.ndarray(...) (which allocates); refused")


class _CheckedArray(np.ndarray):
    """A numpy array rebuilt from a pickle: its state must hold plain data whose bytes match its
    shape (object arrays are refused: their state is a list numpy does not check)."""

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise UnsafeCheckpointError(f"a numpy array with an unreadable state {type(state).__name__}")
        _, shape, dtype, _, raw = state
        if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(raw, (bytes, bytearray)):
            raise UnsafeCheckpointError("a numpy array of objects (or without its raw data); refused")
        n = 1
        for d in shape:
            n *= int(d)
        if n * dtype.itemsize != len(raw):
            raise UnsafeCheckpointError(f"a numpy array of shape {tuple(shape)} over {len(raw)} bytes; refused")
        super().__setstate__(state)


def _reconstruct(subtype, shape, dtype):
    """numpy's _reconstruct as pickles use it: an empty ndarray that BUILD then fills (checked)."""
    if subtype not in (_NdarrayType, np.ndarray) or tuple(shape) != (0,):
        raise UnsafeCheckpointError(f"the checkpoint reconstructs a numpy {subtype!r} of shape {shape!r}; refused")
    return _CheckedArray((0,), dtype=np.dtype(dtype) if isinstance(dtype, (str, bytes)) else dtype)


def _load_from_bytes(data: bytes):
    """torch.storage._load_from_bytes for plain (non-torch.save) pickles of tensors, read restrictedly."""
    return restricted_torch_load(io.BytesIO(data), "an embedded storage")


_ALLOWED: dict | None = None


def _allowed_globals() -> dict[tuple[str, str], object]:
    """(module, name) -> what find_class hands out: rebuild functions that only make tensors, numpy
    arrays and plain containers, each checking what the file declares before it allocates; nothing
    that imports, evaluates, opens or runs, and no constructor that allocates by a count."""
    import torch._utils

    allowed: dict[tuple[str, str], object] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): collections.defaultdict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch._tensor", "Tensor"): _TensorType,
        ("torch", "Tensor"): _TensorType,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch.storage", "_load_from_bytes"): _load_from_bytes,
        ("_codecs", "encode"): _encode,  # protocol-2 pickles of bytes
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): _NdarrayType,
        ("numpy", "dtype"): np.dtype,
    }
    for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "slice"):
        allowed[("builtins", name)] = getattr(builtins, name)
    allowed[("builtins", "bytes")] = _sized_constructor(bytes)
    allowed[("builtins", "bytearray")] = _sized_constructor(bytearray)
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose find_class hands out only tensor/storage rebuild functions, plain
    containers, torch dtypes and devices, and inert stubs for classes under torch.optim; any
    other global raises UnsafeCheckpointError before it could be called. torch.load's
    UnpicklerWrapper subclasses it (`pickle_module=RESTRICTED_PICKLE`) and defers to this
    find_class for everything but the storage types, which it maps to plain dtype holders."""

    source = "the checkpoint"

    @property
    def persistent_load(self):
        return pickle.Unpickler.persistent_load.__get__(self)

    @persistent_load.setter
    def persistent_load(self, load):
        """torch.load sets its storage loader here: wrapped, so that a storage's declared size is
        checked against the file (LoadBudget) before torch allocates it."""

        def checked(saved_id):
            _budget().storage(saved_id)
            return load(saved_id)

        pickle.Unpickler.persistent_load.__set__(self, checked)

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
    pickles of tensors). Raises UnsafeCheckpointError for a forbidden global, or for sizes the file
    declares beyond what it holds (LoadBudget), before they are allocated."""
    data = f.read() if hasattr(f, "read") else Path(f).read_bytes()
    module = _module_like(source)
    outer = getattr(_LOADS, "budget", None) is None  # an embedded storage shares its file's budget
    if outer:
        _LOADS.budget = LoadBudget(source, len(data))
    try:
        if data[:4] != b"PK\x03\x04":
            first = module.load(io.BytesIO(data))  # a plain pickle, or a legacy torch file's magic number
            if not (isinstance(first, int) and first == _LEGACY_MAGIC):
                return first
        else:
            _check_zip_records(data, source)
        return torch.load(io.BytesIO(data), map_location="cpu", pickle_module=module, weights_only=False)
    finally:
        if outer:
            _LOADS.budget = None


def _check_zip_records(data: bytes, source: str) -> None:
    """torch.save stores its records uncompressed: a compressed one (which could inflate far beyond
    the file) is refused before torch reads it."""
    try:
        infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return  # torch gives its own error for a broken archive
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(data):
            raise UnsafeCheckpointError(
                f"{source} holds a compressed record {info.filename} ({info.file_size:,} bytes "
                f"unpacked in a file of {len(data):,}); torch.save writes none, so it is refused "
                f"before anything was unpacked"
            )


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
