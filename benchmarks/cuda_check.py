"""The one prepared check for a lent GPU. It finds out and reports three things:

1. whether dema-lab trains on `cuda` with the PyTorch scan (backend "torch": mamba-ssm is not on
   that machine): the paper-size DeMa (d_model 64, 3 layers, d_state 64, K 20, batch 64) for
   --steps steps on one fixed synthetic batch. It trains when every loss is finite and the last is
   well below the first; the first 5 losses are also compared with the same 5 steps on the CPU
   (numba kernels) from the same initial weights and batch.
2. whether a CUDA-trained checkpoint reopens on the CPU with the same actions: the trained model
   is saved (dema-lab's safetensors checkpoint), reloaded with map_location="cpu", and both act
   Transformer-like on the same 40 observations. float32 actions are compared (the two devices
   sum in different orders, so they agree to ~1e-6, not bitwise), and float64 copies of both, which
   must agree to ~1e-12.
3. the scan's forward and forward+backward time on CUDA (backend "torch", CUDA events) against the
   CPU kernel (numba) at (b 64, d_inner 128, d_state 64, L 60), on that machine's CPU, 2 threads
   and all its cores.

It imports only dema_lab.models / dema_lab.ssm (torch, numpy, numba, safetensors: all in the GPU
machine's image), so it runs from a bare copy of the repo, on the device machine's python3:

    python3 benchmarks/cuda_check.py --out "$OUT"            # on the GPU machine (~2 min)
    .venv/bin/python benchmarks/cuda_check.py --compare DIR   # here: the files that came back,
                                                              # acted again with this CPU build,
                                                              # and the "CUDA" section of RESULTS.md
    .venv/bin/python benchmarks/cuda_check.py --device cpu --steps 20 --out /tmp/x   # a dry run

Nothing here needs a GPU to import; with --device cuda and no CUDA it stops with a clear error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

BEGIN, END = "<!-- cuda_check: begin -->", "<!-- cuda_check: end -->"
CKPT, ACTIONS, REPORT = "cuda_ckpt.safetensors", "cuda_actions.json", "cuda_check.json"
OBS_STEPS = 40


def paper_config():
    from dema_lab.models import ModelConfig

    return ModelConfig(arch="dema", K=20, d_model=64, n_layer=3, d_state=64, expand=2, state_dim=11, act_dim=3)


def fixed_batch(cfg, batch=64, seed=0):
    """One synthetic training batch (states, actions, returns-to-go, timesteps) and its mask."""
    from benchmarks._common import make_batch

    return make_batch(cfg, batch, seed)


def loss_of(model, inputs, mask):
    pred = model(**inputs)
    m = mask[..., None]
    return (((pred - inputs["actions"]) ** 2) * m).sum() / (m.sum() * model.cfg.act_dim)


def train_steps(model, inputs, mask, steps, lr=1e-3):
    """`steps` AdamW steps on one batch; the losses, and seconds per step after the first 5."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    losses, times = [], []
    dev = next(model.parameters()).device
    for i in range(steps):
        t0 = time.perf_counter()
        loss = loss_of(model, inputs, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        losses.append(loss.item())  # synchronises with the device
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 5:
            times.append(time.perf_counter() - t0)
    return losses, (statistics.median(times) if times else float("nan"))


def observations(cfg, n=OBS_STEPS, seed=1):
    g = np.random.default_rng(seed)
    return g.standard_normal((n, cfg.state_dim)).astype(np.float32), g.uniform(0, 1, n).astype(np.float32)


def act_sequence(model, obs, rewards, target=3600.0):
    """Transformer-like actions of `model` on a fixed observation/reward sequence (n, act_dim)."""
    from dema_lab.models import Policy

    p = Policy(model, mode="transformer")
    p.reset(target)
    out = []
    for o, r in zip(obs, rewards):
        out.append(p.act(o))
        p.observe(float(r))
    return np.stack(out).astype(np.float64)


def time_scan(device, threads=None, repeat=20, b=64, d=128, n=64, L=60):
    """Median ms of the scan forward (no grad) and forward+backward at the benchmark size (b64, d_inner 128, n64, L60)."""
    from benchmarks._common import scan_inputs
    from dema_lab.ssm import selective_scan, use_backend

    backend = "torch" if device.type == "cuda" else "numba"
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    x, w = scan_inputs(b, d, n, L, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def once(grad):
        with use_backend(backend), torch.set_grad_enabled(grad):
            out = selective_scan(**x, delta_softplus=True)
            if grad:
                (out * w).sum().backward()

    res = {}
    try:
        for name, grad in (("fwd", False), ("fwd_bwd", True)):
            for _ in range(3):
                once(grad)
            sync()
            ts = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                once(grad)
                sync()
                ts.append(time.perf_counter() - t0)
            res[name] = 1e3 * statistics.median(ts)
    finally:
        torch.set_num_threads(saved)
    res["backend"] = backend
    return res


def check(device_name: str, steps: int, out: Path, repeat: int = 20) -> dict:
    from dema_lab.models import build_model, load_checkpoint, save_checkpoint
    from dema_lab.ssm import backend_for, mamba_ssm_available

    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device_name}: CUDA is not available on this machine; run it where a GPU is lent")
    device = torch.device(device_name)
    out.mkdir(parents=True, exist_ok=True)
    rep: dict = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "mamba_ssm": mamba_ssm_available(),
        "scan_backend": backend_for(device),
    }
    cfg = paper_config()
    inputs, mask = fixed_batch(cfg)

    # 1. training on the device, and its first 5 steps against the CPU's from the same start
    torch.manual_seed(0)
    init = build_model(cfg).train()
    model = build_model(cfg).train()
    model.load_state_dict(init.state_dict())
    model = model.to(device)
    dev_inputs = {k: v.to(device) for k, v in inputs.items()}
    t0 = time.perf_counter()
    losses, step_s = train_steps(model, dev_inputs, mask.to(device), steps)
    rep["train"] = {
        "steps": steps,
        "seconds": time.perf_counter() - t0,
        "step_ms": 1e3 * step_s,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "finite": bool(np.isfinite(losses).all()),
        "first5_device": losses[:5],
    }
    cpu_model = build_model(cfg).train()
    cpu_model.load_state_dict(init.state_dict())
    cpu_losses, _ = train_steps(cpu_model, inputs, mask, 5)
    rep["train"]["first5_cpu"] = cpu_losses
    rep["train"]["first5_max_rel_diff"] = max(abs(a - b) / abs(b) for a, b in zip(losses[:5], cpu_losses))
    rep["train"]["trains"] = rep["train"]["finite"] and losses[-1] < 0.5 * losses[0]

    # 2. the trained checkpoint, reopened on the CPU, acting on the same observations
    model.eval()
    path = save_checkpoint(out / CKPT, model, meta={"trained_on": device_name, "steps": steps})
    cpu = load_checkpoint(path, map_location="cpu").model
    obs, rewards = observations(cfg)
    a_dev = act_sequence(model, obs, rewards)
    a_cpu = act_sequence(cpu, obs, rewards)
    a_dev64 = act_sequence(model.double(), obs, rewards)
    a_cpu64 = act_sequence(cpu.double(), obs, rewards)
    model.float()
    rep["actions"] = {
        "steps": len(obs),
        "float32_max_abs_diff": float(np.abs(a_dev - a_cpu).max()),
        "float64_max_abs_diff": float(np.abs(a_dev64 - a_cpu64).max()),
        "max_abs_action": float(np.abs(a_dev).max()),
    }
    (out / ACTIONS).write_text(
        json.dumps(
            {"obs": obs.tolist(), "rewards": rewards.tolist(), "float32": a_dev.tolist(), "float64": a_dev64.tolist()}
        )
    )

    # 3. the scan on the device against the CPU kernel
    cpu_dev = torch.device("cpu")
    rep["scan"] = {"device": time_scan(device, repeat=repeat), "cpu_2_threads": time_scan(cpu_dev, 2, repeat)}
    if (os.cpu_count() or 1) > 2:
        rep["scan"]["cpu_all_cores"] = time_scan(cpu_dev, os.cpu_count(), repeat)
    (out / REPORT).write_text(json.dumps(rep, indent=1))
    return rep


