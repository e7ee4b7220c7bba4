#!/usr/bin/env bash
# Create (or update) ./.venv with the plugin and everything it needs.
# Usage: bash tools/setup_env.sh        (from the repository root)
# The exact set comes from the lock file requirements/cpu.txt (CPU torch,
# mmcv-lite; Python 3.11); the plugin's own install must then find nothing
# new to install.
# torch first, alone (--no-deps: only torch is looked up there), with
# PyTorch's CPU wheel index as an extra index (TORCH_INDEX): its 2.13.0+cpu
# satisfies the lock's torch==2.13.0 and is preferred to PyPI's multi-GB
# CUDA build. Where that index cannot be reached pip only warns (one retry,
# 10 s time-out) and takes torch from PyPI or a configured find-links/index.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade 'pip>=23'
"$VENV/bin/python" -m pip install -q --no-deps --retries 1 --timeout 10 \
    --extra-index-url "$TORCH_INDEX" \
    "$(grep -E '^torch==' requirements/cpu.txt)"
"$VENV/bin/python" -m pip install -q -r requirements/cpu.txt
# the lock must be complete: the plugin's own install adds nothing else
"$VENV/bin/python" -m pip install -q --dry-run --report "$VENV/plugin_report.json" -e '.[mim,tests]'
"$VENV/bin/python" - "$VENV/plugin_report.json" <<'PY'
import json, sys
names = [p['metadata']['name'] for p in json.load(open(sys.argv[1]))['install']]
extra = [n for n in names if n.lower().replace('-', '_') != 'mmseg_hosvd']
if extra:
    sys.exit(f'requirements/cpu.txt is incomplete: the plugin would also install {extra}')
PY
"$VENV/bin/python" -m pip install -q -e '.[mim,tests]'
# openmim without its heavy optional dependency chain (opendatalab).
"$VENV/bin/python" -m pip install -q --no-deps 'openmim==0.3.9'
"$VENV/bin/python" -c "import mmseg_hosvd.engine, mmseg.models, mim; print('environment ready:', mmseg_hosvd.__version__)"
