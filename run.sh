#!/usr/bin/env bash
# The main job: set up (once), then a short architecture search on real data
# (Fashion-MNIST) with the embedded default preset. Extra arguments go to `diffnas search`.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
scripts/fetch-data.sh
exec .venv/bin/diffnas search --preset cpu --out runs/main "$@"
