"""The `dema-lab` command line: the parser and its one error handler (main), the flags generated
from the configs (flags), and one module per command.

The top layer, beside dashboard: it may import every package below it.
"""
