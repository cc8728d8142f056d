"""Warm start: the compiled CPU kernels are cached on disk, so a later process loads them instead of
compiling, and only a process that compiles says so, once.

The checks are numba's own cache statistics (hits / misses per kernel) and the one-line message on
stderr, not wall time, so a loaded machine cannot make them flaky. The cold-cache half compiles the
attention kernel (seconds) into an empty NUMBA_CACHE_DIR; the scan kernels (about 40 s of CPU to
compile) go through the same cache code, and are checked loading in a new process from the cache
every session warms (conftest.py under pytest-xdist, or this module on its own).
"""

import json
import os
import subprocess
import sys

import torch

from dema_lab.ssm.kernels import scan_cpu, warm
from dema_lab.ssm.kernels.scan_cpu import COMPILE_MESSAGE

ATTENTION_CHILD = r"""
import json, time, torch
torch.set_num_threads(1)
from dema_lab.ssm.kernels import attention_cpu
t0 = time.perf_counter()
attention_cpu.alpha(torch.rand(1, 2, 4), -torch.rand(2, 3), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4))
s = attention_cpu._alpha.stats
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "hits": sum(s.cache_hits.values()), "misses": sum(s.cache_misses.values())}))
"""

SCAN_CHILD = r"""
import json, torch
torch.set_num_threads(1)
from dema_lab.ssm import selective_scan, use_backend
from dema_lab.ssm.kernels import scan_cpu as cpu_kernel
u = torch.randn(2, 4, 5, requires_grad=True)
A = -torch.rand(4, 3) - 0.5
Bm = torch.randn(2, 3, 5)
with use_backend("numba"):                       # one float32 training step's scan: fwd + bwd
    selective_scan(u, u, A, Bm, Bm, delta_softplus=True).sum().backward()
stats = {k: cpu_kernel.__dict__["_" + k].stats for k in ("forward", "backward")}
print(json.dumps({"hits": {k: sum(s.cache_hits.values()) for k, s in stats.items()},
                  "misses": {k: sum(s.cache_misses.values()) for k, s in stats.items()}}))
"""


def _run(script, cache_dir=None):
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    env.pop("DEMA_LAB_WARM_KERNELS", None)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_a_kernel_compiled_once_is_loaded_by_the_next_process(tmp_path):
    first, err1 = _run(ATTENTION_CHILD, tmp_path)
    assert (first["misses"], first["hits"]) == (1, 0), first
    assert err1.count(COMPILE_MESSAGE) == 1, err1
    assert any(p.suffix == ".nbi" for p in tmp_path.rglob("*")), "no numba cache index written"

    # the warm module sees what this cache still lacks: the scan kernels of both dtypes, the
    # attention kernel's float64
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    env.pop("DEMA_LAB_WARM_KERNELS", None)
    ask = (
        "from dema_lab.ssm.kernels import attention_cpu, scan_cpu, warm; import torch; "
        "print(warm.missing(), attention_cpu.is_cached(torch.float32), attention_cpu.is_cached(torch.float64), "
        "scan_cpu.is_cached(torch.float32))"
    )
    seen = subprocess.run([sys.executable, "-c", ask], env=env, capture_output=True, text=True, timeout=600)
    assert seen.stdout.strip() == "['float32', 'float64'] True False False", seen.stdout + seen.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "dema_lab.ssm.kernels.warm", "float16"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown dtype float16: give float32 and/or float64" in bad.stderr, bad.stderr

    second, err2 = _run(ATTENTION_CHILD, tmp_path)
    assert (second["misses"], second["hits"]) == (0, 1), second
    assert COMPILE_MESSAGE not in err2, err2
    assert second["seconds"] < 10.0, (first, second)  # a load, not a compile (generous: not a timing test)


def test_the_scan_kernels_load_from_the_cache_in_a_new_process():
    warm.warm_up(["float32"])  # loads what the session's warm-up cached (compiles only on a cold cache)
    assert scan_cpu.is_cached(torch.float32)
    loaded, err = _run(SCAN_CHILD)
    assert loaded["misses"] == {"forward": 0, "backward": 0}, loaded
    assert loaded["hits"] == {"forward": 1, "backward": 1}, loaded
    assert COMPILE_MESSAGE not in err, err


def test_the_compile_message_is_said_once_for_both_scan_kernels(monkeypatch, capsys):
    """A process that must compile the forward and the backward kernel says so once. The kernels are
    taken as missing from the disk cache; this process already holds them, so nothing compiles."""
    warm.warm_up(["float32"])
    monkeypatch.setattr(scan_cpu, "in_disk_cache", lambda disp, sig: False)
    monkeypatch.setattr(scan_cpu, "_told", False)
    monkeypatch.setattr(scan_cpu, "_ENTRY", {})
    capsys.readouterr()
    scan_cpu.warm_up([torch.float32])  # one forward and one backward call: both kernels fetched
    assert capsys.readouterr().err.count(COMPILE_MESSAGE) == 1
