"""Server-side time of one scrub step in the attention explorer (target: median <= 50 ms on the
demo run: K 10, d_model 64, 3 layers, 128x128 frames).

    python benchmarks/bench_dashboard.py [--store store] [--run demo-dema-K10] [--steps 200]

The explorer is rendered into a Bokeh document as `panel serve` does; each sample sets the
step (as the slider does) and serialises the resulting document patch (what the server sends).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=os.environ.get("DEMA_LAB_STORE", "store"))
    p.add_argument("--run", default="demo-dema-K10", help="run to scrub (default: the demo run, else the newest)")
    p.add_argument("--episode", default=None, help="rollout name (default: the explorer's choice)")
    p.add_argument("--steps", type=int, default=200, help="scrub samples")
    p.add_argument("--json", default=None)
    a = p.parse_args()

    import panel as pn
    from bokeh.document import Document
    from bokeh.protocol import Protocol

    from dema_lab.dashboard import AttentionExplorer, StoreIndex

    index = StoreIndex(a.store)
    runs = index.run_ids()
    if not runs:
        print(f"store {a.store} has no runs: run `make demo` (or the dashboard's demo button) first", file=sys.stderr)
        return 1
    run = a.run if a.run in runs else runs[-1]
    view = AttentionExplorer(index)
    ex = view.state
    ex.run = run
    if a.episode:
        ex.episode = a.episode
    if ex.episode_data is None:
        print(f"run {run} has no recorded episode yet: {ex.message}", file=sys.stderr)
        return 1
    doc = Document()
    doc.add_root(pn.panel(view).get_root(doc))
    events = []
    doc.callbacks.on_change(lambda event: events.append(event))
    protocol = Protocol()
    n = ex.episode_data.n_steps
    rng = np.random.default_rng(0)
    # a drag of the slider: mostly neighbouring steps, some jumps
    targets = np.clip(np.cumsum(rng.choice([1, 1, 1, 2, -1, 25], size=a.steps + 10)), 0, n - 1)
    samples = []
    for i, step in enumerate(targets):
        if int(step) == ex.step:
            step = (int(step) + 1) % n
        events.clear()
        t0 = time.perf_counter()
        ex.step = int(step)
        if events:
            protocol.create("PATCH-DOC", events)  # serialise what goes to the browser
        dt = time.perf_counter() - t0
        if i >= 10:
            samples.append(dt)
    ms = np.array(samples) * 1000
    cfg = ex.index.info(ex.run).config
    row = {
        "run": run,
        "episode": ex.episode,
        "steps_in_episode": n,
        "K": cfg.get("K"),
        "d_model": cfg.get("d_model"),
        "n_layer": cfg.get("n_layer"),
        "frame": list(ex.episode_data.frames.shape[1:3]) if ex.episode_data.frames is not None else None,
        "samples": len(ms),
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "max_ms": float(ms.max()),
        "target_ms": 50.0,
        "load_average": os.getloadavg()[0],
    }
    print(f"# Server-side time of one scrub step in the attention explorer ({time.strftime('%Y-%m-%d')})\n")
    print(
        "Reproduce: `make bench`, or `.venv/bin/python benchmarks/bench_dashboard.py --store STORE` on a store "
        "holding the demo run. Each sample sets the step as the slider does and serialises the document "
        "patch the server sends.\n"
    )
    print("| run | K | d_model | layers | frame | samples | median ms | p90 ms | target |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {run} | {row['K']} | {row['d_model']} | {row['n_layer']} | {row['frame']} | {row['samples']} | "
        f"{row['median_ms']:.1f} | {row['p90_ms']:.1f} | <= 50 |"
    )
    print(f"(load average {row['load_average']:.1f} on {os.cpu_count()} cores)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(row, f, indent=2)
    print(f"target {'met' if row['median_ms'] <= 50 else 'missed'}: median {row['median_ms']:.1f} ms <= 50 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
