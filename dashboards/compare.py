"""Sequence-length comparison: `panel serve dashboards/compare.py --address 127.0.0.1 [--args --store PATH]`."""

import panel as pn

from dema_lab.dashboard.app import compare_app

pn.extension()
compare_app().servable(title="dema-lab · sequence length")
