"""`dema-lab import`: an official DeMa checkpoint as a dema-lab checkpoint file or a run in a store."""

from __future__ import annotations

from pathlib import Path

from dema_lab.integrations.official import import_official, import_to_store
from dema_lab.models import count_parameters, save_checkpoint
from dema_lab.models.official.convert import OFFICIAL_K, OFFICIAL_N_HEAD


def _import(args) -> int:
    if bool(args.out) == bool(args.store):
        raise ValueError("give either --out FILE.safetensors (a checkpoint file) or --store STORE (a run)")
    if args.run_id and not args.store:
        raise ValueError("--run_id names a run in a store: give --store too")
    if args.eval_episodes < 1:
        raise ValueError(f"--eval-episodes must be >= 1, got {args.eval_episodes}")
    if args.out:
        out = Path(args.out)
        if out.suffix != ".safetensors":
            raise ValueError(f"--out {out}: the checkpoint is a safetensors file; name it *.safetensors")
        ck = import_official(
            args.path, env=args.env, dataset=args.dataset, K=args.K, n_head=args.n_head, rtg_scale=args.rtg_scale
        )
        save_checkpoint(out, ck.model, ck.meta, ck.extra)
        print(
            f"{ck.meta['official_class']} from {args.path} written to {out} ({ck.config.arch}, "
            f"{count_parameters(ck.model)} parameters, env {ck.meta['env'] or '?'}); open it in /live or "
            f"with dema_lab.models.load_checkpoint"
        )
        return 0
    log = (lambda *a, **k: None) if args.quiet else print
    run = import_to_store(
        args.path,
        args.store,
        dataset=args.dataset,
        env=args.env,
        run_id=args.run_id or "",
        K=args.K,
        n_head=args.n_head,
        rtg_scale=args.rtg_scale,
        eval_episodes=args.eval_episodes,
        eval_targets=args.targets,
        eval_modes=args.modes,
        eval_max_steps=args.eval_max_steps,
        render_size=args.render_size,
        log=log,
    )
    print(
        f"run {run.run_id} imported into {run.store.path}; open it in the dashboard "
        f"(dema-lab serve --store {run.store.path}) or with dema_lab.open_run('{run.store.path}', '{run.run_id}')"
    )
    return 0


def register(subparsers) -> None:
    """Add `dema-lab import`."""
    from dema_lab.cli.flags import store_options

    p = subparsers.add_parser(
        "import",
        parents=[
            store_options(default=None, help="where to (this or --out): create a run in this store and evaluate it")
        ],
        help="import a checkpoint of the official DeMa code (model_iter*.pkl) as a file or a run",
        description="Import a checkpoint trained with the official DeMa code (github AndssY/dema: Mamba_mujoco "
        "or its DecisionTransformer). The pickle is read without executing anything; the "
        "architecture comes from the tensors' names and shapes, the state normalisation from "
        "the dataset (mean, std + 1e-6).",
    )
    p.add_argument("path", help="the official checkpoint, e.g. models/model_iter9.pkl")
    p.add_argument(
        "--dataset",
        required=True,
        help="the dataset it was trained on (embedded name, .hdf5 path, minari:<id>): state normalisation and env",
    )
    p.add_argument("--env", help="the env (default: the dataset's)")
    p.add_argument(
        "--K",
        type=int,
        default=None,
        help=f"context length it was trained with (not in the weights; default: the official {OFFICIAL_K}, Atari 30)",
    )
    p.add_argument(
        "--n_head",
        type=int,
        default=OFFICIAL_N_HEAD,
        help="DT's attention heads (not in the weights; default: the official %(default)s)",
    )
    p.add_argument(
        "--rtg_scale", type=float, default=None, help="return-to-go scale (default: the official 1000, Atari 1)"
    )
    p.add_argument(
        "--out", metavar="FILE.safetensors", help="where to (this or --store): write a dema-lab checkpoint file"
    )
    p.add_argument("--run_id", help="run id in the store (default: official-<dema|dt>-<dataset>-iter<N>)")
    p.add_argument("--eval-episodes", type=int, default=5, help="episodes per (mode, target) (default: %(default)s)")
    p.add_argument("--eval-max-steps", type=int, default=1000, help="episode length cap (default: %(default)s)")
    p.add_argument("--targets", type=float, nargs="+", help="target returns (default: the paper's for the env)")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=["transformer", "rnn"],
        help="inference modes (default: both for DeMa, transformer for DT)",
    )
    p.add_argument("--render-size", type=int, default=128, help="frame size of recorded episodes; 0: no frames")
    p.add_argument("--quiet", action="store_true", help="print only the result")
    p.set_defaults(func=_import)
