#!/usr/bin/env bash
# Train the dynamics model of a bundle on a lent GPU in one prepared command (issue 22, item 4).
#
#   bash scripts/train_on_gpu.sh prepare   # here, on the CPU machine: pack latents, fetch wheels
#   bash scripts/train_on_gpu.sh run       # there, through the device tool (see below)
#
# `prepare` writes what has to travel into gitignored folders:
#   /.gpu/latents.safetensors   the train/val latents of $DATA in fp16 (`wmgym train pack`)
#   /.gpu/bundle/               the bundle's config.json and encoder/decoder weights (no dynamics)
#   /.whl/                      wheels the device lacks (gymnasium, tyro, tqdm and their deps)
# and prints the size of what travels. The device tool copies the working tree too, and today's
# tracked files are about 44 MB (docs/, models/): move docs/ and models/ aside before the run
# (`prepare` says how) so that tree + carried files stay within 64 MiB.
#
# `run` (on the device) installs the wheels, trains $STEPS steps of $BATCH clips under bf16
# autocast on cuda within $SECONDS_BUDGET seconds (resumable: it checkpoints into /.gpu/run),
# keeps the best weights by the held-out loss, and writes the bundle to $OUT/bundle with the
# dynamics weights stored in bf16 (half the bytes: one file under the tool's 16 MiB limit).
# On a machine without CUDA it runs the same path on the CPU (what CI tests, on a tiny config).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
BUNDLE=${BUNDLE:-models/default}
DATA=${DATA:-data/sim64}
KIT=${KIT:-.gpu}
BIN=${BIN:-.venv/bin}
STEPS=${STEPS:-40000}
BATCH=${BATCH:-256}
SECONDS_BUDGET=${SECONDS_BUDGET:-480}
OUT=${OUT:-outputs/gpu}
DYNAMICS_ARGS=${DYNAMICS_ARGS:---preset tiny --patch-size 2 --history 2 --target delta --shift 3.0 --mean-head-width 96 --mean-head-depth 4 --mean-head-unroll 3 --num-steps 4 --temperature 0.5}

case "$MODE" in
  prepare)
    mkdir -p "$KIT/bundle" .whl
    $BIN/wmgym train pack --bundle "$BUNDLE" --data.dataset "$DATA" --out "$KIT/latents.safetensors" --dtype fp16
    $BIN/python - "$BUNDLE" "$KIT/bundle" <<'PY'
import json, shutil, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
config = json.loads((src / "config.json").read_text())
config.pop("dynamics", None)  # trained anew there
for name in [n for n in config.get("files", {}) if n == "dynamics.safetensors"]:
    config["files"].pop(name)
for name in config.get("files", {}):
    shutil.copy2(src / name, dst / name)
(dst / "config.json").write_text(json.dumps(config, indent=1))
PY
    $BIN/python -m pip download -q --no-deps -d .whl gymnasium cloudpickle farama-notifications \
      typing-extensions tyro docstring-parser typeguard rich markdown-it-py mdurl pygments shtab tqdm
    du -ch "$KIT" .whl | tail -1
    echo "carry: [\"$KIT\", \".whl\"]; before the run: mkdir -p /tmp/aside && mv docs models /tmp/aside"
    echo "(and put them back after: mv /tmp/aside/docs /tmp/aside/models .)"
    ;;
  run)
    PY=${PYTHON:-python}
    if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
      $PY -m pip install -q --no-index --no-deps .whl/*.whl 2>/dev/null || true
    fi
    DEVICE=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
    AMP=$([ "$DEVICE" = cuda ] && echo bf16 || echo none)
    rm -rf "$OUT/bundle" && mkdir -p "$OUT" && cp -r "$KIT/bundle" "$OUT/bundle"
    # shellcheck disable=SC2086
    PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" $PY -c "import sys; from wmgym.cli import main; sys.exit(main(sys.argv[1:]))" \
      train dynamics --bundle "$OUT/bundle" --packed "$KIT/latents.safetensors" $DYNAMICS_ARGS \
      --keep-best --val-every 250 --optim.steps "$STEPS" --optim.batch-size "$BATCH" \
      --optim.seconds "$SECONDS_BUDGET" --optim.checkpoint-every 1000 \
      --runtime.device "$DEVICE" --runtime.amp "$AMP" --run-dir "$KIT/run"
    PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" $PY -c "import sys; from train.packed import store_in_bf16; print(store_in_bf16(sys.argv[1]))" "$OUT/bundle"
    ls -la "$OUT/bundle"
    ;;
  *)
    echo "usage: bash scripts/train_on_gpu.sh prepare|run   (see the header)" >&2
    exit 2
    ;;
esac
