#!/usr/bin/env bash
# Recreate tests/data/legacy_store: a small run store written by dema-lab's release code at
# commit 630b7f7. Documentation of how the committed store was made; the tests do not run it.
#
# usage: make_legacy_store.sh REPO WORK OUT
#   REPO  a checkout of 630b7f7 (e.g. git worktree add ../legacy 630b7f7)
#   WORK  a scratch directory (the dataset cache and the store being written)
#   OUT   where the finished store is copied (tests/data/legacy_store)
# PYTHON (default: python3) must have dema-lab's dependencies installed; PYTHONPATH=REPO makes
# it run the checkout's code whatever dema_lab it has installed (checked below).
set -euo pipefail
REPO=$(realpath "${1:?REPO}")
WORK=$(realpath -m "${2:?WORK}")
OUT=$(realpath -m "${3:?OUT}")
PYTHON=${PYTHON:-python3}

export PYTHONPATH="$REPO" DEMA_LAB_DATA="$WORK/data" MUJOCO_GL="${MUJOCO_GL:-egl}"
STORE="$WORK/store"
dl() { (cd "$REPO" && "$PYTHON" -m dema_lab.cli "$@"); }

test "$(git -C "$REPO" rev-parse --short=7 HEAD)" = 630b7f7
(cd "$REPO" && "$PYTHON" -c 'import dema_lab, sys; assert dema_lab.__file__.startswith(sys.argv[1]), dema_lab.__file__' "$REPO")
rm -rf "$STORE"
mkdir -p "$WORK"

# 1. the dataset, cached under $WORK/data (outside the store): 100k transitions, ~25 s
dl data build hopper medium

# 2. the sweep "legacy": DeMa and DT on hopper-medium at K 5 (2 runs), tiny models (2 layers,
#    d_model 16), 100 steps in two logged segments, evaluated once at the end (one target 3600, one
#    episode per mode, 32x32 frames, episodes capped at 60 steps). The sweep then ablates the DeMa
#    run (none, mixer-zeros, mixer-random, alpha-zeros, alpha-random; all layers) and evaluates the
#    DT run without its timestep embedding (none, no_timestep), one episode each.
dl sweep --name legacy --store "$STORE" --datasets hopper-medium --K 5 --archs dema dt \
    --workers 1 --ablation-episodes 1 \
    --set steps=100 batch_size=16 d_model=16 n_layer=2 d_state=8 warmup_steps=20 \
          eval_every=0 eval_episodes=1 eval_targets=3600 eval_max_steps=60 \
          record_episodes=1 render_size=32 decay_windows=16 log_every=50 \
          checkpoint_every=100 threads=1

DEMA=legacy-hopper-medium-dema-B3LD-ts0-K5-s0
DT=legacy-hopper-medium-dt-B3LD-ts1-K5-s0

# 3. an ablation by `dema-lab ablate`: the paper's mixer-zeros in layer 0 only
dl ablate "$DEMA" --store "$STORE" --method mixer-zeros --layers 0 --episodes 1 --max-steps 60

# 4. a rollout saved as the live page saves it (dema_lab.rollout.save_rollout, as
#    dashboard/live_state.py calls it): the DeMa run's last checkpoint, Transformer-like, target
#    3600, seed 0, 32x32 frames and hidden attention at every step, at most 40 steps
(cd "$REPO" && "$PYTHON" - "$STORE" "$DEMA" <<'EOF'
import sys
from dema_lab.envs import make_env
from dema_lab.models import Policy, load_checkpoint
from dema_lab.rollout import rollout_steps, save_rollout
from dema_lab.store import RunStore

store, run_id = sys.argv[1:]
run = RunStore(store).run(run_id)
step = run.checkpoints()[-1]
ck = load_checkpoint(run.checkpoint_bytes(step))
mean, std = ck.state_normalization()
policy = Policy(ck.model, "transformer", mean, std, float(ck.meta.get("rtg_scale", 1000.0)), attention="minmax")
env = make_env("hopper", render_size=32)
try:
    records = list(rollout_steps(policy, env, 3600.0, 0, render=True, max_steps=40))
finally:
    env.close()
attrs = {"target": 3600.0, "seed": 0, "mode": "transformer", "aggregation": "minmax", "env": "hopper"}
print("saved", save_rollout(store, run_id, step, records, ck.config, attrs), f"({len(records)} steps)")
EOF
)

# 5. what each run published. The trainer wrote paper_attention/ for the DeMa run itself (its
#    recorded Transformer-like episode lasts more than 20 steps); DT runs get none.
(cd "$REPO" && "$PYTHON" - "$STORE" "$DEMA" "$DT" <<'EOF'
import sys
from dema_lab.store import RunStore

rs = RunStore(sys.argv[1])
for run_id in sys.argv[2:]:
    run = rs.run(run_id)
    print(run_id, run.attrs["status"])
    for kind, names in run.attrs["published"].items():
        print(f"  {kind}: {', '.join(names)}")
assert rs.run(sys.argv[2]).published("paper_attention"), "no paper_attention group"
EOF
)

# 6. copy the store out (the dataset cache stays in $WORK/data), and read it back
rm -rf "$OUT"
mkdir -p "$OUT"
cp -a "$STORE"/. "$OUT"/
du -sh "$OUT"
dl runs --store "$OUT"
dl report --store "$OUT" --sweep legacy
