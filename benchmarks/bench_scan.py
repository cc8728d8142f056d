"""The selective scan's compiled CPU kernel against its PyTorch backend, measured in the same run;
the DeMa paper-size train step with each, against DT's; the DeMa step's GFLOP/s against sgemm; and
the warm start (a fresh process's first step, the kernels in numba's cache).

    .venv/bin/python benchmarks/bench_scan.py            # writes its section of RESULTS.md
    .venv/bin/python benchmarks/bench_scan.py --quick    # fewer repeats
    .venv/bin/python benchmarks/bench_scan.py --smoke    # tiny sizes, one repeat, printed only
    .venv/bin/python benchmarks/bench_scan.py --no-write # print only

One process, torch.set_num_threads(2); every ratio is of medians of interleaved repeats
(A, B, A, B, ...), so load from other processes moves both sides alike. Both sides are
dema_lab.ssm.selective_scan, the backend chosen with dema_lab.ssm.use_backend ("numba": the
compiled kernel, dema_lab/ssm/kernels/scan_cpu.py; "torch": the PyTorch scan, autograd's
backward). The section goes after RESULTS.md's "kept across runs" marker, between its own
markers, so run_all.py's table and the other sections are left alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

THREADS = 2
BEGIN, END = "<!-- bench_scan: begin -->", "<!-- bench_scan: end -->"
COMPILED, PYTORCH = "numba", "torch"  # the two backends compared
SMOKE_SCAN = dict(b=2, d=8, n=4, L=6)  # --smoke: sizes that run in well under a second


def bench_scan(repeat: int, b=64, d=128, n=64, L=60, full=True) -> dict:
    """Scan forward+backward (and, with full, forward alone and the 1-thread CPU time) at one
    size: the compiled kernel against the PyTorch backend, interleaved."""
    import torch

    from benchmarks._common import scan_inputs, scan_step
    from benchmarks.run_all import interleaved

    x, w = scan_inputs(b, d, n, L)

    def pair(grad):
        return {PYTORCH: scan_step(x, w, PYTORCH, grad), COMPILED: scan_step(x, w, COMPILED, grad)}

    res = interleaved(pair(True), repeat, warmup=2)
    if not full:
        return {"fwd_bwd": res}
    res_f = interleaved(pair(False), repeat, warmup=2)
    # the same pair on one thread, timed by this process's CPU time: what a loaded machine
    # cannot inflate much (no waiting for a second core, no descheduled thread)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res_cpu = interleaved(pair(True), repeat, warmup=1, clock=time.process_time)
    finally:
        torch.set_num_threads(threads)
    return {"fwd_bwd": res, "fwd": res_f, "fwd_bwd_cpu1": res_cpu}


def bench_steps(repeat: int) -> dict:
    """The DeMa paper-size step with the compiled kernel and with the PyTorch scan, and DT's
    paper step, interleaved."""
    from benchmarks._common import make_trainer
    from benchmarks.run_all import configs, interleaved
    from dema_lab.ssm import use_backend

    cfgs = configs()
    dema = make_trainer(*cfgs["dema_quarter"])[1]
    dema_torch = make_trainer(*cfgs["dema_quarter"])[1]
    dt = make_trainer(*cfgs["dt_paper"])[1]

    def compiled_step():
        with use_backend(COMPILED):
            dema()

    def torch_step():
        with use_backend(PYTORCH):
            dema_torch()

    return interleaved({"dema": compiled_step, "dt": dt, "dema_torch": torch_step}, repeat, warmup=2)


def profile_dema_step() -> list:
    """The DeMa step's top ops by self CPU time (torch.profiler), as (name, ms per step, share)."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks._common import make_trainer
    from benchmarks.run_all import configs

    step = make_trainer(*configs()["dema_quarter"])[1]
    for _ in range(2):
        step()
    steps = 3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    rows = [(e.key, e.self_cpu_time_total / 1e3 / steps) for e in prof.key_averages()]
    total = sum(ms for _, ms in rows)
    rows.sort(key=lambda r: -r[1])
    return [(k, ms, ms / total) for k, ms in rows[:8]]


