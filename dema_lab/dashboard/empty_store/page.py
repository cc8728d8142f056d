"""The page of an empty store: how to create a run, with a button that trains the demo runs and
shows their progress."""

from __future__ import annotations

import os

import panel as pn

from dema_lab.dashboard.empty_store.job import DemoJob


class DemoProgress(pn.viewable.Viewer):
    """The demo job's progress bar and status line, updated every second while it runs;
    on_update(job, runs) is called after each update, with the number of runs in the store."""

    def __init__(self, job: DemoJob, on_update=None, **params):
        super().__init__(**params)
        self.job, self.on_update = job, on_update
        self._bar = pn.indicators.Progress(
            value=0,
            max=1000,
            sizing_mode="stretch_width",
            visible=False,
            bar_color="primary",
            css_classes=["dema-demo-progress"],
        )
        self._status = pn.pane.Markdown("", css_classes=["dema-demo-status"], sizing_mode="stretch_width")
        self._cb = None

    def watch(self):
        self._bar.visible = True
        if self._cb is None and self.job.running:
            self._cb = pn.state.add_periodic_callback(self.update, period=1000)
        self.update()

    def update(self):
        job = self.job
        fine, detail, runs = job.detail()
        frac = max(job.fraction, fine)
        self._bar.value = int(1000 * min(1.0, frac))
        text = f"**{100 * frac:.0f}%** · {job.message}"
        if detail:
            text += f"  \n{detail}"
        if job.error:
            text = f"The demo failed: {job.error}"
        elif job.finished:
            text = "The demo runs are ready."
        self._status.object = text
        if self.on_update is not None:
            self.on_update(job, runs)
        if not job.running:
            self.stop()

    def stop(self):
        """Stop updating (the job goes on)."""
        if self._cb is not None:
            self._cb.stop()
            self._cb = None

    def __panel__(self):
        return pn.Column(self._bar, self._status, sizing_mode="stretch_width")


class EmptyStorePage(pn.viewable.Viewer):
    """What an empty store shows: how to create a run, and a button that trains the demo runs."""

    def __init__(self, store: str, on_ready=None, **params):
        super().__init__(**params)
        self.store = store
        self.job = DemoJob.for_store(store)
        self.on_ready = on_ready
        self._button = pn.widgets.Button(
            label="Start the demo run", color="primary", css_classes=["dema-demo-button"], width=260, height=48
        )
        self._button.on_click(lambda *_: self.start())
        self._progress = DemoProgress(self.job, on_update=self._updated)
        if self.job.running:
            self._watch()

    def start(self):
        self.job.start()
        self._watch()

    def _watch(self):
        self._button.disabled = True
        self._button.label = "Demo running…"
        self._progress.watch()

    def _updated(self, job: DemoJob, runs: int):
        if job.error:
            self._button.disabled, self._button.label = False, "Try again"
        if runs:
            self._progress.stop()  # the explorer, taking over, shows its own
            if self.on_ready is not None:
                self.on_ready()

    def __panel__(self):
        path = os.path.abspath(self.store) if "://" not in self.store else self.store
        text = f"""
## This store has no runs yet

The dashboards read runs from the store at `{path}`. Create one:

* **Here:** start the demo run. It builds the default dataset (hopper-medium), trains a small
  Decision Mamba (K = 10, 2000 steps) and two shorter runs with K = 5 and K = 20, evaluating and
  recording episodes with their hidden attention. It takes several minutes on two CPU cores; the
  explorer opens as soon as the first run appears.
* **From a terminal:** `make demo`, or `dema-lab train --store {self.store} --dataset hopper-medium --K 20`
  (see `dema-lab train --help`), then reload this page.
* **Another store:** `panel serve dashboards/attention.py --address 127.0.0.1 --args --store PATH`, or set `DEMA_LAB_STORE`.
"""
        return pn.Column(
            pn.pane.Markdown(text, sizing_mode="stretch_width", css_classes=["dema-empty-store"]),
            self._button,
            self._progress,
            sizing_mode="stretch_width",
            max_width=1000,
        )