def compare_here(folder: Path) -> dict:
    """The checkpoint and actions that came back, acted again by this machine's CPU build."""
    from dema_lab.models import load_checkpoint

    rep = json.loads((folder / REPORT).read_text())
    rec = json.loads((folder / ACTIONS).read_text())
    model = load_checkpoint(folder / CKPT, map_location="cpu").model
    obs, rewards = np.asarray(rec["obs"], np.float32), np.asarray(rec["rewards"], np.float32)
    a32 = act_sequence(model, obs, rewards)
    a64 = act_sequence(model.double(), obs, rewards)
    rep["here"] = {
        "torch": torch.__version__,
        "float32_max_abs_diff": float(np.abs(a32 - np.asarray(rec["float32"])).max()),
        "float64_max_abs_diff": float(np.abs(a64 - np.asarray(rec["float64"])).max()),
    }
    return rep


def section(rep: dict) -> str:
    tr, ac, sc = rep["train"], rep["actions"], rep["scan"]
    dev = sc["device"]
    lines = [
        BEGIN,
        "## CUDA",
        "",
        f"Measured {rep['date']} on {rep['gpu'] or rep['device']} ({rep['cpu_cores']} CPU cores), torch {rep['torch']}, "
        f"by `python3 benchmarks/cuda_check.py` (mamba_ssm importable: {rep['mamba_ssm']}; scan backend on the "
        f"device: `{rep['scan_backend']}`).",
        "",
        "| question | finding | |",
        "|---|---|---|",
        f"| trains on `{rep['device']}` with the `{rep['scan_backend']}` scan? | {tr['steps']} steps of the paper-size DeMa on one batch: loss "
        f"{tr['loss_first']:.4f} -> {tr['loss_last']:.4f}, {tr['step_ms']:.1f} ms a step; first 5 losses within "
        f"{tr['first5_max_rel_diff']:.1e} (relative) of the same steps on the CPU | **{'yes' if tr['trains'] else 'no'}** |",
        f"| a CUDA-trained checkpoint reopens on the CPU with the same actions? | {ac['steps']} Transformer-like actions "
        f"(largest magnitude {ac['max_abs_action']:.2f}): float32 max difference {ac['float32_max_abs_diff']:.1e}, float64 "
        f"{ac['float64_max_abs_diff']:.1e} | **{'yes' if ac['float64_max_abs_diff'] < 1e-9 else 'no'}** |",
    ]
    if "here" in rep:
        h = rep["here"]
        lines.append(
            f"| the same checkpoint on this machine's CPU build (torch {h['torch']}) | float32 max difference "
            f"{h['float32_max_abs_diff']:.1e}, float64 {h['float64_max_abs_diff']:.1e} from the device's actions "
            f"| **{'yes' if h['float64_max_abs_diff'] < 1e-9 else 'no'}** |"
        )
    for key, label in (("cpu_2_threads", "CPU kernel, 2 threads"), ("cpu_all_cores", "CPU kernel, all cores")):
        if key in sc:
            c = sc[key]
            lines.append(
                f"| scan (b64, d_inner 128, n64, L60), `{dev['backend']}` on the device against the {label} "
                f"| fwd {dev['fwd']:.2f} vs {c['fwd']:.2f} ms ({c['fwd'] / dev['fwd']:.1f}x), fwd+bwd {dev['fwd_bwd']:.2f} vs "
                f"{c['fwd_bwd']:.2f} ms ({c['fwd_bwd'] / dev['fwd_bwd']:.1f}x) | |"
            )
    lines += ["", END]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run)")
    p.add_argument("--steps", type=int, default=300, help="training steps on the device")
    p.add_argument("--out", default=os.environ.get("OUT", "cuda-check"), help="folder for the report and checkpoint")
    p.add_argument("--compare", default=None, help="a folder that came back: act again here, write RESULTS.md")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--no-write", action="store_true", help="with --compare: print the section only")
    args = p.parse_args(argv)
    from benchmarks.report import write_section

    if args.compare:
        rep = compare_here(Path(args.compare))
        text = section(rep)
        print(text)
        if not args.no_write:
            write_section(text, Path(args.results), BEGIN, END)
            print(f"wrote the section into {args.results}")
        return 0
    rep = check(args.device, args.steps, Path(args.out))
    print(section(rep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
