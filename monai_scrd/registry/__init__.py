"""MLflow model registry for SCRD: log a trained model as a self-contained MLflow pyfunc and register it.

The logged model carries the weights (``model.safetensors``), the :class:`~monai_scrd.registry.spec.ModelSpec`
(network arguments, preprocessing arguments, score reduction, fitted decision threshold, bundle metadata), a
signature, an input example and, by default, a copy of the ``monai_scrd`` code, so it loads in a fresh process
anywhere with only the third-party requirements installed. :func:`~monai_scrd.registry.loading.load_model`
(``load_model("models:/scrd@champion")``) loads it as a pyfunc after checking that it is SCRD's "model from code",
with MLflow's pickle loading off, so that loading never unpickles.

Command line (see ``python -m monai_scrd.registry --help``)::

    python -m monai_scrd.registry register --run-id <RUN_ID> --name scrd --alias champion --tracking-uri sqlite:///mlflow.db
    python -m monai_scrd.registry register --bundle-dir bundles/scrd --name scrd --alias champion
    python -m monai_scrd.registry predict --model-uri models:/scrd@champion image1.png image2.dcm

Backend: MLflow 3's registry needs a database store (``sqlite:///path/mlflow.db``); plain folders (file store) are
refused with a clear error.
"""

from __future__ import annotations

from monai_scrd.registry.errors import RegistryError
from monai_scrd.registry.loading import load_model, download_model, check_code_model
from monai_scrd.registry.logged_model import log_scrd_model
from monai_scrd.registry.registering import (
    RegisterModelHandler,
    register_model,
    register_run,
    register_trained_model,
    set_alias,
)
from monai_scrd.registry.spec import (
    ModelSpec,
    build_scorer,
    scorer_from_bundle,
    scorer_from_dir,
    spec_from_bundle,
    write_model_dir,
)
from monai_scrd.registry.spec_sources import spec_from_run
from monai_scrd.registry.tracking import resolve_tracking_uri

__all__ = [
    "RegistryError",
    "resolve_tracking_uri",
    "load_model",
    "download_model",
    "check_code_model",
    "spec_from_run",
    "log_scrd_model",
    "register_model",
    "register_run",
    "register_trained_model",
    "set_alias",
    "RegisterModelHandler",
    "ModelSpec",
    "spec_from_bundle",
    "write_model_dir",
    "build_scorer",
    "scorer_from_dir",
    "scorer_from_bundle",
]
