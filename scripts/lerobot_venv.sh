#!/usr/bin/env bash
# A third virtual environment with the published `lerobot` package, which needs torchvision and
# its own torch (PyPI's CUDA build, about 8 GB with its libraries; it runs on CPU): our pinned
# CPU torch cannot share it (docs/design.md). tests/test_lerobot_interop.py reads a dataset that
# `wmgym data collect` wrote with lerobot's own LeRobotDataset. Idempotent:
# `bash scripts/lerobot_venv.sh` (.ci/run and `make interop-lerobot` run it).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LEROBOT_VENV:-.venv-lerobot}
[ -f "$VENV/.installed" ] && exit 0
python3 -m venv "$VENV"
for attempt in 1 2 3; do  # a large download: retry a dropped connection
  "$VENV/bin/pip" install -q "lerobot==0.4.4" && break
  [ "$attempt" = 3 ] && exit 1
  echo "pip failed (attempt $attempt); retrying" >&2
  sleep 10
done
touch "$VENV/.installed"
echo "lerobot environment ready: $("$VENV/bin/python" -c 'import lerobot, torch; print("lerobot", lerobot.__version__, "torch", torch.__version__)')"
