"""Measure the embedded suite: build time, returns and normalized scores per
env and quality, the shipped ARS policies, and the window sampler's speed.

    python benchmarks/bench_data.py [--envs hopper halfcheetah walker2d]
                                    [--qualities random medium expert ...]
                                    [--transitions 100000] [--out DIR] [--json FILE]

Prints a markdown table. Builds run one at a time in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py

from dema_lab.data import QUALITIES, WindowSampler, build_dataset, load_d4rl, load_policy_set, normalized_score
from dema_lab.data.generate.policy import policy_path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="+", default=["hopper", "halfcheetah", "walker2d"])
    p.add_argument("--qualities", nargs="+", default=list(QUALITIES))
    p.add_argument("--transitions", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="where to write the datasets (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    a = p.parse_args()
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="dema-bench-"))
    rows, policies = [], []
    for env in a.envs:
        if policy_path(env).exists():
            ps = load_policy_set(env)
            m = ps.meta
            policies.append(
                dict(
                    env=env,
                    train_minutes=m["train_seconds"] / 60,
                    env_steps=m["train_env_steps"],
                    expert=ps.expert_return,
                    expert_norm=normalized_score(env, ps.expert_return),
                    medium=ps.medium_return,
                    medium_norm=normalized_score(env, ps.medium_return),
                )
            )
        for q in a.qualities:
            path = out / f"{env}-{q}.hdf5"
            t0 = time.perf_counter()
            build_dataset(env, q, path, seed=a.seed, transitions=a.transitions, progress=False)
            seconds = time.perf_counter() - t0
            with h5py.File(path, "r") as f:
                ret = float(f.attrs["episode_return_mean"])
                std = float(f.attrs["episode_return_std"])
                n_ep = int(f.attrs["complete_episodes"])
            t0 = time.perf_counter()
            ds = load_d4rl(path)
            load_s = time.perf_counter() - t0
            row = dict(
                env=env,
                quality=q,
                transitions=ds.num_transitions,
                episodes=len(ds),
                complete_episodes=n_ep,
                return_mean=ret,
                return_std=std,
                normalized=normalized_score(env, ret),
                build_s=seconds,
                load_s=load_s,
            )
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)  # progress; the tables go to stdout
    # sampler speed on the last dataset built
    s = WindowSampler(ds, 20)
    s.sample(64)
    t0 = time.perf_counter()
    for _ in range(500):
        s.sample(64)
    sample_ms = (time.perf_counter() - t0) / 500 * 1e3

    print("# Embedded datasets: build time, returns and normalized scores\n")
    print(
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} "
        "at the end) with `make bench`, or `.venv/bin/python benchmarks/bench_data.py` alone."
    )
    print("\n| env | quality | transitions | episodes | mean return ± std | normalized | build s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['env']} | {r['quality']} | {r['transitions']} | {r['complete_episodes']} | "
            f"{r['return_mean']:.0f} ± {r['return_std']:.0f} | {r['normalized']:.1f} | {r['build_s']:.1f} |"
        )
    if policies:
        print("\n| env | ARS minutes | env steps | expert return (norm) | medium return (norm) |")
        print("|---|---:|---:|---:|---:|")
        for r in policies:
            print(
                f"| {r['env']} | {r['train_minutes']:.1f} | {r['env_steps'] / 1e6:.1f}M | "
                f"{r['expert']:.0f} ({r['expert_norm']:.1f}) | {r['medium']:.0f} ({r['medium_norm']:.1f}) |"
            )
    print(f"\nWindowSampler: {sample_ms:.3f} ms per batch of 64 windows, K=20 ({ds.num_transitions} transitions)")
    print("\nAtari datasets (Breakout, Pong): `RESULTS-atari.md`, written by hand (their builds take minutes each).")
    if a.json:
        Path(a.json).write_text(json.dumps({"datasets": rows, "policies": policies, "sample_ms": sample_ms}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
