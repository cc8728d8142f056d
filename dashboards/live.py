"""Live rollouts: `panel serve dashboards/live.py [--args --store PATH]`."""

import panel as pn

from dema_lab.dashboard.app import live_app

pn.extension()
live_app().servable(title="dema-lab · live rollout")
