#!/usr/bin/env bash
# Reproduce the committed small-VLA checkpoints (models/policies/small-vla-*) on one CPU core.
#
# 1. Demonstrations: the successful episodes of data/sim64 (the world-model dataset; made by
#    scripts/make_default_bundle.sh, re-made here if missing) plus data/experts64, 400 more
#    quality-1 expert episodes (100 per family; reset seeds 100003.. so no layout repeats
#    data/sim64's 0..399 or the evaluation's 10000..).
# 2. One behaviour-cloning run; its weights after 3000 and 8000 steps are exported as the
#    smaller training budgets, the end of the run (24000 steps) as the largest.
# 3. Success in the sim per budget and family: benchmarks/results/policy_figures.{json,md,png}.
#
# Every step resumes where it stopped when re-run (datasets by episode, training by checkpoint).
# Timings on the build machine (2 cores shared with other jobs, 1 used here): collection
# 12.7 min, training 33 min (24000 steps, ~80 ms each), evaluation 7.5 min (240 episodes).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-models/policies}
STEPS=${STEPS:-24000}
SNAPSHOTS=${SNAPSHOTS:-"3000 8000"}
export OMP_NUM_THREADS=1 MUJOCO_GL=${MUJOCO_GL:-egl}

if [ ! -f data/sim64/meta/info.json ]; then
  $BIN/wmgym data collect --family all --episodes 400 --quality 1.0 0.7 0.4 0.0 --out data/sim64 --workers 1
fi
$BIN/wmgym data collect --family all --episodes 400 --quality 1.0 --seed 1 --out data/experts64 --workers 1

# shellcheck disable=SC2086  # SNAPSHOTS is a list of step counts
$BIN/wmgym train policy --data.dataset data/sim64 data/experts64 \
  --out "$OUT/small-vla-$STEPS" --snapshot-steps $SNAPSHOTS --snapshot-out "$OUT/small-vla-{step}" \
  --optim.steps "$STEPS" --runtime.threads 1 --run-dir runs/policies/small-vla

$BIN/python -m benchmarks.policy_figures --policies "$OUT"/small-vla-* --episodes 20
