#!/usr/bin/env bash
# Build models/state_readout: the state read-out that `wmgym eval fidelity` reads states with,
# and the held-out fidelity figures of models/default (docs/fidelity). On 2 CPU cores: about
# 8 + 4 minutes of collection, 9 of replay (cached in the datasets), the training time in
# models/state_readout/README.md, and the fidelity run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
# Read-out training data (seed 2) and the held-out test set (seed 1): no model was trained on
# either (models/default's data/sim64 uses seed 0); same families and expert qualities.
$BIN/wmgym data collect --family all --episodes 400 --quality 1.0 0.7 0.4 0.0 --out data/sim64_readout --seed 2 --workers 2
$BIN/wmgym data collect --family all --episodes 160 --quality 1.0 0.7 0.4 0.0 --out data/sim64_test --seed 1 --workers 2
$BIN/wmgym train readout --out models/state_readout --data.dataset data/sim64_readout \
  --optim.steps 3000 --optim.batch-size 64 --runtime.threads 2
$BIN/wmgym eval fidelity --bundle models/default --readout models/state_readout \
  --data.dataset data/sim64_test --out docs/fidelity
