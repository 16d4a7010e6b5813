#!/usr/bin/env bash
# Reproduce models/default's light decoder (bundle section `decoder_light`): a base-16 pixel
# decoder on the VAE's frozen latents, 0.22 GFLOP per 64x64 frame against the VAE decoder's 1.22,
# for fast rollouts (`decoder="light"`, `--decoder light`). The bundle's default decoder, the
# VAE's own, is unchanged. 10000 steps of batch 16 (L1 + 0.5 ST-LPIPS against the true frames),
# the learning rate decaying to a tenth; about 35 min on 2 cores after loading the episodes.
# Copy a previous decoder run's latents.safetensors (the latent cache of this encoder) into
# runs/decoder_light first to skip encoding the frames again. Then its held-out evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DATA=${DATA:-data/sim64}
BUNDLE=${BUNDLE:-models/default}
THREADS=${THREADS:-2}

$BIN/wmgym train decoder --bundle "$BUNDLE" --name light --base-channels 16 \
  --data.dataset "$DATA" --run-dir runs/decoder_light --optim.steps 10000 \
  --optim.min-lr-ratio 0.1 --runtime.threads "$THREADS"
$BIN/wmgym eval dynamics --bundle "$BUNDLE" --wm.decoder light --data.dataset "$DATA" \
  --max-episodes 160 --out docs/eval_light
