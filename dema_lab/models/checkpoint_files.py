"""Checkpoint files named by someone else (a dashboard visitor): what may be read, and how.

    roots = allowed_roots("store", ["/data/checkpoints"])      # the store and the server's --checkpoint-dir
    data = read_checkpoint_file(path, allowed=roots)           # bytes for models.load_checkpoint

The rules, in order:
  * the path is resolved (symlinks, `..`) and must lie under one of the allowed directories;
  * it must be a regular file, checked with stat before it is opened (a FIFO or a device is never
    opened), opened non-blocking without following a last symlink, and checked again with fstat;
  * its size is capped (1 GiB unless told otherwise);
  * the 8-byte safetensors header length is read first and refused when absurd, then the header,
    which must be a dema-lab checkpoint's: its tensor table consistent, every tensor a weight of the
    model its config describes (shape for shape) or an extra of at most state_dim values (the
    state normalization), all floating point
    (what the models' weights are; a file of bytes declared U8 would be widened to 4x its size);
    then only the tensor bytes that header declares.
A path outside the allowed directories and a missing file get the same message: the answers never
tell a visitor whether an arbitrary path exists.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from dema_lab.models.checkpoint import (
    CheckpointError,
    check_declared_shapes,
    header_config,
    read_header,
    tensor_index,
)

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB: the models trained here are a few MB
MAX_HEADER_BYTES = 16 << 20  # a dema-lab header is a few KB; safetensors itself allows 100 MB
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")  # the weights' (save_checkpoint writes the model's, F32)


class CheckpointAccessError(CheckpointError):
    """A checkpoint file that may not be read (outside the allowed directories, missing, not a
    regular file, too large)."""


def allowed_roots(store=None, dirs=()) -> list[Path]:
    """The directories checkpoint files may be read from: the store (when it is local) and `dirs`,
    resolved. A store given as a URL adds nothing."""
    roots = []
    for d in ([store] if store else []) + list(dirs or []):
        text = os.fspath(d)
        if "://" in text:
            continue
        root = Path(os.path.realpath(os.path.expanduser(text)))
        if root not in roots:
            roots.append(root)
    return roots


def _within(path: str, root: Path) -> bool:
    return os.path.commonpath([path, str(root)]) == str(root)


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def _named(e: Exception, name: str) -> str:
    """A message of models.checkpoint about "checkpoint bytes", about the file instead."""
    return str(e).replace("checkpoint bytes", name, 1)


def _read_exactly(fd: int, buf: memoryview, name: str) -> None:
    pos = 0
    while pos < len(buf):
        n = os.readv(fd, [buf[pos:]])
        if n == 0:
            raise CheckpointError(
                f"{name} ended after {pos} of the {len(buf)} bytes expected; it is truncated "
                f"or being written: try again once it is complete"
            )
        pos += n


def read_checkpoint_file(path, allowed: list[Path] | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> bytearray:
    """The bytes of a dema-lab checkpoint file (header and declared tensors), read by the rules
    above; `allowed` None means any directory. Raises CheckpointAccessError or CheckpointError
    with one line saying what is wrong."""
    text = os.fspath(path).strip()
    if not text:
        raise CheckpointAccessError("no checkpoint file given: type the path of a .safetensors file")
    roots = None if allowed is None else [Path(os.path.realpath(r)) for r in allowed]
    refused = CheckpointAccessError(
        f"{text} does not exist"
        if roots is None
        else f"{text} is not a checkpoint file this server may read: give an existing .safetensors file under "
        + (", ".join(str(r) for r in roots) or "a directory given to the server")
        + " (the store, or `dema-lab serve --checkpoint-dir DIR`)"
    )
    real = os.path.realpath(os.path.expanduser(text))  # symlinks and '..' resolved first
    if roots is not None and not any(_within(real, r) for r in roots):
        raise refused
    try:
        st = os.stat(real)
    except OSError:
        raise refused from None  # missing: the same answer as refused
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointAccessError(f"{text} is a directory, not a checkpoint file: give the .safetensors file in it")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointAccessError(
            f"{text} is not a regular file (a FIFO, device or socket): give a .safetensors checkpoint file"
        )
    if st.st_size > max_bytes:
        raise CheckpointAccessError(
            f"{text} is {_size(st.st_size)}, over the {_size(max_bytes)} limit for a "
            f"checkpoint file: give a dema-lab checkpoint (or raise the limit, "
            f"`dema-lab serve --max-checkpoint-mb`)"
        )
    flags = (
        os.O_RDONLY
        | os.O_NONBLOCK
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_CLOEXEC", 0)
        | getattr(os, "O_NOCTTY", 0)
    )
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise refused from None
    except OSError as e:
        raise CheckpointAccessError(f"{text} cannot be opened ({e.strerror}): check its permissions") from None
    try:
        fst = os.fstat(fd)  # what was opened is what was checked (no swap in between)
        if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise CheckpointAccessError(f"{text} changed while it was being opened: try again")
        if roots is not None and os.path.exists(f"/proc/self/fd/{fd}"):
            opened = os.path.realpath(f"/proc/self/fd/{fd}")
            if not any(_within(opened, r) for r in roots):
                raise refused
        if fst.st_size > max_bytes:
            raise CheckpointAccessError(
                f"{text} grew to {_size(fst.st_size)} while it was being opened, over "
                f"the {_size(max_bytes)} limit for a checkpoint file"
            )
        return _read_safetensors(fd, fst.st_size, text)
    finally:
        os.close(fd)


def load_checkpoint_file(
    path, allowed: list[Path] | None = None, max_bytes: int = DEFAULT_MAX_BYTES, map_location="cpu"
):
    """models.load_checkpoint of a file read by read_checkpoint_file's rules; messages name the file."""
    from dema_lab.models.checkpoint import load_checkpoint

    data = read_checkpoint_file(path, allowed, max_bytes)
    try:
        ck = load_checkpoint(data, map_location=map_location)
    except CheckpointError as e:
        raise type(e)(_named(e, os.fspath(path).strip())) from None
    ck.path = Path(os.fspath(path).strip())
    return ck


