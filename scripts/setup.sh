#!/usr/bin/env bash
# Idempotent set-up: a virtual environment at .venv with PyTorch (CPU build) and diffnas.
# Slow steps run only once; a second call takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "[setup] installing PyTorch (CPU build)"
  # The pin takes the local CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/pip install -q torch==2.13.0
fi
stamp=.venv/.diffnas-installed
# reinstall when pyproject.toml changes or the venv serves another checkout (editable install)
want="$(cat pyproject.toml | sha256sum | cut -c1-16) $(pwd -P)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing diffnas and its test tools"
  .venv/bin/pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
