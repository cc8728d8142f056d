"""How much logging slows evaluation, and what one logged episode costs in the store.

Evaluates one episode of a fixed length (HalfCheetah never terminates early) with the demo
model config, with and without logging (frames + hidden attention per step), in the same run,
and writes the logged episode to a fresh store to measure its size on disk.

    .venv/bin/python benchmarks/bench_logging.py [--steps 300] [--K 10] [--render 128]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def dir_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def main(argv=None) -> None:
    from dema_lab.evaluation.rollout import evaluate, rollout_encoding
    from dema_lab.models import ModelConfig, build_model
    from dema_lab.store.zarr_store import RunStore

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--K", type=int, default=10)
    ap.add_argument("--render", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cfg = ModelConfig(arch="dema", state_dim=17, act_dim=6, K=args.K, d_model=64, n_layer=3, d_state=16)
    model = build_model(cfg).eval()
    variants = {
        "no logging": dict(record=0, render_size=None, attention=None),
        "attention only": dict(record=1, render_size=None, attention="minmax"),
        "frames only": dict(record=1, render_size=args.render, attention=None),
        "frames + attention": dict(record=1, render_size=args.render, attention="minmax"),
    }
    times = {k: [] for k in variants}
    recorded = None
    for mode in ("transformer", "rnn"):
        for _ in range(args.repeats):
            for name, kw in variants.items():
                start = time.perf_counter()
                _, rec = evaluate(model, "halfcheetah", [6000.0], 1, (mode,), max_steps=args.steps, **kw)
                times[name].append((mode, time.perf_counter() - start))
                if name == "frames + attention" and mode == "transformer":
                    recorded = next(iter(rec.values()))
    print(
        f"# Logging overhead: {args.steps} steps of HalfCheetah, DeMa K={args.K} d_model=64 3 layers, "
        f"frames {args.render}px; {platform.node()}, {os.cpu_count()} cores; evaluation runs single-threaded"
    )
    print("| mode | variant | seconds (median) | ms per step | vs no logging |")
    print("|---|---|---|---|---|")
    for mode in ("transformer", "rnn"):
        base = np.median([t for m, t in times["no logging"] if m == mode])
        for name in variants:
            t = np.median([t for m, t in times[name] if m == mode])
            print(f"| {mode} | {name} | {t:.2f} | {1e3 * t / args.steps:.1f} | {t / base:.2f}x |")
    tmp = Path(tempfile.mkdtemp())
    try:
        run = RunStore(tmp / "store", mode="a").create_run("bench", {}, {})
        run.write("rollout", "episode", recorded, encoding=rollout_encoding(recorded))
        size, files = dir_size(tmp / "store" / "runs" / "bench" / "rollout" / "episode")
        raw = sum(v.nbytes for v in recorded.data_vars.values())
        frames = dir_size(tmp / "store" / "runs" / "bench" / "rollout" / "episode" / "frames")[0]
        att = dir_size(tmp / "store" / "runs" / "bench" / "rollout" / "episode" / "attention")[0]
        print(f"\n# Store size of one logged episode ({args.steps} steps)")
        print("| what | bytes | per step |")
        print("|---|---|---|")
        print(f"| in memory (raw) | {raw / 1e6:.2f} MB | {raw / args.steps / 1e3:.1f} kB |")
        print(f"| on disk, all ({files} files) | {size / 1e6:.2f} MB | {size / args.steps / 1e3:.1f} kB |")
        print(f"| on disk, frames | {frames / 1e6:.2f} MB | {frames / args.steps / 1e3:.1f} kB |")
        print(f"| on disk, attention | {att / 1e6:.2f} MB | {att / args.steps / 1e3:.1f} kB |")
        print(f"| projected 1000-step episode | {size / args.steps * 1000 / 1e6:.1f} MB | |")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
