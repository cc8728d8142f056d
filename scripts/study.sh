#!/usr/bin/env bash
# The paper's study on the embedded suite (hopper, halfcheetah, walker2d; medium and medium-replay),
# sized for 2 CPU cores: `make study` (about 4 hours on 2 cores). Resumable: rerun it after an
# interruption and finished runs are skipped, interrupted ones resumed, missing ablations added.
# Writes the report to docs/study-report.md.
#   STORE=store WORKERS=2 scripts/study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${STORE:-store}
WORKERS=${WORKERS:-2}
DL=${DEMA_LAB:-.venv/bin/dema-lab}
# a DeMa of about 100k parameters (DT: d_model 128, about 730k), 1500 steps of batch 32, two
# evaluation episodes per target and mode, two episodes per ablation
B="steps=1500 batch_size=32 lr=6e-4 warmup_steps=100 d_model=64 n_layer=3 d_state=16 eval_episodes=2
   record_episodes=1 render_size=0 decay_windows=64 checkpoint_every=500 eval_max_steps=1000"
MED="hopper-medium halfcheetah-medium walker2d-medium"
REP="hopper-medium-replay halfcheetah-medium-replay walker2d-medium-replay"
S="$DL sweep --name study --store $STORE --workers $WORKERS --ablation-episodes 2"
$S --datasets $MED --K 5 10 20 40 --set $B                                  # score against K
$S --datasets $MED --K 20 --archs dt --set $B d_model=128                   # DeMa against DT
$S --datasets $MED --K 20 --layouts BL3D --set $B                           # B3LD against BL3D
$S --datasets $MED --K 20 --timestep-embedding on --set $B                  # timestep embedding
$S --datasets $MED --K 20 --seeds 1 --set $B                                # spread over seeds
$S --datasets $REP --K 5 10 20 40 --set $B                                  # medium-replay
$DL report --store "$STORE" --sweep study --out docs/study-report.md
