"""MONAI Label integration of SCRD (optional extra: ``bash scripts/install_label.sh``).

* :class:`monai_scrd.label.app.SCRDLabelApp`: the app (one SCRD infer task: score, label and heatmap; one train task);
* :class:`monai_scrd.label.infer.SCRDInferTask`: the infer task;
* :class:`monai_scrd.label.train.SCRDTrainTask`: the train task (the bundle's training on the studies marked normal);
* ``python -m monai_scrd.label app DIR``: write an app folder (``main.py``) for ``monailabel start_server --app DIR``;
* ``python -m monai_scrd.label serve --studies DIR --bundle bundles/scrd``: write the app and start the server.

Importing this package does not import monailabel; its submodules do.
"""

from __future__ import annotations

import os
import sys

__all__ = ["write_app", "MAIN_PY", "default_label_venv"]

MAIN_PY = '''"""MONAI Label app serving SCRD (written by `python -m monai_scrd.label app`). Options: see monai_scrd.label.app."""

from monai_scrd.label.app import SCRDLabelApp  # noqa: F401 - monailabel picks the MONAILabelApp subclass of main.py
'''


def write_app(app_dir: str | os.PathLike) -> str:
    """Create (or refresh) a MONAI Label app folder whose ``main.py`` serves SCRD; returns its absolute path.

    MONAI Label writes ``model/``, ``lib/``, ``logs/`` and ``bin/`` into the app folder, so keep it out of the
    source tree (e.g. ``runs/label_app``)."""
    app_dir = os.path.abspath(os.fspath(app_dir))
    os.makedirs(app_dir, exist_ok=True)
    with open(os.path.join(app_dir, "main.py"), "w") as f:
        f.write(MAIN_PY)
    return app_dir


def default_label_venv() -> str:
    """Where ``scripts/install_label.sh`` puts the MONAI Label venv of the running Python environment, and where
    ``python -m monai_scrd.label serve`` looks for it: ``$SCRD_LABEL_VENV`` if set; else inside the environment,
    ``<sys.prefix>/monai-scrd-label``, for a venv or a conda env (so each environment has its own, removed with it);
    else, for a system-wide Python, ``~/.cache/monai-scrd/label-venv``."""
    if os.environ.get("SCRD_LABEL_VENV"):
        return os.path.abspath(os.path.expanduser(os.environ["SCRD_LABEL_VENV"]))
    if sys.prefix != sys.base_prefix or os.path.isdir(os.path.join(sys.prefix, "conda-meta")):
        return os.path.join(sys.prefix, "monai-scrd-label")
    return os.path.join(os.path.expanduser("~"), ".cache", "monai-scrd", "label-venv")
