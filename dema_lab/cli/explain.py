"""`dema-lab explain`: explain a run's decisions by every method and measure how faithful each is."""

from __future__ import annotations

from dema_lab.cli.flags import store_options


def _explain(args) -> int:
    """Play Transformer-like episodes of a run's checkpoint, explain decisions of them, perturb, and
    publish explain/<checkpoint> and faithfulness/<checkpoint> in the run; print the AUC table and
    which methods beat recency and random."""
    from dema_lab.evaluation.faithfulness import evaluate
    from dema_lab.store.zarr_store import RunStore

    RunStore(args.store, mode="r").run(args.run)  # a missing store or run: no write
    run = RunStore(args.store, mode="a").run(args.run)
    _, faith = evaluate(
        run,
        args.checkpoint,
        args.methods,
        episodes=args.episodes,
        steps=args.steps,
        baseline=args.baseline,
        horizon=args.horizon,
        max_steps=args.max_steps,
        seed=args.seed,
    )
    step = faith.attrs["checkpoint"]
    print(
        f"run {run.run_id}, checkpoint {step}: {faith.sizes['decision']} decisions, {args.baseline} baseline, "
        f"change = {faith.attrs['measure']}; AUC mean [95% bootstrap interval] over decisions"
    )
    print(f"  {'method':<12} {'positive AUC (high: faithful)':<34} {'negative AUC (low: faithful)':<34} "
          f"{'Spearman vs occlusion':>22} {'top token = occlusion':>22}")  # fmt: skip
    for m in faith.explanation.values:
        row = faith.sel(explanation=m)
        cells = [
            f"{float(row['auc_mean'].sel(direction=d)):.4g} "
            f"[{float(row['auc_low'].sel(direction=d)):.4g}, {float(row['auc_high'].sel(direction=d)):.4g}]"
            for d in ("positive", "negative")
        ]
        print(
            f"  {m:<12} {cells[0]:<34} {cells[1]:<34} {float(row['spearman_median']):>22.2f} "
            f"{float(row['top_agreement']):>21.0%}"
        )
    print(faith.attrs["verdict"])
    if "horizon_cut" in faith:
        print(
            f"causal horizon: {float(faith['horizon_cut']):g} steps (window cut), "
            f"{float(faith['horizon_alpha']) if 'horizon_alpha' in faith else float('nan'):g} (α truncated); "
            f"attention half-life {faith.attrs.get('half_life_steps', float('nan')):.3g} steps; K {faith.attrs['K']}"
        )
    print(f"published in run {run.run_id} (explain and faithfulness groups, {faith.attrs['seconds']:.0f} s)")
    return 0


def register(subparsers) -> None:
    from dema_lab.analysis.explain import METHODS

    p = subparsers.add_parser(
        "explain",
        parents=[store_options()],
        help="explain a run's decisions by every method and measure which explanation is faithful",
        description="Play Transformer-like episodes of a run's checkpoint, explain decisions of them by each "
        "method (alpha, unified, rollout, attribution, gradient, occlusion, and the recency and random "
        "baselines), replace the top or bottom fraction of the earlier tokens by a baseline token, and report "
        "each method's perturbation AUCs with bootstrap intervals and whether it beats recency and random.",
    )
    p.add_argument("run", help="run id")
    p.add_argument("--checkpoint", type=int, metavar="STEP", help="checkpoint step (default: the last)")
    p.add_argument(
        "--methods", nargs="+", choices=METHODS, metavar="METHOD",
        help=f"methods to judge (default: every one that applies): {', '.join(METHODS)}",
    )  # fmt: skip
    p.add_argument("--episodes", type=int, default=3, help="episodes to take decisions from (default: %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="decisions per episode (default: %(default)s)")
    p.add_argument(
        "--baseline", choices=("zero", "mean"), default="zero",
        help="the replacement token: zero embedding, or the embedding of the dataset's means (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--horizon", action="store_true", help="also the causal horizon (2K evaluations: slow)")
    p.add_argument("--seed", type=int, default=0, help="seed of the episodes (default: %(default)s)")
    p.add_argument("--max-steps", type=int, default=1000, help="env steps per episode at most (default: %(default)s)")
    p.set_defaults(func=_explain)
