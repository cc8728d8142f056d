"""Every CPU kernel compiled into numba's on-disk cache ahead of use, one process per dtype.

    python -m dema_lab.ssm.kernels.warm            # float32 and float64, in parallel processes

A process that finds a kernel missing from the cache compiles it (tens of seconds of one core);
several processes started at once on an empty cache (a sweep's workers, the test suite's) would
each compile the same kernels. Warming first leaves them all to load from the cache.
"""

from __future__ import annotations

import subprocess
import sys

import torch

from dema_lab.ssm.kernels import attention_cpu, scan_cpu

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def missing(dtypes=tuple(DTYPES)) -> list[str]:
    """The dtypes (names) whose scan or attention kernels numba's disk cache lacks."""
    return [n for n in dtypes if not (scan_cpu.is_cached(DTYPES[n]) and attention_cpu.is_cached(DTYPES[n]))]


def warm_up(dtypes=tuple(DTYPES)) -> None:
    """Compile (or load) the scan and attention kernels of each dtype in this process."""
    chosen = [DTYPES[n] for n in dtypes]
    scan_cpu.warm_up(chosen)
    attention_cpu.warm_up(chosen)


def warm_up_in_processes(dtypes=tuple(DTYPES), timeout: float = 1200.0) -> list[str]:
    """Compile what the cache lacks, one child process per dtype at once (numba compiles on one
    core); returns the dtypes compiled. A failed compile raises RuntimeError with its stderr."""
    todo = missing(dtypes)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dema_lab.ssm.kernels.warm", name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in todo
    ]
    for name, proc in zip(todo, procs):
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling the {name} CPU kernels failed (exit {proc.returncode}): {err[-2000:]}")
    return todo


def main(argv=None) -> int:
    names = list(sys.argv[1:] if argv is None else argv) or list(DTYPES)
    bad = [n for n in names if n not in DTYPES]
    if bad:
        print(f"unknown dtype {', '.join(bad)}: give float32 and/or float64", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    warm_up(names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
