#!/usr/bin/env bash
# The paper's study on the embedded suite (hopper, halfcheetah, walker2d; medium), sized for 2 CPU
# cores: `make study` (about 2.5 hours on 2 cores; the 9-run K sweep alone took 90 minutes here).
# Resumable: rerun it after an interruption and finished runs are skipped, interrupted ones
# resumed, missing ablations added. Writes the report to docs/study-report.md.
#   STORE=store WORKERS=2 scripts/study.sh          TRAIN_ONLY=1: the training pass alone
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${STORE:-store}
WORKERS=${WORKERS:-2}
DL=${DEMA_LAB:-.venv/bin/dema-lab}
# Every run evaluates after 500 and 1000 steps (best and last checkpoint), two episodes per target
# and inference mode; the ablations (the paper's and dema-lab's) two episodes per target. DeMa is
# the official architecture (as --preset official: tokens (R, a, s), 128-wide embeddings projected
# to d_model 64, no embedding norm, d_state 64, left-padded windows, the official training form,
# left-padded training windows, weight decay on every parameter; PyTorch's initial weights, since
# init=official came after this study had started) on a CPU schedule: 1000 steps of batch 32 at
# lr 6e-4 instead of 100k steps of batch 64 at lr 1e-4.
SCHED="steps=1000 batch_size=32 lr=6e-4 warmup_steps=100 eval_every=500 checkpoint_every=500 eval_episodes=2
       record_episodes=1 render_size=0 decay_windows=64 eval_max_steps=1000"
DEMA="token_order=RAS embed_dim=128 d_model=64 n_layer=3 d_state=64 embed_norm=none window_padding=left
      rtg_form=previous decay_all=true train_padding=left"
# The DT of the same repository: 128 wide, ReLU, (R, s, a), its timestep embedding, decay on everything
DT="token_order=RSA embed_dim=0 d_model=128 n_layer=3 activation=relu embed_norm=layernorm window_padding=none
    rtg_form=current decay_all=true"
MED="hopper-medium halfcheetah-medium walker2d-medium"
ABL=""
if [ -n "${TRAIN_ONLY:-}" ]; then ABL="--no-ablations"; fi
S="$DL sweep --name study --store $STORE --workers $WORKERS --ablation-episodes 2 $ABL"
$S --datasets $MED --K 5 20 40 --set $SCHED $DEMA                           # score against K
$S --datasets $MED --K 20 --archs dt --set $SCHED $DT                       # DeMa against DT
$S --datasets $MED --K 20 --seeds 1 --set $SCHED $DEMA                      # a second seed
$S --datasets $MED --K 20 --timestep-embedding on --set $SCHED $DEMA        # timestep embedding
if [ -n "${TRAIN_ONLY:-}" ]; then exit 0; fi
$DL report --store "$STORE" --sweep study --out docs/study-report.md
