#!/usr/bin/env bash
# Idempotent set-up: a virtual environment at .venv with PyTorch (CPU build) and diffnas.
# `scripts/setup.sh` installs the test extra too (pytest, ruff, the optional parts the tests
# exercise); `scripts/setup.sh run` only what `diffnas` itself needs (./run.sh: a shorter
# first set-up). Slow steps run only once; a second call takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
kind=${1:-test}
case "$kind" in
  test) spec=".[test]" ;;
  run) spec="." ;;
  *) echo "usage: scripts/setup.sh [test|run]" >&2; exit 2 ;;
esac
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
# reinstall when pyproject.toml changes or the venv serves another checkout (editable install);
# a test install serves ./run.sh as well
want="$(cat pyproject.toml | sha256sum | cut -c1-16) $(pwd -P)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$have" != "$want test" ] && [ "$have" != "$want $kind" ]; then
  echo "[setup] installing diffnas${spec#.}"
  .venv/bin/pip install -q -e "$spec"
  echo "$want $kind" > "$stamp"
fi