def _read_safetensors(fd: int, size: int, name: str) -> bytearray:
    """The header length, the header (a dema-lab checkpoint's?), then only the declared tensor bytes."""

    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(
            f"{name} is not a readable safetensors checkpoint ({why}); it may be truncated or "
            f"corrupt, or a file of another kind: give a checkpoint written by dema-lab"
        )

    if size < 8:
        raise corrupt(f"{size} bytes, shorter than a safetensors header")
    prefix = bytearray(8)
    _read_exactly(fd, memoryview(prefix), name)
    n = int.from_bytes(prefix, "little")
    if n == 0 or n > MAX_HEADER_BYTES or 8 + n > size:
        raise corrupt(
            f"its header claims {n} bytes, the file has {size}"
            if 8 + n > size
            else f"its header claims {n} bytes, over the {MAX_HEADER_BYTES} allowed"
            if n
            else "an empty header"
        )
    head = bytearray(8 + n)
    head[:8] = prefix
    _read_exactly(fd, memoryview(head)[8:], name)
    try:
        header = read_header(bytes(head))  # a dema-lab checkpoint's header, or its CheckpointError
    except CheckpointError as e:
        raise CheckpointError(_named(e, name)) from None
    try:
        entries = json.loads(bytes(head[8:]))
        end = max([int(v["data_offsets"][1]) for k, v in entries.items() if k != "__metadata__"], default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise corrupt(f"its tensor list cannot be read: {e}") from None
    if end < 0 or 8 + n + end > size:
        raise corrupt(f"it declares {8 + n + end} bytes of header and tensors, the file has {size}")
    check_tensors(header, tensor_index(_Header(head, size), name), name)  # before any data is read
    data = bytearray(8 + n + end)  # tensor_index checked that the ranges lie inside the file
    data[: 8 + n] = head
    del head
    _read_exactly(fd, memoryview(data)[8 + n :], name)
    return data


class _Header:
    """The header bytes of a safetensors file of `size` bytes, as tensor_index reads a file (its
    length, and slices of the header), so that the table is checked before the data is read."""

    def __init__(self, head: bytearray, size: int):
        self.head, self.size = head, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, where):
        return self.head[where]


def check_tensors(header: dict, index: dict, name: str) -> None:
    """CheckpointError (one line) unless the tensors a checkpoint's table declares (tensor_index)
    are the weights of the model its header's config describes, shape for shape, and extras (the
    state normalization: at most state_dim values each), all of a floating-point dtype. Reads no
    data."""
    config = header_config(header, name)
    for key, (dtype, shape) in index.items():
        kind, _, what = key.partition(".")
        if kind not in ("model", "extra"):
            raise CheckpointError(
                f"{name} holds a tensor {key!r} that a dema-lab checkpoint does not have; "
                f"give a checkpoint written by dema-lab"
            )
        if dtype not in FLOAT_DTYPES:
            raise CheckpointError(
                f"{name}: its tensor {key!r} is declared {dtype}, but a {config.arch!r} model's weights "
                f"are floating point ({', '.join(FLOAT_DTYPES)}); the file is corrupt or was not written by dema-lab"
            )
        numel = 1
        for d in shape:
            numel *= d
        if kind == "extra" and numel > config.state_dim:
            raise CheckpointError(
                f"{name}: its {what} has {numel} values, the model's state has {config.state_dim}; "
                f"the file is corrupt or its header was edited"
            )
    check_declared_shapes(config, index, name)  # every weight of the model, shape for shape
