"""Code the tests share, imported as `from helpers.browser import Page` (tests/ is on sys.path:
pyproject's pytest `pythonpath`). Fixtures live in tests/conftest.py; plain functions and classes here.

    wait_until       poll a condition with a deadline instead of sleeping a fixed time
    FAST_EVAL        TrainConfig fields for a run whose evaluation is not what a test checks
    browser          the served dashboards, a Chromium page and readers of what it shows
    official         the official DeMa/DT code's state dicts and a float64 reference of its forward
"""

from __future__ import annotations

import time

# One mode, one target, no frames and no decay statistics: a quarter of a tiny run's evaluation
# episodes and none of its rendering, for tests of where runs go, how they resume or fail.
FAST_EVAL = dict(eval_modes=["transformer"], eval_targets=[3600.0], render_size=0, decay_windows=0)


def wait_until(condition, timeout: float, what: str, interval: float = 0.05):
    """condition()'s first truthy value, polled every `interval` seconds; after `timeout` seconds
    an AssertionError that names `what` was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
