"""How long explaining a decision and judging the explanations take at the demo size (DeMa d_model
64, 3 layers, K 10, hopper): relevance by every method for one decision (target < 1 s), and one
run's faithfulness evaluation without its episodes (30 decisions, 9 fractions, 8 methods; target
< 2 min), each also as a multiple of one forward pass of the model on one window. DT at the same
size alongside. Writes its section of benchmarks/RESULTS.md.

    PYTHONPATH=$PWD python benchmarks/bench_explain.py [--threads 1 2] [--no-write]

On a shared, loaded 2-core machine two torch threads can be many times slower than one
(oversubscription): both are measured and reported with the load average.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from benchmarks._common import machine, med, timeit
from benchmarks.report import write_section
from dema_lab.analysis.explain import relevance
from dema_lab.analysis.faithfulness import FRACTIONS, faithfulness, methods_for
from dema_lab.models import ModelConfig, build_model

BEGIN = "<!-- bench_explain: begin -->"
END = "<!-- bench_explain: end -->"
RESULTS = Path(__file__).with_name("RESULTS.md")
DECISIONS = 30


def demo_model(arch: str) -> torch.nn.Module:
    """An untrained model of the demo's size (the timings do not depend on the weights)."""
    cfg = ModelConfig(arch=arch, state_dim=11, act_dim=3, K=10, d_model=64, n_layer=3, d_state=16, n_head=1)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def windows(model, b: int, seed: int = 0) -> dict:
    """b full windows (K real steps) as Policy.window() builds them: the current action slot empty."""
    cfg, g = model.cfg, torch.Generator().manual_seed(seed)
    K = cfg.K
    actions = torch.rand(b, K, cfg.act_dim, generator=g) * 2 - 1
    actions[:, -1] = 0
    return {
        "states": torch.randn(b, K, cfg.state_dim, generator=g),
        "actions": actions,
        "returns_to_go": torch.rand(b, K, 1, generator=g) * 3,
        "timesteps": torch.arange(100, 100 + K)[None].repeat(b, 1),
        "prev_action": torch.zeros(b, cfg.act_dim),
    }


def measure(arch: str) -> dict:
    model = demo_model(arch)
    one, batch = windows(model, 1), windows(model, DECISIONS)
    with torch.no_grad():
        forward = med(timeit(lambda: model(**one), repeat=20))
    per_method = {}
    for m in methods_for(model):
        per_method[m] = med(timeit(lambda m=m: relevance(model, one, m), repeat=5, warmup=1))
    start = time.perf_counter()
    faithfulness(model, batch, fractions=FRACTIONS)
    return {
        "forward": forward,
        "methods": per_method,
        "all_methods": sum(per_method.values()),
        "faithfulness": time.perf_counter() - start,
    }


def section(res: dict) -> str:
    load = os.getloadavg()
    rows = []
    for (arch, threads), r in res.items():
        arch = f"{arch}, {threads} thr"
        for m, t in r["methods"].items():
            rows.append(f"| {arch} | relevance, {m} | {t * 1e3:.1f} ms | {t / r['forward']:.0f}x | |")
        ok = "**met**" if r["all_methods"] < 1.0 else "**missed**"
        rows.append(
            f"| {arch} | relevance, all {len(r['methods'])} methods, one decision | {r['all_methods'] * 1e3:.0f} ms "
            f"| {r['all_methods'] / r['forward']:.0f}x | < 1 s: {ok} |"
        )
        ok = "**met**" if r["faithfulness"] < 120 else "**missed**"
        rows.append(
            f"| {arch} | faithfulness, {DECISIONS} decisions x {len(FRACTIONS)} fractions x "
            f"{len(r['methods'])} methods | {r['faithfulness']:.1f} s | {r['faithfulness'] / r['forward']:.0f}x "
            f"| < 2 min: {ok} |"
        )
        rows.append(f"| {arch} | one forward pass, one window (the unit) | {r['forward'] * 1e3:.2f} ms | 1x | |")
    return "\n".join(
        [
            BEGIN,
            "## Explanations and their faithfulness (benchmarks/bench_explain.py)",
            "",
            f"Measured {time.strftime('%Y-%m-%d')} on {machine()}; load average "
            f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}. Demo size: d_model 64, 3 layers, K 10 (30 tokens), "
            "hopper; the faithfulness figure excludes playing the episodes (evaluation.faithfulness "
            "does that once per run), relevance is per method at batch 1, medians of 5. Two torch threads on a "
            "shared, loaded machine can be many times slower than one (oversubscription): compare each row "
            "with its own forward pass.",
            "",
            "| model | figure | time | x forward | target |",
            "|---|---|---|---|---|",
            *rows,
            END,
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to measure")
    ap.add_argument("--no-write", action="store_true", help="print the section only")
    args = ap.parse_args()
    res = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        res.update({(arch, threads): measure(arch) for arch in ("dema", "dt")})
    text = section(res)
    print(text)
    if not args.no_write:
        write_section(text, RESULTS, BEGIN, END)


if __name__ == "__main__":
    main()
