"""A checkpoint file named by a visitor (/live's file field) is checked from its header before its
tensors are read: every tensor a floating-point weight of the model its config describes, shape
for shape, or a small extra. A file of bytes declared U8 would otherwise be read whole and widened
into a float model 4x its size, on every Start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from dema_lab.models import CheckpointError, ModelConfig, build_model, save_checkpoint
from dema_lab.models.checkpoint import read_header
from dema_lab.models.checkpoint_files import read_checkpoint_file

CONFIG = dict(state_dim=11, act_dim=3, K=3, d_model=16, n_layer=1, d_state=4)


def model(**changes):
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**CONFIG, **changes}))


def normalization(n: int = 11) -> dict:
    return {"extra.state_mean": torch.zeros(n), "extra.state_std": torch.ones(n)}


def write(path: Path, tensors: dict, header_of=None) -> Path:
    """A safetensors file of `tensors` with the dema-lab header of `header_of`'s model (default: CONFIG's)."""
    reference = save_checkpoint(path.with_suffix(".ref.safetensors"), header_of or model(), meta={"rtg_scale": 1.0})
    path.write_bytes(save(tensors, metadata=read_header(reference)))
    return path


def weights(m) -> dict:
    return {f"model.{k}": v.detach().clone().contiguous() for k, v in m.state_dict().items()}


@pytest.fixture
def bytes_read(monkeypatch):
    """How many bytes read_checkpoint_file reads (it reads with os.readv)."""
    count = [0]
    readv = os.readv

    def counting(fd, buffers):
        n = readv(fd, buffers)
        count[0] += n
        return n

    monkeypatch.setattr(os, "readv", counting)
    return count


def refusal(path: Path) -> str:
    with pytest.raises(CheckpointError) as e:
        read_checkpoint_file(path, [path.parent])
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_weights_declared_u8_are_refused_from_the_header(tmp_path, bytes_read):
    # a large model's weights as bytes: the shapes match its config, the dtype does not
    big = model(d_model=512, n_layer=2)
    tensors = {k: torch.zeros(v.shape, dtype=torch.uint8) for k, v in weights(big).items()}
    path = write(tmp_path / "u8.safetensors", {**tensors, **normalization()}, header_of=big)
    size = path.stat().st_size
    assert size > 3_000_000
    msg = refusal(path)
    assert "is declared U8" in msg and "floating point" in msg, msg
    assert bytes_read[0] < 100_000 < size  # the header only


@pytest.mark.parametrize("dtype", ["I64", "BOOL", "I32"])
def test_integer_weights_are_refused(tmp_path, dtype):
    torch_dtype = {"I64": torch.int64, "BOOL": torch.bool, "I32": torch.int32}[dtype]
    tensors = {k: torch.zeros(v.shape, dtype=torch_dtype) for k, v in weights(model()).items()}
    msg = refusal(write(tmp_path / "int.safetensors", {**tensors, **normalization()}))
    assert f"is declared {dtype}" in msg, msg


def test_weights_of_another_config_are_refused_before_reading(tmp_path, bytes_read):
    # the header says d_model 16; the tensors are a d_model 64 model's
    path = write(tmp_path / "other.safetensors", {**weights(model(d_model=64)), **normalization()})
    msg = refusal(path)
    assert "do not match" in msg and "shape mismatches" in msg, msg
    assert bytes_read[0] < path.stat().st_size // 2


def test_missing_weights_foreign_tensors_and_oversized_extras_are_refused(tmp_path):
    w = weights(model())
    missing = dict(list(w.items())[1:])
    assert "weights missing" in refusal(write(tmp_path / "missing.safetensors", {**missing, **normalization()}))
    junk = {**w, **normalization(), "junk.blob": torch.zeros(10)}
    assert "'junk.blob'" in refusal(write(tmp_path / "junk.safetensors", junk))
    huge = {**w, **normalization(), "extra.padding": torch.zeros(1000)}
    msg = refusal(write(tmp_path / "huge.safetensors", huge))
    assert "its padding has 1000 values, the model's state has 11" in msg, msg


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_float_checkpoints_are_read_whole(tmp_path, dtype):
    m = model().to(dtype)
    path = save_checkpoint(tmp_path / "ck.safetensors", m, meta={"rtg_scale": 1.0}, extra=normalization_extra())
    assert bytes(read_checkpoint_file(path, [tmp_path])) == path.read_bytes()


def normalization_extra() -> dict:
    return {k.split(".", 1)[1]: v for k, v in normalization().items()}
