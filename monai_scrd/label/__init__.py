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

__all__ = ["write_app", "MAIN_PY"]

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
