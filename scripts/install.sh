#!/usr/bin/env bash
# One-command set-up of the ACTIVE Python environment (a venv, a conda env or a system-wide Python: whichever
# `python3`, or $PYTHON, is): PyTorch first (pinned to the build this project is tested with), then monai-scrd
# (editable) with its test extras, then the optional MONAI Label server in a venv of its own that sees this
# environment's packages (scripts/install_label.sh; skip it with SCRD_SKIP_LABEL=1). Re-running it is harmless.
# Nothing here downloads model weights.
#
# PyTorch build: SCRD_TORCH_SPEC (default "torch==2.14.1 torchvision==0.29.1") and SCRD_TORCH_INDEX_URL (default:
# your pip configuration, i.e. PyPI, whose Linux wheels bundle CUDA, about 3 GB of it). CPU-only machines can save
# that with PyTorch's CPU index:
#   SCRD_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/install.sh
# Measured sizes: benchmarks/results/env_sizes.txt (scripts/env_sizes.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
read -r -a TORCH_SPEC <<<"${SCRD_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
TORCH_INDEX=()
if [ -n "${SCRD_TORCH_INDEX_URL:-}" ]; then
    TORCH_INDEX=(--index-url "$SCRD_TORCH_INDEX_URL")
fi
echo "installing into $("$PYTHON" -c 'import sys; print(sys.prefix)') (Python $("$PYTHON" -c 'import platform; print(platform.python_version())'))"
"$PYTHON" -m pip install --upgrade pip
"$PYTHON" -m pip install "${TORCH_INDEX[@]}" "${TORCH_SPEC[@]}"
"$PYTHON" -m pip install -e ".[test]"
if [ "${SCRD_SKIP_LABEL:-0}" = "0" ]; then
    PYTHON="$PYTHON" bash scripts/install_label.sh
fi
