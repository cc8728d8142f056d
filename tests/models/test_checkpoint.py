import json
import subprocess
import sys

import pytest
import torch

from dema_lab.models import CheckpointError, ModelConfig, build_model, load_checkpoint, save_checkpoint


def small(arch="dema", **kw):
    return ModelConfig(**{"arch": arch, "state_dim": 5, "act_dim": 2, "K": 4, "d_model": 16, "d_state": 4, **kw})


def test_round_trip_in_a_new_process(tmp_path):
    torch.manual_seed(0)
    model = build_model(small()).eval()
    path = save_checkpoint(
        tmp_path / "ck.safetensors", model, meta={"step": 7}, extra={"state_mean": torch.arange(5.0)}
    )
    x = dict(
        states=torch.ones(1, 4, 5),
        actions=torch.zeros(1, 4, 2),
        returns_to_go=torch.ones(1, 4, 1),
        timesteps=torch.arange(4)[None],
    )
    expected = model(**x)
    code = f"""
import json, torch
from dema_lab.models import load_checkpoint
ck = load_checkpoint({str(path)!r}, map_location='cpu')
x = dict(states=torch.ones(1, 4, 5), actions=torch.zeros(1, 4, 2), returns_to_go=torch.ones(1, 4, 1), timesteps=torch.arange(4)[None])
print(json.dumps(ck.model.eval()(**x).flatten().tolist()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == pytest.approx(expected.flatten().tolist(), abs=1e-7)
    ck = load_checkpoint(path)
    assert ck.meta == {"step": 7} and ck.extra["state_mean"].tolist() == [0, 1, 2, 3, 4]
    assert ck.config == model.cfg


def test_bad_checkpoints_get_clear_errors(tmp_path):
    model = build_model(small())
    good = save_checkpoint(tmp_path / "good.safetensors", model)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file"):
        load_checkpoint(tmp_path)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    pickle = tmp_path / "model.pt"
    torch.save(model.state_dict(), pickle)
    with pytest.raises(CheckpointError, match="not a readable safetensors checkpoint"):
        load_checkpoint(pickle)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a dema-lab checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="holds a 'dema' model, but a 'dt' model"):
        load_checkpoint(good, expect=small("dt"))
    with pytest.raises(CheckpointError, match="another config: K=4 \\(expected 8\\)"):
        load_checkpoint(good, expect=ModelConfig(arch="dema", state_dim=5, act_dim=2, K=8, d_model=16, d_state=4))
    # a dema-lab header whose version or metadata is garbled
    from safetensors.torch import load_file

    weights = load_file(str(good))
    header = {"format": "dema-lab-checkpoint", "arch": "dema", "model_config": json.dumps(model.cfg.to_dict())}
    for bad, message in (
        ({"version": "one", "meta": "{}"}, "unreadable format version 'one'"),
        ({"version": "1", "meta": "{step"}, "its metadata cannot be read"),
    ):
        path = tmp_path / "garbled.safetensors"
        save_file(weights, str(path), metadata={**header, **bad})
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path)


def test_save_is_atomic(tmp_path, monkeypatch):
    """A write that dies halfway leaves the previous checkpoint intact and no temp files behind."""
    from pathlib import Path

    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, build_model(small()))
    before = path.read_bytes()
    real_write = Path.write_bytes

    def dying_write(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", dying_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, build_model(small(K=9)))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.safetensors"]


def test_checkpoint_bytes_load_like_files():
    from dema_lab.models import checkpoint_bytes

    model = build_model(small("dt"))
    ck = load_checkpoint(checkpoint_bytes(model, meta={"step": 3}))
    assert ck.meta == {"step": 3} and ck.config.arch == "dt"
    with pytest.raises(CheckpointError, match="checkpoint bytes is not a readable"):
        load_checkpoint(b"garbage that is not safetensors")
