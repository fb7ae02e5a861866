#!/usr/bin/env bash
# Makes Fashion-MNIST available offline: Debian's dataset-fashion-mnist package when we can
# install it; otherwise diffnas downloads it from the official source on first use.
set -uo pipefail
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/train-images-idx3-ubyte.gz" ] || [ -n "${DIFFNAS_DATA:-}" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[data] installing Debian package dataset-fashion-mnist"
  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) \
    || echo "[data] could not install dataset-fashion-mnist; diffnas will try to download it"
else
  echo "[data] not root: diffnas will download Fashion-MNIST (or: sudo apt-get install dataset-fashion-mnist)"
fi
