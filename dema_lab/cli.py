"""The `dema-lab` command. Each subcommand lives beside the code it drives and registers
itself here through a `register(subparsers)` function."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _info(args) -> int:
    """Versions, devices and the selective-scan backend in use."""
    import platform

    import torch

    from .ssm import backend_for, mamba_ssm_available

    cuda = torch.cuda.is_available()
    print(f"dema-lab {__version__}")
    print(f"python   {platform.python_version()}   torch {torch.__version__}   threads {torch.get_num_threads()}")
    print(f"cuda     {'yes: ' + torch.cuda.get_device_name(0) if cuda else 'no'}")
    print(f"mamba_ssm kernels  {'importable' if mamba_ssm_available() else 'not available (CPU build; optional [cuda] extra)'}")
    print(f"scan backend       cpu: {backend_for('cpu')}" + (f", cuda: {backend_for('cuda')}" if cuda else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dema-lab",
        description="Decision Mamba (DeMa) for offline RL: datasets, training, hidden attention, dashboards.",
    )
    parser.add_argument("--version", action="version", version=f"dema-lab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="show versions, devices and the selective-scan backend")
    info.set_defaults(func=_info)
    for register in _registrars():
        register(sub)
    return parser


def _registrars():
    """The subcommands contributed by the library's modules."""
    from .data.cli import register as data
    from .commands import register as train
    from .commands import register_demo as demo
    from .commands import register_study as study
    from .importer import register as import_official

    return [data, train, demo, study, import_official]


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
