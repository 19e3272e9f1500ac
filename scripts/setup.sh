#!/usr/bin/env bash
# Create or refresh the project's virtual environment and the embedded default data.
# Idempotent: a second run only reinstalls when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

FMNIST_DIR=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST_DIR/t10k-labels-idx1-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian package dataset-fashion-mnist"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "[setup] Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'" >&2
  fi
fi

# Fonts and emoji glyphs for copy detection's overlays (curate/copydetect/augment.py, benchmarks/copy_detection.py).
if [ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian packages fonts-dejavu-core fonts-noto-color-emoji"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-dejavu-core fonts-noto-color-emoji >/dev/null
  else
    echo "[setup] overlay fonts missing: run 'sudo apt-get install fonts-dejavu-core fonts-noto-color-emoji'" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.dinolab-installed"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "[setup] installing dinolab and its dependencies into $VENV (first time: a few minutes)"
  "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[test,demo]"
  touch "$STAMP"
fi
