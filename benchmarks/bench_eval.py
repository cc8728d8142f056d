"""Batched evaluation against the sequential one: episodes per second.

The paper-size DeMa (the "official" preset's model: d_model 64, 3 layers, d_state 64, K 20,
left-padded windows), Transformer-like, 10 episodes:
    sequential  what `rollout.evaluate` did for every unrecorded episode before batching: one
                Policy and one episode at a time on one env, batch 1 (rollout_steps), single-threaded
    batched     `rollout.evaluate(record=0)` now: the 10 episodes as one batch (BatchPolicy +
                rollout_batch), one model call per env step for the live episodes, 10 envs; its
                model calls on the process's torch threads (--threads, default all cores: what a
                `dema-lab train` run's evaluation uses), and also on 1 thread (a sweep worker's)
HalfCheetah never terminates early, so every episode runs --steps steps and the batch stays full:
the per-step gain. Hopper with the untrained model falls after a few dozen steps at different
steps, so finished episodes drop out: the gain when lengths differ (the batch runs as long as the
longest). Both sides are interleaved (A, B, A, B, ...) in one process; the ratio is of medians.
The returns of the two sides are compared episode for episode.

    .venv/bin/python benchmarks/bench_eval.py [--steps 200] [--episodes 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sequential(model, env_name, targets, episodes, mode, max_steps, seed=0):
    """The pre-issue-16 loop of rollout.evaluate for unrecorded episodes (returns by (target, episode))."""
    from dema_lab.envs.make import make_env
    from dema_lab.evaluation.rollout import rollout_steps, single_threaded
    from dema_lab.models import Policy

    out = np.zeros((len(targets), episodes))
    with single_threaded():
        env = make_env(env_name)
        try:
            for i, target in enumerate(targets):
                for e in range(episodes):
                    policy = Policy(model, mode)
                    rewards = [
                        s.reward for s in rollout_steps(policy, env, target, seed + 10_000 * i + e, max_steps=max_steps)
                    ]
                    out[i, e] = float(np.sum(rewards))
        finally:
            env.close()
    return out


def batched(model, env_name, targets, episodes, mode, max_steps, seed=0, threads=None):
    from dema_lab.evaluation.rollout import evaluate

    res, _ = evaluate(
        model,
        env_name,
        targets,
        episodes,
        (mode,),
        seed=seed,
        record=0,
        render_size=None,
        attention=None,
        max_steps=max_steps,
        batch_threads=threads,
    )
    return res["return"].values[0], int(res["length"].values.sum())


def cpu_busy():
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def main(argv=None) -> None:
    from dema_lab.models import build_model
    from dema_lab.training import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200, help="max steps per episode")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rnn", action="store_true", help="also RNN-like on HalfCheetah (not the target's case)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the batched calls")
    args = ap.parse_args(argv)

    load0, stat0, t0 = os.getloadavg()[0], cpu_busy(), time.perf_counter()
    own0 = time.process_time()
    rows = []
    cases = [("halfcheetah", "transformer"), ("hopper", "transformer")] + ([("halfcheetah", "rnn")] if args.rnn else [])
    sizes = {"halfcheetah": (17, 6, 6000.0), "hopper": (11, 3, 3600.0)}
    for env_name, mode in cases:
        state_dim, act_dim, target = sizes[env_name]
        cfg = TrainConfig.from_preset("official").model_config(state_dim, act_dim)
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        kw = dict(env_name=env_name, targets=[target], episodes=args.episodes, mode=mode, max_steps=args.steps)
        sequential(model, **{**kw, "episodes": 1})  # warm-up (kernels, envs)
        batched(model, **{**kw, "episodes": 2})
        seq_t, bat_t, one_t = [], [], []
        for _ in range(args.repeats):
            s0 = time.perf_counter()
            seq = sequential(model, **kw)
            seq_t.append(time.perf_counter() - s0)
            s0 = time.perf_counter()
            bat, steps = batched(model, **kw, threads=args.threads)
            bat_t.append(time.perf_counter() - s0)
            s0 = time.perf_counter()
            one, _ = batched(model, **kw, threads=1)
            one_t.append(time.perf_counter() - s0)
        diff = float(max(np.abs(seq[0] - bat).max(), np.abs(seq[0] - one).max()))
        s, b, o = (float(np.median(x)) for x in (seq_t, bat_t, one_t))
        rows.append((env_name, mode, steps, s, b, o, diff, float(np.abs(seq[0]).max())))
    wall = time.perf_counter() - t0
    stat1 = cpu_busy()
    delta = [a - b for a, b in zip(stat1, stat0)]
    busy = (sum(delta) - delta[3] - delta[4]) / max(sum(delta), 1)
    own = (time.process_time() - own0) / wall / (os.cpu_count() or 1)
    print(
        f"# Batched evaluation: {args.episodes} episodes, paper-size DeMa "
        f"(official preset: d_model 64, 3 layers, d_state 64, K 20, left-padded), untrained weights, "
        f"max {args.steps} steps"
    )
    print(
        f"\nMeasured {time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"sequential on 1 thread, batched on {args.threads} thread(s) and on 1; median of {args.repeats} "
        f"interleaved repeats. "
        f"Load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; other processes used "
        f"{100 * max(0.0, busy - own):.0f}% of the machine's CPU during the run.\n"
    )
    print(
        f"| env (episode lengths) | inference | env steps | sequential | batched, {args.threads} thr | "
        f"batched, 1 thr | episodes/s sequential | episodes/s batched, {args.threads} thr | speed-up "
        f"| speed-up, 1 thr | target | max return difference |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for env_name, mode, steps, s, b, o, diff, scale in rows:
        what = "all full length" if env_name == "halfcheetah" else "differ: finished ones drop out"
        main_case = env_name == "halfcheetah" and mode == "transformer"
        met = (">= 5x: " + ("**met**" if b * 5 <= s else "missed")) if main_case else "(info)"
        print(
            f"| {env_name} ({what}) | {mode}-like | {steps} | {s:.2f} s | {b:.2f} s | {o:.2f} s | "
            f"{args.episodes / s:.2f} | {args.episodes / b:.2f} | {s / b:.1f}x | {s / o:.1f}x | {met} "
            f"| {diff:.1e} (of {scale:.0f}) |"
        )


if __name__ == "__main__":
    main()
