#!/usr/bin/env bash
# Create (or update) ./.venv with the plugin and everything it needs.
# Usage: bash tools/setup_env.sh        (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade 'pip>=23'
"$VENV/bin/python" -m pip install -q -e '.[mim,tests]'
# openmim without its heavy optional dependency chain (opendatalab).
"$VENV/bin/python" -m pip install -q --no-deps 'openmim==0.3.9'
"$VENV/bin/python" -c "import mmseg_hosvd, mmseg.models, mim; print('environment ready:', mmseg_hosvd.__version__)"
