"""Live rollouts: `panel serve dashboards/live.py --address 127.0.0.1 [--args --store PATH]`."""

import panel as pn

from dema_lab.dashboard.app import live_app

pn.extension()
live_app().servable(title="dema-lab · live rollout")
