#!/usr/bin/env bash
# One-command set-up on a fresh machine: PyTorch first (pinned to the build this project is tested with), then
# monai-scrd with its test extras, then the optional MONAI Label server in its own venv (scripts/install_label.sh;
# skip it with SCRD_SKIP_LABEL=1). Nothing here downloads model weights.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install --upgrade pip
"$PYTHON" -m pip install "torch==2.14.1" "torchvision==0.29.1"
"$PYTHON" -m pip install -e ".[test]"
if [ "${SCRD_SKIP_LABEL:-0}" = "0" ]; then
    PYTHON="$PYTHON" bash scripts/install_label.sh
fi
