"""`dema-lab export-policy`: a run's checkpoint as an ONNX or TorchScript file, in one inference
mode, with the JSON a runner needs beside it (dema_lab.integrations.policy_export)."""

from __future__ import annotations

from dema_lab.integrations.policy_export import DEFAULT_OPSET, FORMATS, export_run_policy
from dema_lab.models.policy import MODES
from dema_lab.store.zarr_store import RunStore


def _export_policy(args) -> int:
    run = RunStore(args.store, mode="r").run(args.run)
    path, info = export_run_policy(run, args.mode, args.format, args.out, step=args.checkpoint, opset=args.opset)
    print(f"{args.mode} policy of run {args.run} written to {path}, its settings to {info}")
    if args.format == "onnx":
        print(f"play an episode with it: python examples/run_onnx_policy.py {path}")
    return 0


def register(subparsers) -> None:
    from dema_lab.cli.flags import store_options

    p = subparsers.add_parser(
        "export-policy",
        parents=[store_options()],
        help="export a run's policy as ONNX or TorchScript (Transformer-like or RNN-like)",
        description="Write a finished run's checkpoint as a graph that acts without dema-lab: "
        "the Transformer-like window or the RNN-like step, with a JSON beside it holding the state "
        "normalisation, return-to-go scale, targets, token order, action space and provenance.",
    )
    p.add_argument("run", help="run id")
    p.add_argument("--checkpoint", type=int, default=None, metavar="STEP", help="checkpoint step (default: the last)")
    p.add_argument("--format", choices=FORMATS, required=True, help="onnx or torchscript")
    p.add_argument("--mode", choices=MODES, required=True, help="transformer (a K-step window) or rnn (one step)")
    p.add_argument("--out", required=True, help="the file to write (its JSON goes beside it: FILE.json)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    p.set_defaults(func=_export_policy)
