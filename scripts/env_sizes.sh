#!/usr/bin/env bash
# Disk used by the active Python environment (without its MONAI Label venv), by that MONAI Label venv, and by the
# biggest parts (PyTorch, its CUDA libraries), with the PyTorch build. The sizes quoted in the README come from:
#   bash scripts/env_sizes.sh >> benchmarks/results/env_sizes.txt        (run inside the activated environment)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PREFIX=$("$PYTHON" -c 'import sys; print(sys.prefix)')
SITE=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
LABEL=$(PYTHONPATH="$PWD" "$PYTHON" -c 'from monai_scrd.label import default_label_venv; print(default_label_venv())')
BUILD=$("$PYTHON" -c "import platform, torch; print(f'Python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda})')")
echo "## $(date -u +%Y-%m-%d): $BUILD"
run() { echo "\$ $*"; "$@"; }
run du -sh --exclude="$LABEL" "$PREFIX"
[ -d "$LABEL" ] && run du -sh "$LABEL"
for part in torch nvidia triton; do
    [ -d "$SITE/$part" ] && run du -sh "$SITE/$part"
done
echo
