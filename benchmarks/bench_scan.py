"""Issue 16's scan benchmark: the vectorised CPU scan against the kernel it replaced, the DeMa
paper-size train step against DT's, the DeMa step's GFLOP/s against sgemm, and the warm start.

    .venv/bin/python benchmarks/bench_scan.py            # writes its section of RESULTS.md
    .venv/bin/python benchmarks/bench_scan.py --quick    # fewer repeats
    .venv/bin/python benchmarks/bench_scan.py --no-write # print only

One process, torch.set_num_threads(2); every ratio is of medians of interleaved repeats
(A, B, A, B, ...), so load from other processes moves both sides alike. The baseline kernel is
benchmarks/_legacy_cpu_kernel.py (the kernel before issue 16, verbatim). The section goes
after RESULTS.md's "kept across runs" marker, between its own markers, so run_all.py's table
and the other sections are left alone.
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


def _scan_function(kernel_module):
    """scan.NumbaScan's autograd Function, calling `kernel_module` (the new or the legacy kernel)."""
    import torch

    class Scan(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
            Bt, Ct = B.transpose(-1, -2).contiguous(), C.transpose(-1, -2).contiguous()
            u, delta, z = (None if t is None else kernel_module.readable(t) for t in (u, delta, z))
            out, last = kernel_module.forward(u, delta, A.contiguous(), Bt, Ct, D, z, delta_bias, delta_softplus)
            ctx.save_for_backward(u, delta, A, Bt, Ct, D, z, delta_bias)
            ctx.delta_softplus = delta_softplus
            return out, last

        @staticmethod
        def backward(ctx, dout, dlast):
            u, delta, A, Bt, Ct, D, z, delta_bias = ctx.saved_tensors
            du, dd, dA, dBt, dCt, dD, dz, ddb = kernel_module.backward(
                u, delta, A, Bt, Ct, D, z, delta_bias, ctx.delta_softplus, kernel_module.readable(dout), dlast
            )
            return du, dd, dA, dBt.transpose(-1, -2), dCt.transpose(-1, -2), dD, dz, ddb, None

    return Scan


class legacy_kernel:
    """Inside the block, dema_lab's numba scan backend runs the legacy kernel."""

    def __enter__(self):
        import benchmarks._legacy_cpu_kernel as legacy

        from dema_lab.ssm import scan

        self._saved = scan.NumbaScan
        scan.NumbaScan = _scan_function(legacy)

    def __exit__(self, *exc):
        from dema_lab.ssm import scan

        scan.NumbaScan = self._saved


def bench_scan(repeat: int, b=64, d=128, n=64, L=60, full=True) -> dict:
    """Scan forward+backward (and, with full, forward alone and the 1-thread CPU time) at the
    issue's size, legacy vs new, interleaved."""
    import torch

    from benchmarks._common import scan_inputs
    from benchmarks.run_all import interleaved
    from dema_lab.ssm import selective_scan, use_backend

    x, w = scan_inputs(b, d, n, L)

    def run(legacy, grad):
        def f():
            for v in x.values():
                v.grad = None
            ctx = legacy_kernel() if legacy else _null()
            with ctx, use_backend("numba"), torch.set_grad_enabled(grad):
                out = selective_scan(**x, delta_softplus=True)
                if grad:
                    (out * w).sum().backward()

        return f

    res = interleaved({"legacy": run(True, True), "new": run(False, True)}, repeat, warmup=2)
    if not full:
        return {"fwd_bwd": res}
    res_f = interleaved({"legacy": run(True, False), "new": run(False, False)}, repeat, warmup=2)
    # the same pair on one thread, timed by this process's CPU time: what a loaded machine
    # cannot inflate much (no waiting for a second core, no descheduled thread)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res_cpu = interleaved(
            {"legacy": run(True, True), "new": run(False, True)}, repeat, warmup=1, clock=time.process_time
        )
    finally:
        torch.set_num_threads(threads)
    return {"fwd_bwd": res, "fwd": res_f, "fwd_bwd_cpu1": res_cpu}


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def bench_steps(repeat: int) -> dict:
    """DeMa paper-size step (new kernel, legacy kernel) and DT's paper step, interleaved."""
    from benchmarks._common import make_trainer
    from benchmarks.run_all import configs, interleaved

    cfgs = configs()
    dema = make_trainer(*cfgs["dema_quarter"])[1]
    dema_legacy = make_trainer(*cfgs["dema_quarter"])[1]
    dt = make_trainer(*cfgs["dt_paper"])[1]

    def legacy_step():
        with legacy_kernel():
            dema_legacy()

    return interleaved({"dema": dema, "dt": dt, "dema_legacy": legacy_step}, repeat, warmup=2)


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


