#!/usr/bin/env bash
# Reproduce models/probe_latents: the success probe of the fast setting, which reads the world
# model's own latents (`--judge-inputs latents`). The same recipe as models/probe
# (scripts/make_default_probe.sh), except that its 720 world-model replays are sampled as the
# fast setting samples (bf16, 1 denoising step) and keep the model's latents instead of decoded
# frames (`--replay-inputs latents`), so it trains on what it reads.
# Copy a previous probe run's latents.safetensors (the latent cache of this encoder, e.g. the
# run of scripts/make_default_probe.sh) into runs/probe_latents/probe first to skip encoding the
# recorded episodes again (~25 min on one core). Then: 720 + 160 replays, about 5 min on 2
# cores; training about 1 min; then its replay figures.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DATA=${DATA:-data/sim64}
BUNDLE=${BUNDLE:-models/default}
OUT=${OUT:-models/probe_latents}
THREADS=${THREADS:-2}

$BIN/wmgym train probe --bundle "$BUNDLE" --out "$OUT" --data.dataset "$DATA" \
  --replay-bundle "$BUNDLE" --replay-episodes 720 --replay-inputs latents \
  --replay-wm.num-steps 1 --replay-wm.dtype bf16 --runtime.threads "$THREADS"
# needs a finished agreement run's sim/ (wmgym bench agreement --seeds 0 1 2 3 4 5 6 7 ...)
if [ -d "${SIM_DIR:-outputs/agreement_s8/sim}" ]; then
  $BIN/python -m benchmarks.replay_figures --sim-dir "${SIM_DIR:-outputs/agreement_s8/sim}" \
    --seeds 0 1 2 3 4 5 6 7 --judge-path "$OUT" --settings fp32+latents,bf16x1+latents \
    --out "${FIGURES:-benchmarks/results/probe_latents}"
fi
