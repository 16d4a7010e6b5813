#!/usr/bin/env bash
# A second virtual environment with the published clients whose pins clash with ours
# (openpi-client needs numpy<2): tests/test_interop.py drives them against our servers and
# clients. Idempotent: `bash scripts/interop_venv.sh` (make test runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${INTEROP_VENV:-.venv-interop}
[ -f "$VENV/.installed" ] && exit 0
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "openpi-client==0.1.2" typing_extensions
touch "$VENV/.installed"
echo "interop environment ready: $("$VENV/bin/python" -c 'import openpi_client, numpy; print("openpi-client", numpy.__version__)')"
