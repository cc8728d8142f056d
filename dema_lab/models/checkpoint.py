"""Checkpoints: one safetensors file with the model config, the weights and run metadata.

Loading never executes code (safetensors holds tensors and a str->str header only), and works
on any device: a checkpoint trained on CUDA loads on CPU and the other way round.

    header metadata: format="dema-lab-checkpoint", version, arch, model_config (JSON), meta (JSON)
    tensors:         "model.<name>" weights, "extra.<name>" extra arrays (e.g. state_mean)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dema_lab.models.build import build_model
from dema_lab.models.config import ModelConfig
from dema_lab.models.cost import memory_problem, parameter_bytes

FORMAT = "dema-lab-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, foreign, or for another model."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, weights loaded), its ModelConfig, the metadata
    written with it (arch, dataset, env, step, rtg_scale...), extra tensors (state_mean,
    state_std) and the file it came from, if any."""

    model: torch.nn.Module
    config: ModelConfig
    meta: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # name -> tensor
    path: Path | None = None

    def state_normalization(self):
        """(state_mean, state_std) as numpy arrays, what a Policy needs to act; CheckpointError
        naming what is missing for a checkpoint saved without them."""
        missing = [k for k in ("state_mean", "state_std") if k not in self.extra]
        if missing:
            name = self.path or "this checkpoint"
            raise CheckpointError(
                f"{name} has no {' and '.join(missing)} (the dataset's state normalization) "
                f"that acting needs: save it with extra=dict(state_mean=..., state_std=...) "
                f"or import it with `dema-lab import FILE --dataset NAME --out FILE.safetensors`"
            )
        return self.extra["state_mean"].cpu().numpy(), self.extra["state_std"].cpu().numpy()


def atomic_write(path, write) -> None:
    """Call write(tmp_path), then move tmp_path onto path: readers see the old or new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_bytes(model, meta: dict | None = None, extra: dict | None = None) -> bytes:
    """The checkpoint as bytes (what save_checkpoint writes; the run store keeps these)."""
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for k, v in (extra or {}).items():
        tensors[f"extra.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    header = {
        "format": FORMAT,
        "version": str(VERSION),
        "arch": model.cfg.arch,
        "model_config": json.dumps(model.cfg.to_dict()),
        "meta": json.dumps(meta or {}),
    }
    return save(tensors, metadata=header)


def save_checkpoint(path, model, meta: dict | None = None, extra: dict | None = None) -> Path:
    data = checkpoint_bytes(model, meta, extra)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return Path(path)


def _header_of(source) -> tuple[dict, str]:
    """(metadata header, a name for messages) of a checkpoint path or bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), "checkpoint bytes"
    else:
        path = Path(source)
        if not path.exists():
            raise CheckpointError(f"checkpoint {path} does not exist")
        if not path.is_file():
            raise CheckpointError(
                f"checkpoint {path} is a {'directory' if path.is_dir() else 'special file'}, not a "
                f"checkpoint file: give the .safetensors file itself (for a run in a store, "
                f"use its run id)"
            )
        data, name = path.read_bytes(), str(path)
    try:
        # safetensors layout: u64 little-endian header size, then a JSON header
        n = int.from_bytes(data[:8], "little")
        if len(data) < 8 or n <= 0 or 8 + n > len(data):
            raise ValueError("bad header size")
        header = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(
            f"{name} is not a readable safetensors checkpoint ({e}); it may be "
            f"truncated or corrupt, or a file of another kind (e.g. a torch .pt "
            f"pickle): re-save it with dema_lab.models.save_checkpoint"
        ) from None
    return header, name


def read_header(source) -> dict:
    """The checkpoint's metadata header, validated; raises CheckpointError with what is wrong."""
    header, name = _header_of(source)
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{name} is a safetensors file but not a dema-lab checkpoint (its header "
            f"has format={header.get('format')!r}); load its weights yourself and "
            f"save them with dema_lab.models.save_checkpoint"
        )
    try:
        version = int(header.get("version", 0))
    except (TypeError, ValueError):
        raise CheckpointError(
            f"{name}: its header has an unreadable format version {header.get('version')!r}; the file is corrupt"
        ) from None
    if version > VERSION:
        raise CheckpointError(
            f"{name} was written by a newer dema-lab (format version "
            f"{header['version']} > {VERSION}); upgrade dema-lab to read it"
        )
    return header


def load_checkpoint(source, map_location="cpu", expect: ModelConfig | None = None) -> Checkpoint:
    """Rebuild the model from a checkpoint (a path, or bytes from the run store) on
    `map_location`. With `expect`, also check that it has that architecture and config."""
    from safetensors.torch import load

    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    path = None if is_bytes else Path(source)
    header, name = read_header(source), ("checkpoint bytes" if is_bytes else str(path))
    config = header_config(header, name)
    if expect is not None:
        if expect.arch != config.arch:
            raise CheckpointError(f"{name} holds a {config.arch!r} model, but a {expect.arch!r} model was expected")
        diff = {k: (v, expect.to_dict()[k]) for k, v in config.to_dict().items() if expect.to_dict()[k] != v}
        if diff:
            raise CheckpointError(
                f"{name} was trained with another config: "
                + ", ".join(f"{k}={a!r} (expected {b!r})" for k, (a, b) in diff.items())
            )
    device = torch.device(map_location)
    data = bytes(source) if is_bytes else path.read_bytes()
    check_declared_shapes(config, tensor_index(data, name), name)  # before any tensor or module exists
    too_big = memory_problem(config, copies=2, what=f"{name}: loading its model")  # its tensors and the model
    if too_big:
        raise CheckpointError(too_big)
    try:
        tensors = load(data)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{name}: its tensors cannot be read ({e}); the file is corrupt") from None
    tensors = {k: v.to(device) for k, v in tensors.items()}
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    extra = {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
    try:
        meta = json.loads(header.get("meta", "{}"))
    except ValueError as e:
        raise CheckpointError(f"{name}: its metadata cannot be read ({e}); the file is corrupt") from None
    model = build_model(config).to(device)
    load_weights(model, weights, source=name)
    return Checkpoint(model=model, config=config, meta=meta, extra=extra, path=path)


# bytes per element of the safetensors dtypes
_DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
}


