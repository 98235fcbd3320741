"""Log an SCRD model into the active MLflow run as a self-contained pyfunc "model from code": safetensors weights,
the JSON spec, threshold and metadata, a copy of the ``monai_scrd`` code and the pinned pip requirements."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence

from monai_scrd.registry.errors import RegistryError
from monai_scrd.registry.spec import GRAPH_FOLDER, SPEC_FILE, WEIGHTS_FILE, ModelSpec, write_model_dir

__all__ = ["log_scrd_model"]

MODEL_NAME_IN_RUN = "scrd_model"
# third-party packages the pyfunc imports when it scores (monai_scrd itself travels with the model by default)
RUNTIME_PACKAGES = ("torch", "torchvision", "monai", "numpy", "pandas", "nibabel", "pydicom", "pillow", "scipy", "timm", "mlflow",
                    "safetensors", "onnxruntime")


def _code_snapshot(dst: str) -> str:
    """A clean copy of the ``monai_scrd`` package (no caches) to ship with the model."""
    import monai_scrd

    src = os.path.dirname(os.path.abspath(monai_scrd.__file__))
    out = os.path.join(dst, "monai_scrd")
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc", "*.so"))
    return out


def _pip_requirements(include_code: bool) -> list[str]:
    from importlib import metadata

    reqs = []
    for name in RUNTIME_PACKAGES:
        try:
            version = metadata.version(name).split("+", 1)[0]
            reqs.append(f"{name}=={version}")
        except metadata.PackageNotFoundError:
            reqs.append(name)
    if not include_code:
        import monai_scrd

        reqs.append(f"monai-scrd=={monai_scrd.__version__}")
    return reqs


def log_scrd_model(
    checkpoint: str | os.PathLike,
    spec: ModelSpec,
    name: str = MODEL_NAME_IN_RUN,
    include_code: bool = True,
    example_paths: Sequence[str] | None = None,
    registered_model_name: str | None = None,
):
    """Log the model as an MLflow pyfunc in the active run (``mlflow.start_run()`` first).

    Args:
        checkpoint: ``{"model": state_dict}`` file; checked against ``spec``'s network before anything is logged.
        spec: network/preprocessing/threshold/metadata (see :func:`spec_from_bundle`, :func:`spec_from_run`).
        name: the model's name in the run.
        include_code: ship a copy of ``monai_scrd`` with the model (``code_paths``) so it loads without the package
            installed; when False, ``monai-scrd`` becomes a pip requirement.
        example_paths: image paths for the input example (default: a placeholder path).
        registered_model_name: also register it under this name.

    Returns:
        MLflow's ``ModelInfo`` (``model_uri`` is ``models:/<model id>``).
    """
    import mlflow

    from monai_scrd.registry.pyfunc import input_example, model_code_path, model_signature

    if mlflow.active_run() is None:
        raise RegistryError("log_scrd_model needs an active MLflow run (use register_model, or mlflow.start_run())")
    with tempfile.TemporaryDirectory(prefix="scrd_log_") as tmp:
        model_dir = write_model_dir(os.path.join(tmp, "model"), checkpoint, spec)
        artifacts = {"weights": os.path.join(model_dir, WEIGHTS_FILE), "spec": os.path.join(model_dir, SPEC_FILE)}
        if os.path.isdir(os.path.join(model_dir, GRAPH_FOLDER)):  # the compiled backends' graph, beside the weights
            artifacts["graphs"] = os.path.join(model_dir, GRAPH_FOLDER)
        if spec.threshold:
            artifacts["threshold"] = os.path.join(model_dir, "threshold.json")
            with open(artifacts["threshold"], "w") as f:
                json.dump(spec.threshold, f, indent=2)
        if spec.metadata:
            artifacts["metadata"] = os.path.join(model_dir, "metadata.json")
            with open(artifacts["metadata"], "w") as f:
                json.dump(spec.metadata, f, indent=2)
        code_paths = [_code_snapshot(os.path.join(tmp, "code"))] if include_code else None
        metadata = {
            "scrd_threshold": spec.threshold_value,
            "scrd_backbone": spec.network.get("backbone"),
            "scrd_image_size": spec.preprocessing.get("image_size", 256),
            "scrd_score_reduction": spec.score_reduction,
            "bundle_name": spec.metadata.get("name"),
            "bundle_version": spec.metadata.get("version"),
        }
        # "models from code": MLflow runs monai_scrd/registry/model_code.py to build the model when loading it,
        # instead of unpickling a python_model.pkl; the weights are safetensors and the spec JSON
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=model_code_path(),
            artifacts=artifacts,
            code_paths=code_paths,
            signature=model_signature(),
            input_example=input_example(example_paths),
            pip_requirements=_pip_requirements(include_code),
            metadata={k: v for k, v in metadata.items() if v is not None},
            registered_model_name=registered_model_name,
        )
