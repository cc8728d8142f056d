"""The `dema-lab` command. Each subcommand lives beside the code it drives and registers
itself here through a `register(subparsers)` function."""

from __future__ import annotations

import argparse
import os
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
    print(
        f"mamba_ssm kernels  {'importable' if mamba_ssm_available() else 'not available (CPU build; optional [cuda] extra)'}"
    )
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
    _add_storage_options(sub)
    return parser


def _add_storage_options(sub) -> None:
    """`--storage-option KEY=VALUE` on every command that takes a --store (dema_lab.storage)."""
    for p in dict.fromkeys(sub.choices.values()):
        if any("--store" in a.option_strings for a in p._actions):
            p.add_argument(
                "--storage-option",
                dest="storage_option",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help="an fsspec storage option of a remote store (repeatable), e.g. "
                "endpoint_url=http://127.0.0.1:9000; default: the environment (AWS_* for s3://)",
            )


def _store_of(args):
    from .store import DEFAULT_STORE

    return getattr(args, "store", None) or getattr(args, "cfg_store", None) or DEFAULT_STORE


def _registrars():
    """The subcommands contributed by the library's modules."""
    from .commands import register as train
    from .commands import register_demo as demo
    from .commands import register_study as study
    from .data.cli import register as data
    from .export import register as export
    from .importer import register as import_official

    return [data, train, demo, study, import_official, export]


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        from .storage import storage_options

        with storage_options(_store_of(args), getattr(args, "storage_option", None)):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError, RuntimeError, MemoryError) as e:
        # The library's errors (ConfigError, StoreError, CheckpointError, DatasetError: ValueErrors),
        # the filesystem's and torch's: one line and exit status 2. DEMA_LAB_TRACEBACK=1 shows the traceback.
        if os.environ.get("DEMA_LAB_TRACEBACK"):
            raise
        print(f"dema-lab {args.command}: {error_line(e)}", file=sys.stderr)
        return 2


def error_line(e: BaseException) -> str:
    """One line that names the problem (and, for the filesystem's errors, the path and what to do)."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        advice = {
            PermissionError: "it cannot be written (or read) by this user: choose another path or fix its permissions",
            IsADirectoryError: "it is a directory: give a file",
            NotADirectoryError: "a part of it is a file, not a directory",
            FileNotFoundError: "it does not exist",
        }.get(type(e), "check the path")
        return f"{e.filename}: {e.strerror}; {advice}"
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, ValueError) else f"{type(e).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
