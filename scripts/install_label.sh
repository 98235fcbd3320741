#!/usr/bin/env bash
# Set up the optional MONAI Label extra in its own virtual environment, leaving the main environment untouched.
#
# Why a separate venv: monailabel 0.8.5 itself needs nothing that conflicts with this project, but two of its
# dependencies do: pydicom-seg 0.4.1 pins numpy<2 and jsonschema<4, numpymaxflow pins numpy<2 (both only used for
# DICOM-SEG export and scribbles, which the SCRD app does not use). Resolving them would downgrade numpy from 2.x
# and break pandas/numba/mlflow in the main environment. So the venv sees the main environment's packages
# (--system-site-packages: torch, monai, numpy 2.x, monai-scrd, ...) and only adds monailabel and its remaining
# dependencies, under constraints that forbid pip from changing any package already installed (torch included).
# pydicom-seg is installed without its dependencies: monailabel imports it at start-up, the SCRD app never calls it.
#
# Usage: bash scripts/install_label.sh            (venv in $SCRD_LABEL_VENV, default ~/.cache/monai-scrd/label-venv)
# Then:  "$SCRD_LABEL_VENV/bin/python" -m monai_scrd.label serve --studies DIR --bundle bundles/scrd   (see README)
# Takes well under a minute with a warm pip cache; nothing here downloads model weights.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${SCRD_LABEL_VENV:-$HOME/.cache/monai-scrd/label-venv}
MONAILABEL_VERSION=${MONAILABEL_VERSION:-0.8.5}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
fi
VPY="$VENV/bin/python"

# Freeze every package of the main environment at its installed version: pip may add packages, never change one.
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
"$PYTHON" -m pip list --format=freeze 2>/dev/null | grep -E '^[A-Za-z0-9_.-]+==' | grep -viE '^(pip|setuptools|wheel|monai-scrd)==' >"$CONSTRAINTS"

"$VPY" -m pip install --no-deps "monailabel==$MONAILABEL_VERSION" "pydicom-seg==0.4.1"
"$VPY" -m pip install -c "$CONSTRAINTS" \
    "uvicorn>=0.29.0" "pydantic>=2.7.0" "pydantic-settings>=2.2.1" "python-dotenv>=1.0.1" "fastapi>=0.110.2" \
    "python-multipart>=0.0.9" "httpx>=0.27.0" "schedule>=1.2.1" "dicomweb-client[gcp]>=0.59.1" "timeloop>=1.0.2" \
    "expiringdict>=1.2.2" "expiring_dict>=1.1.0" "cachetools>=5.3.3" "watchdog>=4.0.0" "pynetdicom>=2.0.2" \
    "pynrrd>=1.0.0" "girder-client>=3.2.3" "einops>=0.7.0" "pyyaml>=6.0.1" "filelock>=3.11.0" "passlib>=1.7.4" \
    "pyjwt>=2.8.0" "bcrypt>=4.1.2" "shapely>=2.0.4" "requests>=2.31.0" "requests-toolbelt>=1.0.0" "urllib3>=2.2.1" \
    "google-auth>=2.29.0" "SimpleITK" "itk" "psutil" "scikit-image"

# pydicom-seg 0.4.1 (imported by monailabel's infer endpoint at start-up) imports pydicom._storage_sopclass_uids,
# which pydicom 3 (needed by dicomweb-client>=0.61) no longer has: provide it from pydicom.uid, in this venv only.
SITE=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cat >"$SITE/scrd_label_compat.py" <<'PYEOF'
"""monai-scrd label venv: make pydicom-seg 0.4.1 importable with pydicom 3 (alias of pydicom.uid)."""
import importlib.abc
import importlib.util
import sys


class _SopClassUidsAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    NAME = "pydicom._storage_sopclass_uids"

    def find_spec(self, fullname, path, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname == self.NAME else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        import pydicom.uid

        module.__dict__.update({k: v for k, v in vars(pydicom.uid).items() if not k.startswith("_")})


if not any(isinstance(f, _SopClassUidsAlias) for f in sys.meta_path):
    sys.meta_path.append(_SopClassUidsAlias())  # after the normal finders: pydicom 2's own module wins
PYEOF
echo "import scrd_label_compat" >"$SITE/scrd_label_compat.pth"

# monai_scrd from this checkout (editable, no dependencies: they come from the main environment), so that the venv
# never serves an older copy left by another checkout.
"$VPY" -m pip install --no-deps -e .
(cd / && "$VPY" -c "import monailabel, monailabel.app, monai_scrd, numpy, torch; print('monailabel', monailabel.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)")
echo "MONAI Label venv ready: $VENV (start a server: $VENV/bin/python -m monai_scrd.label serve --studies DIR --bundle bundles/scrd)"
