"""Per-step latency at batch 1 of an exported policy under onnxruntime against dema-lab's own Policy,
both inference modes, at the demo size and at the paper size (the official preset), measured in one
process and interleaved; writes its section of benchmarks/RESULTS.md.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_export.py [--steps 200] [--repeat 5] [--no-write]

Both sides act on one thread (dema-lab's evaluation acts single-threaded, the example runner sets
onnxruntime to one thread) and include their own window building and normalisation per step.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dema_lab.evaluation.rollout import single_threaded
from dema_lab.integrations.policy_export import export_policy
from dema_lab.models import ModelConfig, build_model
from dema_lab.models.checkpoint import Checkpoint
from dema_lab.models.policy import Policy

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "run_onnx_policy.py"
BEGIN, END = "<!-- bench_export: begin -->", "<!-- bench_export: end -->"
MODE_NAMES = {"transformer": "Transformer-like", "rnn": "RNN-like"}
NOTE = (
    "RNN-like, the exported step is several times faster than `Policy.act`, which pays Python and a "
    "module call per token and layer. Transformer-like, the graph's scan is the chunked form "
    "(`selective_scan_chunked`: about sqrt(L) chunks, two short loops of whole-tensor ops, exact to "
    'float rounding) where dema-lab runs the fused numba kernel; the row "per-token scan (before)" '
    "is the same graph traced with the reference loop, unrolled into thousands of small nodes, as "
    "export-policy wrote it before."
)
SIZES = {
    "demo (d64, 3L, n16, K10, RSA)": dict(d_model=64, n_layer=3, d_state=16, K=10),
    "paper (official preset: d64, embed 128, 3L, n64, K20, RAS, left-padded)": dict(
        d_model=64,
        n_layer=3,
        d_state=64,
        K=20,
        embed_dim=128,
        token_order="RAS",
        embed_norm="none",
        window_padding="left",
    ),
}


def runner_class():
    spec = importlib.util.spec_from_file_location("run_onnx_policy", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.OnnxPolicy


def per_step(policy, obs) -> float:
    """Seconds per act() over an episode of `obs` (median over the steps after the first K)."""
    policy.reset(3600.0)
    times = []
    for o in obs:
        start = time.perf_counter()
        policy.act(o)
        times.append(time.perf_counter() - start)
        policy.observe(1.0)
    return statistics.median(times[25:])


def measure(steps: int, repeat: int) -> list[tuple[str, str, float, float]]:
    """(size, mode, Policy seconds, onnxruntime seconds) per step, medians of interleaved repeats; the
    Transformer-like graph also as traced with the per-token reference scan, to show what the chunked
    scan gains."""
    OnnxPolicy, folder = runner_class(), Path(tempfile.mkdtemp())
    obs = np.random.default_rng(0).normal(size=(steps, 11)).astype(np.float32)
    rows = []
    with single_threaded():
        for label, size in SIZES.items():
            torch.manual_seed(0)
            model = build_model(ModelConfig(state_dim=11, act_dim=3, **size)).eval()
            ck = Checkpoint(model, model.cfg, {"env": "hopper", "rtg_scale": 1000.0, "step": 0})
            ck.extra = {"state_mean": torch.zeros(11), "state_std": torch.ones(11)}
            for mode, scan in (("transformer", "chunked"), ("transformer", "reference"), ("rnn", "chunked")):
                path, _ = export_policy(ck, mode, "onnx", folder / f"{mode}-{scan}.onnx", scan=scan)
                ours, theirs = Policy(model, mode), OnnxPolicy(path)
                a, b = [], []
                for _ in range(repeat):  # interleaved
                    a.append(per_step(ours, obs))
                    b.append(per_step(theirs, obs))
                name = MODE_NAMES[mode] + (", per-token scan (before)" if scan == "reference" else "")
                rows.append((label, name, statistics.median(a), statistics.median(b)))
    return rows


def section(rows, steps: int, repeat: int, load: tuple[float, float]) -> str:
    import onnxruntime

    lines = [
        BEGIN,
        "## Exported policies: onnxruntime against dema-lab's Policy (batch 1, per env step)",
        "",
        f"Measured {datetime.date.today()} by `benchmarks/bench_export.py --steps {steps} --repeat {repeat}` "
        f"(not part of `run_all.py`); torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"{os.cpu_count()} CPUs, both sides on one thread, interleaved in one process; medians over "
        f"{steps - 25} steps x {repeat} repeats; load average {load[0]:.1f} -> {load[1]:.1f}. Each side "
        "includes its own window building and normalisation (the ONNX side is "
        "`examples/run_onnx_policy.py`'s `OnnxPolicy`).",
        "",
        "| size | mode | dema-lab Policy.act | onnxruntime | onnxruntime / Policy |",
        "|---|---|---|---|---|",
    ]
    for label, mode, a, b in rows:
        lines.append(f"| {label} | {mode} | {a * 1e3:.3f} ms | {b * 1e3:.3f} ms | {b / a:.2f}x |")
    return "\n".join([*lines, "", NOTE, END])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-write", action="store_true", help="print the section, do not write RESULTS.md")
    p.add_argument("--results", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    args = p.parse_args(argv)
    load = os.getloadavg()[0]
    rows = measure(args.steps, args.repeat)
    text = section(rows, args.steps, args.repeat, (load, os.getloadavg()[0]))
    print(text)
    if not args.no_write:
        from benchmarks.report import write_section

        write_section(text, Path(args.results), BEGIN, END)
        print(f"wrote the section into {args.results}")


if __name__ == "__main__":
    main()
