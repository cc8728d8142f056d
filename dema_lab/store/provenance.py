"""A run's provenance attribute: where its data, code, machine and model come from. One builder,
used by the trainer for the runs it creates and by `dema-lab import` for imported checkpoints."""

from __future__ import annotations

import platform
import socket
import subprocess
from pathlib import Path

import torch

from dema_lab import __version__
from dema_lab.models import carried_state_bytes, count_parameters, forward_macs, step_macs
from dema_lab.ssm import backend_for


def git_commit() -> str:
    """The short commit of dema-lab's checkout, or '' outside a git checkout."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance(dataset, env: str, model, modes, targets, device="cpu", **extra) -> dict:
    """The provenance of a run of `model` (built from its `cfg`) on `dataset` (a loaded dataset),
    evaluated in `env` with inference `modes` and return `targets`, on `device`: the dataset and
    its attributes, the code, the machine, the model's config, size and cost. `extra` keys (an
    import's source file, say) are added."""
    cfg = model.cfg
    return {
        **extra,
        "dataset": dataset.name,
        "dataset_source": str(dataset.source or ""),
        "dataset_attrs": {k: v for k, v in dataset.attrs.items() if isinstance(v, (str, int, float, bool))},
        "env": env,
        "episodes": len(dataset),
        "transitions": dataset.num_transitions,
        "code_version": __version__,
        "git_commit": git_commit(),
        "device": str(device),
        "backend": backend_for(torch.device(device))
        if cfg.arch == "dema"
        else {"dt": "attention"}.get(cfg.arch, f"torch {cfg.arch}"),
        "torch": torch.__version__,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "model_config": cfg.to_dict(),
        "timestep_embedding": cfg.timestep_embedding,
        "parameters": count_parameters(model),
        "forward_macs": forward_macs(cfg),
        "step_macs": {m: step_macs(cfg, m) for m in modes},
        "carried_state_bytes": {m: carried_state_bytes(cfg, m) for m in modes},
        "eval_targets": [float(t) for t in targets],
        "eval_modes": list(modes),
    }
