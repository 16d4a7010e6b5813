#!/usr/bin/env bash
# Reproduce the default success probe (models/probe) on models/default's encoder, then its
# calibration figures (benchmarks/results/judge_figures.{json,md}). CPU; re-runnable.
# Timings on 2 CPU cores: loading the 400 episodes ~2 min, encoding their 16,900 frames once
# ~6 min (cached in runs/probe/probe), training 1000 steps ~1 min; figures (40 held-out
# episodes and their world-model replays) ~1.5 min.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DATA=${DATA:-data/sim64}
BUNDLE=${BUNDLE:-models/default}
OUT=${OUT:-models/probe}
THREADS=${THREADS:-1}

$BIN/wmgym train probe --bundle "$BUNDLE" --out "$OUT" --data.dataset "$DATA" \
  --runtime.threads "$THREADS"
$BIN/python -m benchmarks.judge_figures --probe "$OUT" --bundle "$BUNDLE" --dataset "$DATA" \
  --threads "$THREADS"