FIRST_STEP = r"""
import sys, time, torch
sys.path.insert(0, %r)
torch.set_num_threads(%d)
from benchmarks._common import make_trainer
from benchmarks.run_all import configs
step = make_trainer(*configs()["dema_quarter"])[1]
t0 = time.perf_counter(); step(); t1 = time.perf_counter(); step(); t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def first_step_fresh_process() -> dict:
    """A fresh interpreter's first (and second) DeMa paper-size step, the kernels in numba's
    cache (this process compiled or loaded them already)."""
    r = subprocess.run(
        [sys.executable, "-c", FIRST_STEP % (str(ROOT), THREADS)], capture_output=True, text=True, cwd=ROOT, timeout=900
    )
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"}
    first, second = (float(v) for v in r.stdout.split()[-2:])
    return {"first": first, "second": second, "compiled": "compiling" in r.stderr}


def measure(quick: bool, smoke: bool = False) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    from benchmarks._common import machine
    from benchmarks.run_all import busy_fraction_since, load_probe, matmul_peak, train_flops
    from dema_lab.ssm.kernels import scan_cpu as cpu_kernel

    cpu_kernel.warm_up()
    load0, stat0 = load_probe()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    rep = 1 if smoke else 3 if quick else 9
    res = {"machine": machine(), "date": datetime.date.today().isoformat(), "load_before": load0}
    if smoke:  # the code paths at tiny sizes: no figures worth keeping
        res["scan"] = bench_scan(rep, **SMOKE_SCAN)
        res["scan16"] = bench_scan(rep, **SMOKE_SCAN, full=False)
    else:
        res["sgemm_gflops"] = matmul_peak(THREADS)
        res["scan"] = bench_scan(rep)
        res["scan16"] = bench_scan(rep, b=32, n=16, L=30, full=False)  # the demo model's scan (K 10)
        res["steps"] = bench_steps(rep)
        res["sgemm_gflops_after"] = matmul_peak(THREADS)
        res["dema_flops"] = train_flops("dema_quarter")
        res["profile"] = profile_dema_step()
    res["load_after"] = os.getloadavg()[0]
    res["busy"], res["busy_others"] = busy_fraction_since(stat0, cpu0, wall0)
    if not smoke:
        res["first_step"] = first_step_fresh_process()
    res["wall_s"] = time.perf_counter() - wall0
    return res


def _med(xs):
    xs = sorted(xs)
    k = len(xs)
    return xs[k // 2] if k % 2 else 0.5 * (xs[k // 2 - 1] + xs[k // 2])


def _ok(flag):
    return "**met**" if flag else "**missed**"


def _faster(slow: float, fast: float) -> str:
    return f"{slow / fast:.2f}x {'faster' if slow >= fast else '(slower)'}"


def section(res: dict, cmd: str) -> str:
    sc = res["scan"]
    ref, new = _med(sc["fwd_bwd"][PYTORCH]), _med(sc["fwd_bwd"][COMPILED])
    reff, newf = _med(sc["fwd"][PYTORCH]), _med(sc["fwd"][COMPILED])
    refc, newc = _med(sc["fwd_bwd_cpu1"][PYTORCH]), _med(sc["fwd_bwd_cpu1"][COMPILED])
    s16 = res["scan16"]["fwd_bwd"]
    ref16, new16 = _med(s16[PYTORCH]), _med(s16[COMPILED])
    loaded = res["busy_others"] > 0.15 or res["load_before"] > 3
    big = "(b64, d_inner 128, n64, L60)" if "steps" in res else f"(smoke: {SMOKE_SCAN})"
    demo = "(b32, d_inner 128, n16, L30)" if "steps" in res else f"(smoke: {SMOKE_SCAN})"
    against = "PyTorch scan, interleaved"
    lines = [
        BEGIN,
        "## Compiled CPU scan against the PyTorch scan, and warm start",
        "",
        f"Measured {res['date']} on {res['machine']}, torch.set_num_threads({THREADS}), by `{cmd}` "
        f"({res['wall_s']:.0f} s). Machine load: load average {res['load_before']:.1f} -> {res['load_after']:.1f}, "
        f"other processes used {100 * res['busy_others']:.0f}% of the CPU during the run"
        + (
            " (**loaded machine**: absolute times are inflated; the same-run ratios are the figures that count)."
            if loaded
            else "."
        ),
        'Both sides are `dema_lab.ssm.selective_scan` in this run: `use_backend("torch")` (the PyTorch '
        'scan, autograd\'s backward) against `use_backend("numba")` (the compiled kernel, '
        "`dema_lab/ssm/kernels/scan_cpu.py`: d_state per vector, exp2 polynomial).",
        "",
        "| figure | measured | against | ratio | target | |",
        "|---|---|---|---|---|---|",
        f"| Scan fwd+bwd {big} | {ref * 1e3:.1f} -> {new * 1e3:.1f} ms | {against} | {_faster(ref, new)} | | |",
        f"| Scan fwd only, same | {reff * 1e3:.1f} -> {newf * 1e3:.1f} ms | PyTorch scan | {_faster(reff, newf)} | | |",
        f"| Scan fwd+bwd, same, 1 thread, CPU time | {refc * 1e3:.1f} -> {newc * 1e3:.1f} ms | PyTorch scan "
        f"| {_faster(refc, newc)} | | |",
        f"| Scan fwd+bwd at the demo size {demo} | {ref16 * 1e3:.1f} -> {new16 * 1e3:.1f} ms "
        f"| {against} | {_faster(ref16, new16)} | | |",
    ]
    if "steps" in res:
        st = res["steps"]
        dema, dt, dtorch = _med(st["dema"]), _med(st["dt"]), _med(st["dema_torch"])
        peak = max(res["sgemm_gflops"], res["sgemm_gflops_after"])
        gflops = res["dema_flops"] / dema / 1e9
        lines += [
            f"| DeMa paper-size train step (d64, 3L, n64, K20, b64) | {dema * 1e3:.1f} ms | DT paper step (d128, 3L, K20, b64) "
            f"{dt * 1e3:.1f} ms | {dema / dt:.2f}x DT | <= 0.5x | {_ok(dema / dt <= 0.5)} |",
            f"| Same DeMa step with the PyTorch scan | {dtorch * 1e3:.1f} ms | DT paper step | {dtorch / dt:.2f}x DT | | |",
            f"| DeMa step GFLOP/s (model MACs x 6) | {gflops:.1f} GFLOP/s | 2048^2 sgemm {peak:.0f} GFLOP/s | {100 * gflops / peak:.0f}% "
            f"| >= 40% | {_ok(gflops / peak >= 0.4)} |",
        ]
    fs = res.get("first_step")
    if fs is not None and "error" in fs:
        lines.append(
            f"| First DeMa step in a fresh process (kernels cached) | failed: {fs['error']} | | | <= 2 s | **missed** |"
        )
    elif fs is not None:
        lines.append(
            f"| First DeMa step in a fresh process (kernels cached) | {fs['first']:.2f} s | its second step "
            f"{fs['second'] * 1e3:.0f} ms | {'compiled!' if fs['compiled'] else 'loaded from cache'} | <= 2 s "
            f"| {_ok(fs['first'] <= 2 and not fs['compiled'])} |"
        )
    if "profile" in res:
        lines += [
            "",
            "Where the DeMa step's time goes (torch.profiler, self CPU time per step, top ops):",
            "",
            "| op | ms per step | share |",
            "|---|---|---|",
        ]
        lines += [f"| `{k}` | {ms:.1f} | {100 * sh:.0f}% |" for k, ms, sh in res["profile"]]
    lines += ["", END]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument(
        "--smoke", action="store_true", help="tiny sizes and one repeat, printed only (a check that it runs)"
    )
    p.add_argument("--no-write", action="store_true", help="print the section, do not write RESULTS.md")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--json", default=None, help="also keep the raw measurements here")
    args = p.parse_args(argv)
    from benchmarks.report import write_section

    res = measure(args.quick, smoke=args.smoke)
    cmd = "python benchmarks/bench_scan.py" + (" --quick" if args.quick else "") + (" --smoke" if args.smoke else "")
    text = section(res, cmd)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(res))
    if not (args.no_write or args.smoke):
        write_section(text, Path(args.results), BEGIN, END)
        print(f"wrote the section into {args.results}")


if __name__ == "__main__":
    main()