def measure(quick: bool) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    import benchmarks._legacy_cpu_kernel as legacy

    from benchmarks._common import machine
    from benchmarks.run_all import busy_fraction_since, load_probe, matmul_peak, train_flops
    from dema_lab.ssm.kernels import scan_cpu as cpu_kernel

    cpu_kernel.warm_up()
    legacy.warm_up()
    load0, stat0 = load_probe()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    rep = 3 if quick else 9
    res = {"machine": machine(), "date": datetime.date.today().isoformat(), "load_before": load0}
    res["sgemm_gflops"] = matmul_peak(THREADS)
    res["scan"] = bench_scan(rep)
    res["scan16"] = bench_scan(rep, b=32, n=16, L=30, full=False)  # the demo model's scan (K 10)
    res["steps"] = bench_steps(rep)
    res["sgemm_gflops_after"] = matmul_peak(THREADS)
    res["dema_flops"] = train_flops("dema_quarter")
    res["profile"] = profile_dema_step()
    res["load_after"] = os.getloadavg()[0]
    res["busy"], res["busy_others"] = busy_fraction_since(stat0, cpu0, wall0)
    res["first_step"] = first_step_fresh_process()
    res["wall_s"] = time.perf_counter() - wall0
    return res


def _med(xs):
    xs = sorted(xs)
    k = len(xs)
    return xs[k // 2] if k % 2 else 0.5 * (xs[k // 2 - 1] + xs[k // 2])


def _ok(flag):
    return "**met**" if flag else "**missed**"


def section(res: dict, cmd: str) -> str:
    sc, st = res["scan"], res["steps"]
    old, new = _med(sc["fwd_bwd"]["legacy"]), _med(sc["fwd_bwd"]["new"])
    oldf, newf = _med(sc["fwd"]["legacy"]), _med(sc["fwd"]["new"])
    oldc, newc = _med(sc["fwd_bwd_cpu1"]["legacy"]), _med(sc["fwd_bwd_cpu1"]["new"])
    s16 = res["scan16"]["fwd_bwd"]
    old16, new16 = _med(s16["legacy"]), _med(s16["new"])
    dema, dt, dleg = _med(st["dema"]), _med(st["dt"]), _med(st["dema_legacy"])
    peak = max(res["sgemm_gflops"], res["sgemm_gflops_after"])
    gflops = res["dema_flops"] / dema / 1e9
    fs = res["first_step"]
    loaded = res["busy_others"] > 0.15 or res["load_before"] > 3
    lines = [
        BEGIN,
        "## Vectorised CPU scan and warm start (issue 16)",
        "",
        f"Measured {res['date']} on {res['machine']}, torch.set_num_threads({THREADS}), by `{cmd}` "
        f"({res['wall_s']:.0f} s). Machine load: load average {res['load_before']:.1f} -> {res['load_after']:.1f}, "
        f"other processes used {100 * res['busy_others']:.0f}% of the CPU during the run"
        + (
            " (**loaded machine**: absolute times are inflated; the same-run ratios are the figures that count)."
            if loaded
            else "."
        ),
        "Baseline: `benchmarks/_legacy_cpu_kernel.py`, the kernel before this issue (16 channels per vector);"
        " new: `dema_lab/ssm/cpu_kernel.py` (d_state per vector, exp2 polynomial).",
        "",
        "| figure | measured | against | ratio | target | |",
        "|---|---|---|---|---|---|",
        f"| Scan fwd+bwd (b64, d_inner 128, n64, L60) | {old * 1e3:.1f} -> {new * 1e3:.1f} ms | legacy kernel, interleaved "
        f"| {old / new:.2f}x faster | >= 3x | {_ok(old / new >= 3)} |",
        f"| Scan fwd only, same | {oldf * 1e3:.1f} -> {newf * 1e3:.1f} ms | legacy kernel | {oldf / newf:.2f}x faster | | |",
        f"| Scan fwd+bwd, same, 1 thread, CPU time | {oldc * 1e3:.1f} -> {newc * 1e3:.1f} ms | legacy kernel "
        f"| {oldc / newc:.2f}x faster | | |",
        f"| Scan fwd+bwd at the demo size (b32, d_inner 128, n16, L30) | {old16 * 1e3:.1f} -> {new16 * 1e3:.1f} ms "
        f"| legacy kernel, interleaved | {old16 / new16:.2f}x {'faster' if old16 >= new16 else '(slower)'} | | |",
        f"| DeMa paper-size train step (d64, 3L, n64, K20, b64) | {dema * 1e3:.1f} ms | DT paper step (d128, 3L, K20, b64) "
        f"{dt * 1e3:.1f} ms | {dema / dt:.2f}x DT | <= 0.5x | {_ok(dema / dt <= 0.5)} |",
        f"| Same DeMa step with the legacy kernel | {dleg * 1e3:.1f} ms | DT paper step | {dleg / dt:.2f}x DT | | |",
        f"| DeMa step GFLOP/s (model MACs x 6) | {gflops:.1f} GFLOP/s | 2048^2 sgemm {peak:.0f} GFLOP/s | {100 * gflops / peak:.0f}% "
        f"| >= 40% | {_ok(gflops / peak >= 0.4)} |",
    ]
    if "error" in fs:
        lines.append(
            f"| First DeMa step in a fresh process (kernels cached) | failed: {fs['error']} | | | <= 2 s | **missed** |"
        )
    else:
        lines.append(
            f"| First DeMa step in a fresh process (kernels cached) | {fs['first']:.2f} s | its second step "
            f"{fs['second'] * 1e3:.0f} ms | {'compiled!' if fs['compiled'] else 'loaded from cache'} | <= 2 s "
            f"| {_ok(fs['first'] <= 2 and not fs['compiled'])} |"
        )
    lines += [
        "",
        "Where the DeMa step's time goes (torch.profiler, self CPU time per step, top ops):",
        "",
        "| op | ms per step | share |",
        "|---|---|---|",
    ]
    lines += [f"| `{k}` | {ms:.1f} | {100 * sh:.0f}% |" for k, ms, sh in res["profile"]]
    lines += [
        "",
        "Why the scan targets are missed: the baseline kernel was already SIMD (16 channels per "
        "AVX-512 vector, branch-free polynomial exp), and its forward runs near the new one's. "
        "The new backward gains from a per-channel (L, d_state) buffer instead of lane-wise partial "
        "sums, exp2 with A pre-scaled, state loops padded to a multiple of 32 (LLVM vectorises them "
        "32 floats at a time and left any rest, at d_state 16 the whole loop, to scalar code) and 8 "
        "work chunks per thread (with one, the second core sat mostly idle). What is left: the "
        "backward recomputes exp(delta A) and the states (~40% of it, one thread), then runs the "
        "reverse recurrence (~45%) over seven (L, d_state) arrays per channel pair that stream from L2 "
        "(~105 KB, three times L1), each about 2x its FMA-bound cycle count; tile loads and the gate are "
        "the rest. Two exps per element remain (forward, and the recomputation), so no layout change "
        "alone reaches 3x, and with the scan still ~50% of it the DeMa step stays above 0.5x DT's "
        "(the matrix products alone are ~20% of the step at sgemm speed). The backward takes two "
        "channels at a time, so the B_t, C_t, dB_t and dC_t rows are read once for both: at the "
        "demo size (d_state 16) that brought the scan back to the legacy kernel's speed (it was "
        "~0.35x of it at b64, L60, one thread, before the padding and ~0.84x after it): there the "
        "per-channel backward pays three horizontal sums per channel and step (y, d delta, du) that "
        "the legacy kernel's channels-in-lanes backward keeps lane-wise, and half of each 32-wide "
        "loop is pad.",
        "",
        END,
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--no-write", action="store_true", help="print the section, do not write RESULTS.md")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--json", default=None, help="also keep the raw measurements here")
    args = p.parse_args(argv)
    from benchmarks.report import write_section

    res = measure(args.quick)
    cmd = "python benchmarks/bench_scan.py" + (" --quick" if args.quick else "")
    text = section(res, cmd)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(res))
    if not args.no_write:
        write_section(text, Path(args.results), BEGIN, END)
        print(f"wrote the section into {args.results}")


if __name__ == "__main__":
    main()
