#!/usr/bin/env bash
# The main job: set up (once), a short Semantic-DARTS search on real data (Fashion-MNIST,
# preset semantic-cpu), then a short retrain of the found cell from scratch with its test
# accuracy. Extra arguments go to `diffnas search`. Running it again continues (or just
# reports) the runs in runs/main and runs/main-train instead of starting over.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh run
scripts/fetch-data.sh
resume() { [ -f "$1/checkpoint.pt" ] && echo --resume || true; }
.venv/bin/diffnas search --preset semantic-cpu --out runs/main $(resume runs/main) "$@"
.venv/bin/diffnas train runs/main --preset cpu --out runs/main-train $(resume runs/main-train)
