"""Sequence-length comparison: `panel serve dashboards/compare.py [--args --store PATH]`."""

import panel as pn

from dema_lab.dashboard.app import compare_app

pn.extension("tabulator")
compare_app().servable(title="dema-lab · sequence length")
