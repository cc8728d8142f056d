"""The benchmark suite: one command, every target, a table in benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/run_all.py            # full (a few minutes on 2 cores)
    .venv/bin/python benchmarks/run_all.py --quick    # fewer repeats, for a smoke run

The parent process re-executes itself twice, once with glibc's default allocator and once
with GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295 (memory
reused, no mmap page-fault storms), collects both runs' JSON and writes the table.

Every ratio is taken inside one run with the two sides interleaved (A, B, A, B, ...), on
2 threads, and reported as the ratio of medians: on a shared machine the load moves both
sides alike. Load average and the CPU time spent by other processes are recorded with the
run. Benchmarks are not tests: nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

TUNED = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295"
THREADS = 2


# ============================================================================ measurements


def _med(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def interleaved(fns: dict, repeat: int, warmup: int = 1, clock=time.perf_counter) -> dict:
    """{name: [seconds per call]} with the callables run round-robin (clock: wall time, or
    e.g. time.process_time for CPU time)."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    out = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t0 = clock()
            f()
            out[k].append(clock() - t0)
    return out


def load_probe():
    """(load average, fraction of the machine's CPU used by others over the last call window)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return os.getloadavg()[0], fields


def busy_fraction_since(prev_fields, self_cpu0, wall0):
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    delta = [a - b for a, b in zip(fields, prev_fields)]
    total = sum(delta)
    idle = delta[3] + delta[4]
    busy = (total - idle) / max(total, 1)  # whole machine, all processes
    ncpu = os.cpu_count() or 1
    own = (time.process_time() - self_cpu0) / max(time.perf_counter() - wall0, 1e-9) / ncpu
    return busy, max(0.0, busy - own)


def matmul_peak(threads: int) -> float:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(2):
        a @ b
    ts = interleaved({"mm": lambda: a @ b}, repeat=8, warmup=0)["mm"]
    return 2 * 2048**3 / min(ts) / 1e9


# ---------------------------------------------------------------------------- scan


SCAN_SIZE = dict(b=64, d=256, n=16, L=60)  # the scan rows' size (the benchmark size of the performance targets)


def bench_scan(repeat: int) -> dict:
    import torch
    import torch.nn.functional as F

    from benchmarks._common import scan_inputs, scan_step

    x, w = scan_inputs(**SCAN_SIZE)

    def ours(backend, grad=True):
        return scan_step(x, w, backend, grad)

    # mambapy's MambaBlock.selective_scan (pscan), with the same softplus(delta + bias) and
    # silu(z) gate around it, in its (B, L, ED) layout: the full op, as mambapy trains it.
    try:
        from mambapy.pscan import pscan

        xl = {
            k: (
                v.detach().transpose(1, 2).contiguous().requires_grad_()
                if v.dim() == 3 and k in ("u", "delta", "z")
                else v.detach().clone().requires_grad_()
            )
            for k, v in x.items()
        }
        Bl = x["B"].detach().transpose(1, 2).contiguous().requires_grad_()
        Cl = x["C"].detach().transpose(1, 2).contiguous().requires_grad_()
        wl = w.transpose(1, 2).contiguous()

        def mambapy_op(grad=True):
            def f():
                for v in list(xl.values()) + [Bl, Cl]:
                    v.grad = None
                with torch.set_grad_enabled(grad):
                    delta = F.softplus(xl["delta"] + xl["delta_bias"])
                    deltaA = torch.exp(delta.unsqueeze(-1) * xl["A"])
                    BX = delta.unsqueeze(-1) * Bl.unsqueeze(2) * xl["u"].unsqueeze(-1)
                    hs = pscan(deltaA, BX)
                    y = (hs @ Cl.unsqueeze(-1)).squeeze(3) + xl["D"] * xl["u"]
                    y = y * F.silu(xl["z"])
                    if grad:
                        (y * wl).sum().backward()

            return f
    except Exception as e:  # noqa: BLE001
        mambapy_op = None
        print("mambapy unavailable:", e, file=sys.stderr)

    fns = {"numba": ours("numba"), "torch_function": ours("torch")}
    fwd = {"numba": ours("numba", False), "torch_function": ours("torch", False)}
    if mambapy_op is not None:
        fns["mambapy_pscan"] = mambapy_op()
        fwd["mambapy_pscan"] = mambapy_op(False)
    res = {"fwd_bwd": interleaved(fns, repeat), "fwd": interleaved(fwd, repeat)}
    # the autograd per-step loop is seconds per call: few repeats, interleaved with ours
    res["fwd_bwd_ref"] = interleaved({"reference": ours("reference"), "numba": ours("numba")}, max(2, repeat // 4))
    res["fwd_ref"] = interleaved(
        {"reference": ours("reference", False), "numba": ours("numba", False)}, max(2, repeat // 4)
    )
    return res


# ---------------------------------------------------------------------------- training


def configs():
    from dema_lab.models import ModelConfig

    hop = dict(state_dim=11, act_dim=3)
    return {
        "dt_paper": (ModelConfig(arch="dt", K=20, d_model=128, n_layer=3, n_head=1, **hop), 64),
        "dema_quarter": (ModelConfig(arch="dema", K=20, d_model=64, n_layer=3, d_state=64, expand=2, **hop), 64),
        "dema_128": (ModelConfig(arch="dema", K=20, d_model=128, n_layer=3, d_state=16, expand=2, **hop), 64),
        "demo": (ModelConfig(arch="dema", K=10, d_model=64, n_layer=3, d_state=16, expand=2, **hop), 32),
        "dt_demo": (ModelConfig(arch="dt", K=10, d_model=64, n_layer=3, n_head=1, **hop), 32),
    }


def bench_train(repeat: int) -> dict:
    from benchmarks._common import make_trainer

    fns = {name: make_trainer(cfg, batch)[1] for name, (cfg, batch) in configs().items()}
    return interleaved(fns, repeat, warmup=2)


def train_flops(name) -> float:
    """FLOPs of one training step (forward + backward = 3x forward MACs, 2 FLOPs per MAC)."""
    from dema_lab.models import forward_macs

    cfg, batch = configs()[name]
    return 2 * 3 * forward_macs(cfg) * batch


def peak_memory_child(name: str, steps: int = 3) -> int:
    """Peak RSS growth (bytes) of `steps` training steps of one config (run in a fresh process)."""
    from benchmarks._common import make_trainer

    cfg, batch = configs()[name]
    _, step = make_trainer(cfg, batch)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(steps):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024


# ---------------------------------------------------------------------------- inference

KS = (5, 10, 20, 40, 80)


def bench_inference(steps: int) -> dict:
    """Per-step latency (s) of Policy.act + observe at steady state (t >= K), batch 1, for
    both modes at the demo model size and K in KS; single-threaded, as evaluation runs."""
    import numpy as np
    import torch

    from dema_lab.evaluation.rollout import single_threaded
    from dema_lab.models import ModelConfig, Policy, build_model

    with single_threaded():
        return _bench_inference(steps, np, torch, ModelConfig, Policy, build_model)


def _bench_inference(steps, np, torch, ModelConfig, Policy, build_model) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    models = {}
    for K in KS:
        torch.manual_seed(0)
        models[K] = build_model(
            ModelConfig(arch="dema", K=K, d_model=64, n_layer=3, d_state=16, state_dim=11, act_dim=3)
        ).eval()
    for mode in ("rnn", "transformer"):
        for K in KS:
            pol = Policy(models[K], mode)
            pol.reset(3600.0)
            for _ in range(K):  # fill the window
                pol.act(rng.standard_normal(11).astype(np.float32))
                pol.observe(1.0)
            ts = []
            for _ in range(steps):
                obs = rng.standard_normal(11).astype(np.float32)
                t0 = time.perf_counter()
                pol.act(obs)
                pol.observe(1.0)
                ts.append(time.perf_counter() - t0)
            out[f"{mode}_K{K}"] = ts
    # the RNN ratio K80 / K5 again, interleaved step by step (the figure the target uses)
    pols = {K: Policy(models[K], "rnn") for K in (5, 80)}
    for K, pol in pols.items():
        pol.reset(3600.0)
        for _ in range(K):
            pol.act(rng.standard_normal(11).astype(np.float32))
            pol.observe(1.0)

    def stepper(pol):
        def f():
            pol.act(rng.standard_normal(11).astype(np.float32))
            pol.observe(1.0)

        return f

    out["rnn_pair"] = interleaved({K: stepper(p) for K, p in pols.items()}, steps, warmup=5)
    return out


def bench_attention(repeat: int) -> dict:
    """Hidden attention of one rollout step at the demo config: all layers over the context
    window (K 10, 30 tokens), batch 1, as the dashboards ask for it; fast kernel vs the
    segment-sum reference. Single-threaded, as evaluation runs."""
    from dema_lab.evaluation.rollout import single_threaded

    with single_threaded():
        return _bench_attention(repeat)


def _bench_attention(repeat: int) -> dict:
    import importlib

    import torch

    from dema_lab.models import ModelConfig, build_model

    ha = importlib.import_module("dema_lab.ssm.hidden_attention")
    mm = importlib.import_module("dema_lab.ssm.mamba")
    torch.manual_seed(0)
    cfg = ModelConfig(arch="dema", K=10, d_model=64, n_layer=3, d_state=16, state_dim=11, act_dim=3)
    model = build_model(cfg).eval()
    x = dict(
        states=torch.randn(1, 10, 11),
        actions=torch.rand(1, 10, 3),
        returns_to_go=torch.rand(1, 10, 1),
        timesteps=torch.arange(10)[None],
    )
    orig = ha.hidden_attention

    def with_impl(impl):
        def f():
            mm.hidden_attention = lambda *a, **k: orig(*a, impl=impl, **k)
            try:
                model.attention(**x, aggregate="minmax")
            finally:
                mm.hidden_attention = orig

        return f

    return interleaved({"numba": with_impl("numba"), "segsum": with_impl("segsum")}, repeat, warmup=2)


# ---------------------------------------------------------------------------- accuracy


def bench_accuracy() -> dict:
    """Relative error (in norm) of the float32 fast scan's output and gradients against the
    float64 reference loop, at the benchmark size (batch 64, d_inner 256, d_state 16, L 60); gradcheck at a
    small size."""
    import torch

    from benchmarks._common import scan_inputs
    from dema_lab.ssm import selective_scan, use_backend

    x, w = scan_inputs(**SCAN_SIZE)
    res = {}
    for name, dtype, backend in (("ref", torch.float64, "reference"), ("fast", torch.float32, "numba")):
        args = {k: v.detach().to(dtype).requires_grad_() for k, v in x.items()}
        with use_backend(backend):
            out = selective_scan(**args, delta_softplus=True)
        (out * w.to(dtype)).sum().backward()
        res[name] = {"out": out.detach().double(), **{k: v.grad.double() for k, v in args.items()}}
    errs = {k: ((res["fast"][k] - res["ref"][k]).norm() / res["ref"][k].norm()).item() for k in res["ref"]}
    small, _ = scan_inputs(b=2, d=5, n=3, L=6)
    names = list(small)
    args = [small[k].detach().double().requires_grad_() for k in names]

    def f(*a):
        with use_backend("numba"):
            return selective_scan(**dict(zip(names, a)), delta_softplus=True, return_last_state=True)

    return {"rel_err": errs, "gradcheck": bool(torch.autograd.gradcheck(f, args))}


# ---------------------------------------------------------------------------- CUDA


def bench_cuda(repeat: int) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {}
    from benchmarks._common import scan_inputs
    from dema_lab.ssm import mamba_ssm_available, selective_scan, use_backend

    x, w = scan_inputs(**SCAN_SIZE)
    xc = {k: v.detach().cuda().requires_grad_() for k, v in x.items()}
    wc = w.cuda()

    def run(backend):
        def f():
            with use_backend(backend):
                out = selective_scan(**xc, delta_softplus=True)
                (out * wc).sum().backward()
            torch.cuda.synchronize()

        return f

    fns = {"torch_cuda": run("torch")}
    if mamba_ssm_available():
        fns["mamba_ssm_cuda"] = run("cuda")
    res = {"scan": interleaved(fns, repeat, warmup=3)}
    # training steps on the GPU
    steps = {}
    for name in ("dt_paper", "dema_quarter", "dema_128"):
        cfg, batch = configs()[name]
        steps[name] = _cuda_trainer(cfg, batch)
    res["train"] = interleaved(steps, repeat, warmup=3)
    res["device"] = torch.cuda.get_device_name(0)
    return res


def _cuda_trainer(cfg, batch):
    import torch

    from benchmarks._common import make_batch
    from dema_lab.models import build_model

    torch.manual_seed(0)
    model = build_model(cfg).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    inputs, mask = make_batch(cfg, batch)
    inputs = {k: v.cuda() for k, v in inputs.items()}
    m = mask.cuda()[..., None]

    def step():
        pred = model(**inputs)
        loss = (((pred - inputs["actions"]) ** 2) * m).sum() / (m.sum() * cfg.act_dim)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        torch.cuda.synchronize()

    return step


# ============================================================================ child / parent


def child(args) -> None:
    import torch

    torch.set_num_threads(THREADS)
    from dema_lab.ssm import (
        attention_kernel,  # noqa: F401  (compile / load from cache first)
        cpu_kernel,
    )

    cpu_kernel.warm_up()
    from benchmarks._common import machine

    q = args.quick
    load0, stat0 = load_probe()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    res = {"machine": machine(), "alloc": args.alloc, "load_before": load0}
    sections = [
        ("matmul_gflops", lambda: matmul_peak(THREADS)),
        ("scan", lambda: bench_scan(3 if q else 9)),
        ("train", lambda: bench_train(3 if q else 9)),
        ("inference", lambda: bench_inference(10 if q else 40)),
        ("attention", lambda: bench_attention(5 if q else 20)),
        ("cuda", lambda: bench_cuda(3 if q else 10)),
    ]
    if args.alloc == "default":
        sections.append(("accuracy", bench_accuracy))
    for name, fn in sections:
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        res[name] = fn()
        print(f"[{args.alloc}] {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    res["load_after"] = os.getloadavg()[0]
    res["busy"], res["busy_others"] = busy_fraction_since(stat0, cpu0, wall0)
    res["wall_s"] = time.perf_counter() - wall0
    Path(args.out).write_text(json.dumps(res))


def run_child(alloc: str, quick: bool, only) -> dict:
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if alloc == "tuned":
        env["GLIBC_TUNABLES"] = TUNED
    env["OMP_NUM_THREADS"] = str(THREADS)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--alloc", alloc, "--out", out]
    if quick:
        cmd.append("--quick")
    if only:
        cmd += ["--only", *only]
    subprocess.run(cmd, env=env, check=True, cwd=ROOT)
    res = json.loads(Path(out).read_text())
    os.unlink(out)
    return res


def peak_memory(names) -> dict:
    out = {}
    for name in names:
        code = (
            "import sys, torch; sys.path.insert(0, %r); torch.set_num_threads(%d); "
            "from dema_lab.ssm import cpu_kernel; cpu_kernel.warm_up(); "
            "from benchmarks.run_all import peak_memory_child; print(peak_memory_child(%r))"
            % (str(ROOT), THREADS, name)
        )
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        out[name] = int(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--alloc", default="default", choices=("default", "tuned"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--only", nargs="*", help="sections to run (matmul_gflops scan train inference attention cuda)")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"), help="where to write the table")
    p.add_argument("--json", default=None, help="also keep the raw measurements here")
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    t0 = time.time()
    runs = {alloc: run_child(alloc, args.quick, args.only) for alloc in ("default", "tuned")}
    mem = peak_memory(["dt_paper", "dema_quarter", "dema_128", "demo"]) if not args.only or "train" in args.only else {}
    from benchmarks.report import write_report

    cmd = "python benchmarks/run_all.py" + (" --quick" if args.quick else "")
    write_report(runs, mem, Path(args.results), cmd, time.time() - t0)
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "peak_memory": mem}))
    print(f"wrote {args.results} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
