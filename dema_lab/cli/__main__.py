"""`python -m dema_lab.cli`: the dema-lab command."""

import sys

from dema_lab.cli.main import main

sys.exit(main())
