"""The study report (the paper's tables for a sweep): `panel serve dashboards/study.py --address 127.0.0.1 [--args --store PATH]`."""

import panel as pn

from dema_lab.dashboard.app import study_app

pn.extension()
study_app().servable(title="dema-lab · study report")
