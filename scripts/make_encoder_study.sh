#!/usr/bin/env bash
# Issue 20's latent spaces, each a bundle trained end to end on the same data with the same
# dynamics budget: the reconstruction VAE (models/default's recipe), the frozen ImageNet
# EfficientNet-Lite0 and the JEPA encoder pretrained here on the sim's videos, both with the
# S-VAE adapter and a pixel decoder (the paper's recipe for semantic spaces).
# Every step resumes when re-run. Usage: bash scripts/make_encoder_study.sh [vae|imagenet|jepa ...]
# Budget: DIT_STEPS / DIT_SECONDS per space (the same for all; the default 3600 s is one hour on
# one CPU core). Then compare: wmgym eval fidelity --bundle outputs/bundles/<space> ...
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DATA=${DATA:-data/sim64}
OUT=${OUT:-outputs/bundles}
THREADS=${THREADS:-1}
DIT_STEPS=${DIT_STEPS:-5500}
DIT_SECONDS=${DIT_SECONDS:-3600}
SPACES=${*:-vae imagenet jepa}
COMMON=(--data.dataset "$DATA" --runtime.threads "$THREADS")

for space in $SPACES; do
  bundle="$OUT/study_$space"
  case "$space" in
    vae)
      $BIN/wmgym train encoder --bundle "$bundle" "${COMMON[@]}" --optim.steps 1000 --optim.batch-size 16 ;;
    imagenet)
      $BIN/wmgym train encoder --bundle "$bundle" --encoder imagenet
      $BIN/wmgym train adapter --bundle "$bundle" "${COMMON[@]}"
      $BIN/wmgym train decoder --bundle "$bundle" "${COMMON[@]}" ;;
    jepa)
      $BIN/wmgym train jepa --out runs/jepa "${COMMON[@]}"
      $BIN/wmgym train encoder --bundle "$bundle" --encoder jepa --path runs/jepa/encoder
      $BIN/wmgym train adapter --bundle "$bundle" "${COMMON[@]}"
      $BIN/wmgym train decoder --bundle "$bundle" "${COMMON[@]}" ;;
    *) echo "unknown latent space '$space' (vae, imagenet, jepa)" >&2; exit 2 ;;
  esac
  $BIN/wmgym train dynamics --bundle "$bundle" "${COMMON[@]}" --preset tiny --patch-size 2 \
    --history 2 --target delta --shift 3.0 --mean-head-width 96 --mean-head-depth 4 \
    --mean-head-unroll 3 --keep-best --val-every 250 --num-steps 4 --temperature 0.5 \
    --optim.steps "$DIT_STEPS" --optim.seconds "$DIT_SECONDS" --optim.batch-size 32
done
