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

from .config import ModelConfig

FORMAT = "dema-lab-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, foreign, or for another model."""


@dataclass
class Checkpoint:
    model: torch.nn.Module
    config: ModelConfig
    meta: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)   # name -> tensor
    path: Path | None = None


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
    header = {"format": FORMAT, "version": str(VERSION), "arch": model.cfg.arch,
              "model_config": json.dumps(model.cfg.to_dict()), "meta": json.dumps(meta or {})}
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
        data, name = path.read_bytes(), str(path)
    try:
        # safetensors layout: u64 little-endian header size, then a JSON header
        n = int.from_bytes(data[:8], "little")
        if len(data) < 8 or n <= 0 or 8 + n > len(data):
            raise ValueError("bad header size")
        header = json.loads(data[8:8 + n]).get("__metadata__") or {}
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{name} is not a readable safetensors checkpoint ({e}); it may be "
                              f"truncated or corrupt, or a file of another kind (e.g. a torch .pt "
                              f"pickle): re-save it with dema_lab.models.save_checkpoint") from None
    return header, name


def read_header(source) -> dict:
    """The checkpoint's metadata header, validated; raises CheckpointError with what is wrong."""
    header, name = _header_of(source)
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{name} is a safetensors file but not a dema-lab checkpoint (its header "
                              f"has format={header.get('format')!r}); load its weights yourself and "
                              f"save them with dema_lab.models.save_checkpoint")
    try:
        version = int(header.get("version", 0))
    except (TypeError, ValueError):
        raise CheckpointError(f"{name}: its header has an unreadable format version "
                              f"{header.get('version')!r}; the file is corrupt") from None
    if version > VERSION:
        raise CheckpointError(f"{name} was written by a newer dema-lab (format version "
                              f"{header['version']} > {VERSION}); upgrade dema-lab to read it")
    return header


def load_checkpoint(source, map_location="cpu", expect: ModelConfig | None = None) -> Checkpoint:
    """Rebuild the model from a checkpoint (a path, or bytes from the run store) on
    `map_location`. With `expect`, also check that it has that architecture and config."""
    from safetensors.torch import load

    from . import build_model

    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    path = None if is_bytes else Path(source)
    header, name = read_header(source), ("checkpoint bytes" if is_bytes else str(path))
    try:
        config = ModelConfig.from_dict(json.loads(header["model_config"]))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{name}: its model config cannot be read ({e})") from None
    if expect is not None:
        if expect.arch != config.arch:
            raise CheckpointError(f"{name} holds a {config.arch!r} model, but a {expect.arch!r} model "
                                  f"was expected")
        diff = {k: (v, expect.to_dict()[k]) for k, v in config.to_dict().items() if expect.to_dict()[k] != v}
        if diff:
            raise CheckpointError(f"{name} was trained with another config: "
                                  + ", ".join(f"{k}={a!r} (expected {b!r})" for k, (a, b) in diff.items()))
    device = torch.device(map_location)
    try:
        tensors = load(bytes(source) if is_bytes else path.read_bytes())
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{name}: its tensors cannot be read ({e}); the file is corrupt") from None
    tensors = {k: v.to(device) for k, v in tensors.items()}
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    extra = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    try:
        meta = json.loads(header.get("meta", "{}"))
    except ValueError as e:
        raise CheckpointError(f"{name}: its metadata cannot be read ({e}); the file is corrupt") from None
    model = build_model(config).to(device)
    load_weights(model, weights, source=name)
    return Checkpoint(model=model, config=config, meta=meta, extra=extra, path=path)


def load_weights(model, state_dict, source="state dict") -> None:
    """load_state_dict(strict=True) with one readable error listing every mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state_dict)) if own[k].shape != state_dict[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weights (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weights (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append("shape mismatches: " + "; ".join(shapes[:3]))
        raise CheckpointError(f"{source} does not fit a {model.cfg.arch!r} model with this config: "
                              + "; ".join(parts) + ". It was written for another architecture or config.")
    model.load_state_dict(state_dict, strict=True)
