#!/usr/bin/env bash
# Reproduce the default success probe (models/probe) on models/default's encoder, then its
# calibration figures (benchmarks/results/judge_figures.{json,md}). CPU; re-runnable.
# The probe also trains on the world model's replays of 720 training episodes (labelled by
# what happened in the recorded episode), so it learns to judge generated frames.
# Timings on one CPU core: encoding the 1600 episodes' 67,600 frames once ~25 min (cached per
# episode in runs/probe/probe; copy a dynamics run's latents.safetensors there to skip it:
# same encoder, same cache), 720 replays ~12 min and their encoding ~12 min, training 1000
# steps ~1 min; figures (160 held-out episodes and their world-model replays) ~6 min.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DATA=${DATA:-data/sim64}
BUNDLE=${BUNDLE:-models/default}
OUT=${OUT:-models/probe}
THREADS=${THREADS:-1}

$BIN/wmgym train probe --bundle "$BUNDLE" --out "$OUT" --data.dataset "$DATA" \
  --replay-bundle "$BUNDLE" --replay-episodes 720 --runtime.threads "$THREADS"
$BIN/python -m benchmarks.judge_figures --probe "$OUT" --bundle "$BUNDLE" --dataset "$DATA" \
  --threads "$THREADS"
