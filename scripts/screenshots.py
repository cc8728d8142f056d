"""The README's screenshots, taken from a real store in headless Chromium: `make screenshots`.

    python scripts/screenshots.py [--store store] [--out docs/screenshots]

It serves the store with `dema-lab serve` on a free local port, opens each page as a newcomer
would (the explorer on its opening view, the presentation mode, the sequence-length page, a live
rollout of the main run's last checkpoint, the study report), waits until BokehJS has drawn
everything, and fails on any console error, so a screenshot never shows a broken page.
`make screenshots` trains the demo runs first (`dema-lab demo --no-serve`) when the store lacks them.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
IDLE_JS = "() => window.Bokeh !== undefined && Bokeh.documents.length > 0 && Bokeh.documents.every(d => d.is_idle)"

# name: (path and query, seconds to let it settle after BokehJS is idle, action before the shot)
PAGES = {
    "attention-explorer": ("/attention", 2, None),
    "attention-presentation": ("/attention?presentation=1", 2, None),
    "sequence-length": ("/compare", 2, None),
    "live-rollout": ("/live", 0, "start_live"),
    "study-report": ("/study", 2, None),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            if time.time() > deadline:
                raise SystemExit(f"screenshots: the server at {url} did not answer in {timeout:.0f} s") from None
            time.sleep(0.5)


def start_live(page) -> None:
    """Start a rollout of the page's default checkpoint and let it play a few seconds."""
    page.locator(".dema-live-start button, button:has-text('Start')").first.click()
    page.wait_for_timeout(8000)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="store")
    p.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    p.add_argument("--width", type=int, default=1600)
    p.add_argument("--height", type=int, default=1000)
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "dema_lab.cli.main", "serve", "--store", args.store, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    failures = []
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for name, (path, settle, action) in PAGES.items():
                page = browser.new_page(viewport={"width": args.width, "height": args.height})
                errors = []
                page.on("console", lambda m, e=errors: e.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda x, e=errors: e.append(str(x)))
                page.goto(f"http://127.0.0.1:{port}{path}", wait_until="load", timeout=300_000)
                page.wait_for_function(IDLE_JS, timeout=300_000)
                if action:
                    globals()[action](page)
                page.wait_for_timeout(settle * 1000)
                page.wait_for_function(IDLE_JS, timeout=300_000)
                if errors:
                    failures.append(f"{path}: {errors[:3]}")
                else:
                    page.screenshot(path=str(out / f"{name}.png"))
                    print(f"{out / (name + '.png')}  ({path})")
                page.close()
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    if failures:
        print(
            "screenshots: pages with console errors (no screenshot taken):\n  " + "\n  ".join(failures), file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