def header_config(header: dict, name: str = "checkpoint") -> ModelConfig:
    """The ModelConfig a checkpoint header holds, validated as training validates it (its bounds
    included: ModelConfig is the one definition), so what trains always loads and a header that
    claims more fails by name; CheckpointError with ModelConfig's own message."""
    try:
        raw = json.loads(header["model_config"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{name}: its model config cannot be read ({e}); the file is corrupt") from None
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"{name}: its model config is a {type(raw).__name__}, not a JSON object; the file is corrupt"
        )
    try:
        return ModelConfig.from_dict(raw)
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{name}: {e}; this dema-lab cannot build that model (the header is corrupt or was not written by dema-lab)"
        ) from None


def tensor_index(data: bytes, name: str = "checkpoint") -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} as a safetensors file's JSON header declares them, checked
    against the file: known dtypes, byte ranges that lie inside the data, do not overlap and match
    dtype x shape. Reads the header only; CheckpointError with what is wrong."""

    def bad(why):
        return CheckpointError(f"{name}: its tensor table is inconsistent ({why}); the file is truncated or corrupt")

    try:
        n = int.from_bytes(data[:8], "little")
        if len(data) < 8 or n <= 0 or 8 + n > len(data):
            raise ValueError("bad header size")
        table = json.loads(bytes(data[8 : 8 + n]))
        if not isinstance(table, dict):
            raise ValueError("the header is not a JSON object")
    except ValueError as e:
        raise bad(e) from None
    size = len(data) - 8 - n
    index, ranges = {}, []
    for key, entry in table.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise bad(f"{key}: not a tensor entry")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _DTYPE_SIZES:
            raise bad(f"{key}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise bad(f"{key}: shape {shape!r} is not a list of sizes")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= size
        ):
            raise bad(f"{key}: byte range {offsets!r} lies outside the {size} data bytes")
        numel = 1
        for d in shape:
            numel *= d
        if offsets[1] - offsets[0] != numel * _DTYPE_SIZES[dtype]:
            raise bad(
                f"{key}: shape {shape} of {dtype} needs {numel * _DTYPE_SIZES[dtype]} bytes, "
                f"its range holds {offsets[1] - offsets[0]}"
            )
        index[key] = (dtype, tuple(shape))
        ranges.append((offsets[0], offsets[1], key))
    ranges.sort()
    for (_, end, a), (start, _, b) in zip(ranges, ranges[1:]):
        if start < end:
            raise bad(f"{a} and {b} overlap")
    return index


SMALL_MODEL_BYTES = 256 * 2**20  # below this estimate a model is built on the CPU to read its shapes


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{"model.<name>": shape} of the model `config` builds. A model whose weights are estimated
    (models.cost.parameter_bytes) to be small is built on the CPU, with
    the global RNG left as it was; a larger one on the meta device (shapes only, no memory), which
    costs a few seconds the first time in a process (torch imports its compiler stack there)."""
    if parameter_bytes(config) <= SMALL_MODEL_BYTES:
        with torch.random.fork_rng(devices=[]):
            model = build_model(config)
    else:
        with torch.device("meta"):
            model = build_model(config)
    return {f"model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}


def shape_mismatches(have: dict, want: dict, against: str = "model") -> list[str]:
    """What differs between two {name: shape} maps, worst first, three examples each:
    weights missing from `have`, weights `have` has too many, and shapes (have vs `against`)."""
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    shapes = [
        f"{k}: {tuple(have[k])} vs {against} {tuple(want[k])}"
        for k in sorted(set(want) & set(have))
        if tuple(have[k]) != tuple(want[k])
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        parts.append("shape mismatches: " + "; ".join(shapes[:3]))
    return parts


def check_declared_shapes(config: ModelConfig, index: dict, name: str = "checkpoint") -> None:
    """CheckpointError unless the weights a file declares (tensor_index) are exactly those of the
    model its config describes, shape for shape."""
    want = {k[6:]: shape for k, shape in expected_shapes(config).items()}
    have = {k[6:]: shape for k, (_, shape) in index.items() if k.startswith("model.")}
    parts = shape_mismatches(have, want, against="config")
    if parts:
        raise CheckpointError(
            f"{name}: its tensors do not match the {config.arch!r} model its header describes ("
            + "; ".join(parts)
            + "); the file is corrupt or its header was edited"
        )


def load_weights(model, state_dict, source="state dict") -> None:
    """load_state_dict(strict=True) with one readable error listing every mismatch."""
    parts = shape_mismatches(
        {k: v.shape for k, v in state_dict.items()}, {k: v.shape for k, v in model.state_dict().items()}
    )
    if parts:
        raise CheckpointError(
            f"{source} does not fit a {model.cfg.arch!r} model with this config: "
            + "; ".join(parts)
            + ". It was written for another architecture or config."
        )
    model.load_state_dict(state_dict, strict=True)
