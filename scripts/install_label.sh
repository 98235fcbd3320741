#!/usr/bin/env bash
# Set up the optional MONAI Label server for the ACTIVE Python environment (a venv, a conda env or a system-wide
# Python: whichever `python3`, or $PYTHON, is), in a venv of its own, leaving the active environment untouched.
#
# Why a separate venv: monailabel 0.8.5 itself needs nothing that conflicts with this project, but two of its
# dependencies do: pydicom-seg 0.4.1 pins numpy<2 and jsonschema<4, numpymaxflow pins numpy<2 (both only used for
# DICOM-SEG export and scribbles, which the SCRD app does not use). Resolving them would downgrade numpy from 2.x
# and break pandas/numba/mlflow in the main environment.
#
# How the label venv sees the active environment's packages (torch, MONAI, numpy 2.x, monai-scrd, ...): not with
# `venv --system-site-packages`, which exposes the packages of the *base* interpreter (for a venv or a conda env, not
# the ones installed in it), but with a file `scrd_active_env.pth` in the label venv's site-packages. Python runs it at
# start-up: it calls site.addsitedir() on each site-packages folder of the active environment, in that environment's
# own order, so their .pth files (editable installs included) work too. The label venv's own site-packages stays
# first: monailabel and the few packages it adds come from there, everything else from the active environment. pip
# in the label venv sees the active environment's packages as installed; constraints frozen from that environment
# forbid it to change any of them (torch included). pydicom-seg is installed without its dependencies: monailabel
# imports it at start-up, the SCRD app never calls it.
#
# Where: $SCRD_LABEL_VENV if set; else inside the active environment (<prefix>/monai-scrd-label) for a venv or conda
# env, so each environment has its own and removing the environment removes it; else (system-wide Python)
# ~/.cache/monai-scrd/label-venv. `python -m monai_scrd.label serve ...`, run in the active environment, finds it there
# (monai_scrd.label.default_label_venv) and runs the server with its Python.
#
# Re-running is idempotent: the venv is kept when it was made from the same interpreter (re-created when not, or when
# it is an old --system-site-packages one), the .pth file is rewritten, pip only adds what is missing.
#
# Usage: bash scripts/install_label.sh         (after scripts/install.sh, which calls it, in the same environment)
# Takes under a minute or two with a warm pip cache; nothing here downloads model weights.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
MONAILABEL_VERSION=${MONAILABEL_VERSION:-0.8.5}
VENV=$(PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c \
    "from monai_scrd.label import default_label_venv; print(default_label_venv())")
# The interpreter behind the active environment: a label venv made from another one is re-created.
WHO='import sys, os; print(os.path.realpath(sys.base_prefix), sys.version)'
if [ -x "$VENV/bin/python" ]; then
    if [ "$("$VENV/bin/python" -c "$WHO")" != "$("$PYTHON" -c "$WHO")" ] \
        || grep -qiE '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg"; then
        echo "re-creating $VENV (made from another interpreter, or with --system-site-packages)"
        "$PYTHON" -m venv --clear "$VENV"
    fi
else
    "$PYTHON" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
SITE=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

# The active environment's site-packages folders (as its own sys.path orders them) -> scrd_active_env.pth.
"$PYTHON" - "$SITE" <<'PYEOF'
import os
import site
import sys

site_dirs = set(map(os.path.realpath, site.getsitepackages()))
if site.ENABLE_USER_SITE:
    site_dirs.add(os.path.realpath(site.getusersitepackages()))
folders = []
for entry in sys.path:
    path = os.path.realpath(entry) if entry else ""
    if path in site_dirs and os.path.isdir(path) and path not in folders:
        folders.append(path)
if not folders:
    sys.exit(f"{sys.executable}: no site-packages folder found on sys.path")
with open(os.path.join(sys.argv[1], "scrd_active_env.pth"), "w") as f:
    f.write(f"# written by monai-scrd's scripts/install_label.sh: the packages of {sys.prefix}\n")
    f.write("import site; " + "; ".join(f"site.addsitedir({p!r})" for p in folders) + "\n")
print("label venv sees:", *folders)
PYEOF

# Freeze every package of the active environment at its installed version: pip may add packages, never change one.
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
"$PYTHON" -m pip list --format=freeze 2>/dev/null | grep -E '^[A-Za-z0-9_.-]+==' \
    | grep -viE '^(pip|setuptools|wheel|monai-scrd)==' >"$CONSTRAINTS"

"$VPY" -m pip install -c "$CONSTRAINTS" \
    "uvicorn>=0.29.0" "pydantic>=2.7.0" "pydantic-settings>=2.2.1" "python-dotenv>=1.0.1" "fastapi>=0.110.2" \
    "python-multipart>=0.0.9" "httpx>=0.27.0" "schedule>=1.2.1" "dicomweb-client[gcp]>=0.59.1" "timeloop>=1.0.2" \
    "expiringdict>=1.2.2" "expiring_dict>=1.1.0" "cachetools>=5.3.3" "watchdog>=4.0.0" "pynetdicom>=2.0.2" \
    "pynrrd>=1.0.0" "girder-client>=3.2.3" "einops>=0.7.0" "pyyaml>=6.0.1" "filelock>=3.11.0" "passlib>=1.7.4" \
    "pyjwt>=2.8.0" "bcrypt>=4.1.2" "shapely>=2.0.4" "requests>=2.31.0" "requests-toolbelt>=1.0.0" "urllib3>=2.2.1" \
    "google-auth>=2.29.0" "SimpleITK" "itk" "psutil" "scikit-image"
# monailabel and pydicom-seg last, without their dependencies: installed first, they made the install above end with a
# red "ERROR: pip's dependency resolver does not currently take into account..." (pip checks the packages it installs
# against those already there, and pydicom-seg asks for numpy<2, jsonschema<4, monailabel for numpymaxflow...: the
# pins this venv leaves out on purpose, see the top). A --no-deps install makes no such check: no false error.
"$VPY" -m pip install --no-deps "monailabel==$MONAILABEL_VERSION" "pydicom-seg==0.4.1"

# pydicom-seg 0.4.1 (imported by monailabel's infer endpoint at start-up) imports pydicom._storage_sopclass_uids,
# which pydicom 3 (needed by dicomweb-client>=0.61) no longer has: provide it from pydicom.uid, in this venv only.
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

# Check: monailabel from the label venv; numpy, torch and monai_scrd from the active environment (never a copy).
(cd / && "$VPY" - "$VENV" <<'PYEOF'
import os
import sys

import monailabel
import monailabel.app  # noqa: F401 - what the server imports at start-up
import monai_scrd
import numpy
import torch

venv = os.path.realpath(sys.argv[1])
inside = [m.__name__ for m in (numpy, torch, monai_scrd) if os.path.realpath(m.__file__).startswith(venv + os.sep)]
if inside:
    sys.exit(f"error: {', '.join(inside)} installed into the label venv {venv} instead of coming from the active environment")
print("monailabel", monailabel.__version__, "| numpy", numpy.__version__, "torch", torch.__version__, "monai_scrd",
      os.path.dirname(monai_scrd.__file__), "(from the active environment)")
PYEOF
)
echo "MONAI Label venv ready: $VENV (start a server: python -m monai_scrd.label serve --studies DIR --bundle bundles/scrd)"
