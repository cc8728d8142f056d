"""The attention explorer (with the sequence-length comparison and live rollouts as tabs).

    panel serve dashboards/attention.py --address 127.0.0.1 [--args --store PATH] [--args --presentation]

The logic lives in dema_lab.dashboard; this file only builds the page.
"""

import panel as pn

from dema_lab.dashboard.app import attention_app

pn.extension(notifications=False)
attention_app().servable(title="dema-lab · attention")
