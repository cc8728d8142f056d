"""Code the tests share, imported as `from helpers.browser import Page` (tests/ is on sys.path:
pyproject's pytest `pythonpath`). Fixtures live in tests/conftest.py; plain functions and classes here.

    wait_until       poll a condition with a deadline instead of sleeping a fixed time
    browser          the served dashboards, a Chromium page and readers of what it shows
    official         the official DeMa/DT code's state dicts and a float64 reference of its forward
"""

from __future__ import annotations

import time


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
