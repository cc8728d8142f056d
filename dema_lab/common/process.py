"""Child processes that die with their parent.

A server stopped by SIGTERM runs no atexit hooks, and a child that trains or evaluates reports
nothing for minutes, so neither an exit handler nor a broken pipe would stop it: on Linux the
kernel does it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os


def stop_with_parent():
    """A preexec_fn for subprocess.Popen that has Linux send the child SIGTERM when its parent
    dies, however it dies. None where prctl is missing."""
    try:
        import ctypes
        import signal

        prctl, sigterm = ctypes.CDLL(None, use_errno=True).prctl, int(signal.SIGTERM)  # resolved before the fork
        return lambda: prctl(1, sigterm)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return None


def die_with_parent(parent: int) -> None:
    """In a child process: stop_with_parent's rule, set by the child itself (a multiprocessing
    child has no preexec_fn); exits at once if `parent` has already gone."""
    arm = stop_with_parent()
    if arm is not None:
        arm()
    if os.getppid() != parent:  # the parent died before the rule was set
        os._exit(1)
