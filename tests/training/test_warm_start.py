"""Warm start: the compiled scan kernels are cached on disk, so a second process
loads them instead of compiling, and only the first run says it is compiling.

Two fresh interpreters share an empty NUMBA_CACHE_DIR. The check is numba's own cache
statistics (hits / misses per kernel) and the one-line message on stderr, not wall time, so a
loaded machine cannot make it flaky.
"""

import json
import os
import subprocess
import sys

from dema_lab.ssm.kernels.scan_cpu import COMPILE_MESSAGE

CHILD = r"""
import json, time, torch
torch.set_num_threads(1)
from dema_lab.ssm import selective_scan, use_backend
from dema_lab.ssm.kernels import scan_cpu as cpu_kernel
u = torch.randn(2, 4, 5, requires_grad=True)
A = -torch.rand(4, 3) - 0.5
Bm = torch.randn(2, 3, 5)
t0 = time.perf_counter()
with use_backend("numba"):                       # one float32 training step's scan: fwd + bwd
    selective_scan(u, u, A, Bm, Bm, delta_softplus=True).sum().backward()
stats = {k: cpu_kernel.__dict__["_" + k].stats for k in ("forward", "backward")}
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "hits": {k: sum(s.cache_hits.values()) for k, s in stats.items()},
                  "misses": {k: sum(s.cache_misses.values()) for k, s in stats.items()}}))
"""


def _run(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    env.pop("DEMA_LAB_WARM_KERNELS", None)
    r = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_second_process_loads_the_kernels_from_the_cache(tmp_path):
    first, err1 = _run(tmp_path)
    assert first["misses"] == {"forward": 1, "backward": 1}, first
    assert err1.count(COMPILE_MESSAGE) == 1, err1  # said once, though two kernels compiled
    assert any(p.suffix == ".nbi" for p in tmp_path.rglob("*")), "no numba cache index written"

    # the warm module sees what the cache still lacks: both dtypes' attention kernel, float64's scan
    # (conftest.py's warm-up of every test session compiles them; here that would cost a minute more)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    env.pop("DEMA_LAB_WARM_KERNELS", None)
    ask = "from dema_lab.ssm.kernels import scan_cpu, warm; import torch; print(warm.missing(), scan_cpu.is_cached(torch.float32))"
    seen = subprocess.run([sys.executable, "-c", ask], env=env, capture_output=True, text=True, timeout=600)
    assert seen.stdout.strip() == "['float32', 'float64'] True", seen.stdout + seen.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "dema_lab.ssm.kernels.warm", "float16"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown dtype float16: give float32 and/or float64" in bad.stderr, bad.stderr

    second, err2 = _run(tmp_path)
    assert second["misses"] == {"forward": 0, "backward": 0}, second
    assert second["hits"] == {"forward": 1, "backward": 1}, second
    assert COMPILE_MESSAGE not in err2, err2
    # loading is fast, compiling is not (generous bound: this is not a timing test)
    assert second["seconds"] < max(10.0, 0.5 * first["seconds"]), (first, second)
