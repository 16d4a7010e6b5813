#!/usr/bin/env bash
# Issue 22's first lever, measured against its control: models/default grown into a state model
# (`--state`: every frame conditioned on the robot's proprioceptive state, the next state
# predicted by a small head) and, with the same minutes, models/default trained on without states.
# Both continue from the committed bundle (`--init-from models/default`), so the comparison is
# "states" against "the same extra training". On 2 CPU cores: packing ~5 min, then both runs side
# by side, one core each, $SECONDS_BUDGET seconds; then the fidelity figures of both.
#
#   bash scripts/make_state_bundle.sh            # pack, train both, evaluate both
#
# Every step resumes when re-run (training by checkpoint; a finished run rewrites its bundle).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DATA=${DATA:-data/sim64}
TEST=${TEST:-data/sim64_test}
STATE=${STATE:-models/state}
CONTROL=${CONTROL:-outputs/bundles/control}
STEPS=${STEPS:-4000}
SECONDS_BUDGET=${SECONDS_BUDGET:-2700}
PACKED=${PACKED:-outputs/packed/sim64_fp32.safetensors}
COMMON=(--preset tiny --patch-size 2 --history 2 --target delta --shift 3.0
  --mean-head-width 96 --mean-head-depth 4 --mean-head-unroll 3 --keep-best --val-every 250
  --num-steps 4 --temperature 0.5 --optim.steps "$STEPS" --optim.batch-size 32
  --optim.seconds "$SECONDS_BUDGET" --runtime.threads 1 --init-from models/default
  --packed "$PACKED")

for bundle in "$STATE" "$CONTROL"; do
  [ -f "$bundle/config.json" ] || { mkdir -p "$(dirname "$bundle")" && cp -r models/default "$bundle"; }
done
mkdir -p outputs/logs
[ -f "$PACKED" ] || $BIN/wmgym train pack --bundle models/default --data.dataset "$DATA" \
  --out "$PACKED" --dtype fp32
$BIN/wmgym train dynamics --bundle "$STATE" --state "${COMMON[@]}" > "outputs/logs/$(basename "$STATE").train.log" 2>&1 &
$BIN/wmgym train dynamics --bundle "$CONTROL" "${COMMON[@]}" > "outputs/logs/$(basename "$CONTROL").train.log" 2>&1 &
wait
for bundle in "$STATE" "$CONTROL"; do
  $BIN/wmgym eval fidelity --bundle "$bundle" --readout models/state_readout \
    --data.dataset "$TEST" --out "outputs/fidelity_$(basename "$bundle")"
done
