#!/usr/bin/env bash
# Create the separate venv for benchmarks/nni_darts.py at bench-venvs/nni
# (repo-relative, gitignored).  Idempotent: exits at once when the venv is
# already there and imports NNI's DARTS strategy; pass --force to rebuild.
#
# Pins, and why (found by installing on a Python 3.11 / CPU-only machine):
#   torch==2.13.0        the local CPU wheel; anything unpinned pulls a CUDA build.
#                        Repeated in every pip call so no dependency can move it.
#   nni==3.0             the release benchmarked (Aug 2023).  Its own deps are
#                        fine with numpy 2 / pandas 2+ / scipy 1.1x.
#   pytorch-lightning==2.0.9
#                        NNI 3.0's one-shot code imports
#                        pytorch_lightning.utilities.combined_loader (>=2.0) and
#                        calls optimizer_step/lr_scheduler_step with the 2.0
#                        signatures; it predates 2.1.  2.0.9 is the last 2.0.x.
#   setuptools<81        lightning_fabric 2.0.x does
#                        __import__("pkg_resources").declare_namespace(...),
#                        and setuptools>=81 no longer ships pkg_resources.
#   (torchmetrics is left to resolve; 1.x works with NNI 3.0's
#   ClassificationModule, which passes task='multiclass'.)
#
# Usage: bash benchmarks/setup_nni_venv.sh [--force] [--python PYTHON]
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NNI_VENV:-${REPO_ROOT}/bench-venvs/nni}"   # NNI_VENV overrides (testing)
PYTHON_BIN="${PYTHON:-}"
FORCE=0

while [[ $# -gt 0 ]]; do
    case "$1" in
        --force) FORCE=1; shift ;;
        --python) PYTHON_BIN="$2"; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

TORCH_PIN="torch==2.13.0"
NNI_PIN="nni==3.0"
PL_PIN="pytorch-lightning==2.0.9"
SETUPTOOLS_PIN="setuptools<81"

check() {
    "${VENV}/bin/python" -W ignore - <<'EOF' >/dev/null 2>&1
import torch, nni, pytorch_lightning
assert nni.__version__ == "3.0", nni.__version__
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert pytorch_lightning.__version__.startswith("2.0."), pytorch_lightning.__version__
from nni.nas.strategy import DARTS  # noqa: F401  (pulls lightning + pkg_resources)
from nni.nas.hub.pytorch import DARTS as DartsSpace  # noqa: F401
EOF
}

if [[ ${FORCE} -eq 0 && -x "${VENV}/bin/python" ]] && check; then
    echo "bench-venvs/nni already set up: $("${VENV}/bin/python" -W ignore -c \
        'import nni, torch, pytorch_lightning as pl; print("nni", nni.__version__, "torch", torch.__version__, "pytorch-lightning", pl.__version__)')"
    exit 0
fi

if [[ -z "${PYTHON_BIN}" ]]; then
    for cand in python3.11 python3 python; do
        if command -v "${cand}" >/dev/null 2>&1; then PYTHON_BIN="${cand}"; break; fi
    done
fi
if [[ -z "${PYTHON_BIN}" ]]; then
    echo "no python interpreter found" >&2
    exit 1
fi
echo "creating ${VENV} with $(${PYTHON_BIN} --version 2>&1)"

if [[ ${FORCE} -eq 1 ]]; then
    rm -rf "${VENV}"
fi
mkdir -p "$(dirname "${VENV}")"
"${PYTHON_BIN}" -m venv "${VENV}"

PIP=("${VENV}/bin/python" -m pip install --disable-pip-version-check --progress-bar off)

# One resolver run for everything, torch pinned in the same command.
"${PIP[@]}" "${TORCH_PIN}" "${NNI_PIN}" "${PL_PIN}" "${SETUPTOOLS_PIN}"

if ! check; then
    echo "bench-venvs/nni was installed but NNI's DARTS does not import; details:" >&2
    "${VENV}/bin/python" -c 'from nni.nas.strategy import DARTS' >&2 || true
    exit 1
fi
"${VENV}/bin/python" -W ignore -c \
    'import nni, torch, pytorch_lightning as pl, numpy, setuptools; print("ok: nni", nni.__version__, "torch", torch.__version__, "pytorch-lightning", pl.__version__, "numpy", numpy.__version__, "setuptools", setuptools.__version__)'
