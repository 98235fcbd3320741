"""Download and load a logged or registered SCRD model without unpickling anything: the model folder is checked to
be SCRD's "model from code" before MLflow loads it, with pickle loading switched off."""

from __future__ import annotations

import os
from collections.abc import Sequence

from monai_scrd.registry.errors import RegistryError
from monai_scrd.registry.tracking import _environ, resolve_tracking_uri, tracking_uri_context

__all__ = ["check_code_model", "download_model", "load_model"]

# MLflow's pyfunc loaders of a PythonModel; both build a "model from code" from its model_code_path (3.x writes the first)
PYFUNC_LOADERS = ("mlflow.pyfunc.loaders.code_model", "mlflow.pyfunc.model")
MODEL_CODE_FILE = "model_code.py"
NO_PICKLE_ENV = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}


def check_code_model(model_dir: str | os.PathLike) -> dict:
    """Refuse, before anything of it is loaded, a model folder that MLflow would not load as SCRD's "model from code":
    its ``MLmodel`` (read as plain YAML) must name MLflow's PythonModel loader (``mlflow.pyfunc.loaders.code_model``) with a
    ``model_code_path`` of ``model_code.py`` and no pickled ``python_model`` (what ``mlflow.pyfunc.load_model`` would
    unpickle, running any code in it, unless ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``), and another loader module
    (``mlflow.sklearn`` and the like) would unpickle its data.

    Returns the MLmodel as a dict. Raises :class:`RegistryError` (one line naming the file and the reason)."""
    import yaml

    path = os.path.join(os.fspath(model_dir), "MLmodel")
    try:
        with open(path) as f:
            conf = yaml.safe_load(f)
    except FileNotFoundError:
        raise RegistryError(f"{model_dir}: not an MLflow model (no MLmodel file)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise RegistryError(f"{path}: unreadable MLmodel ({type(e).__name__})") from None
    flavors = conf.get("flavors") if isinstance(conf, dict) else None
    pyfunc = flavors.get("python_function") if isinstance(flavors, dict) else None
    if not isinstance(pyfunc, dict):
        problem = "it has no python_function flavor"
    elif pyfunc.get("loader_module") not in PYFUNC_LOADERS:
        problem = f"its loader module is {pyfunc.get('loader_module')!r}, not {PYFUNC_LOADERS[0]!r}"
    elif "python_model" in pyfunc:
        problem = f"it is a pickled Python model ({pyfunc['python_model']!r})"
    elif os.path.basename(str(pyfunc.get("model_code_path") or "")) != MODEL_CODE_FILE:
        problem = f"its model code is {pyfunc.get('model_code_path')!r}, not SCRD's {MODEL_CODE_FILE}"
    else:
        return conf
    raise RegistryError(
        f"{path}: refused, not an SCRD model from code: {problem}; loading it could unpickle (run) code. Register the "
        "model again with `python -m monai_scrd.registry register`"
    )


def _describe_model_uri(client, model_uri: str) -> tuple[str, dict]:
    """``(exact URI, description)`` of a ``models:/`` URI: an alias or stage resolved to its version now, so that
    what is loaded is exactly what is reported."""
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    try:
        found = get_model_name_and_version(client, model_uri)
    except Exception as e:  # noqa: BLE001 - MlflowException: no such model/alias/version, bad URI
        raise RegistryError(f"{model_uri}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if len(found) == 1:  # models:/<model id> (a logged model, not a registered version)
        return model_uri, {"model_id": found[0]}
    name, version = found[0], str(found[1])
    described = {"name": name, "version": version}
    if "@" in model_uri.rsplit("/", 1)[-1]:
        described["alias"] = model_uri.rsplit("@", 1)[-1]
    try:
        described["run_id"] = client.get_model_version(name, version).run_id
    except Exception:  # noqa: BLE001 - the run id is only reported
        pass
    return f"models:/{name}/{version}", described


def download_model(model_uri: str, tracking_uri: str | None = None, dst_path: str | os.PathLike | None = None
                   ) -> tuple[str, dict]:
    """A local copy of a logged or registered SCRD model, checked with :func:`check_code_model` (nothing of it is
    loaded or run here).

    ``models:/name@alias`` (or ``/stage``, ``/latest``) is resolved to its version first and that exact version is
    downloaded; ``models:/`` and ``runs:/`` URIs use ``tracking_uri`` (see :func:`resolve_tracking_uri`), local paths
    and other artifact URIs need none.

    Returns ``(local folder, description)``; the description holds ``model_uri`` (as given) and, for a registered
    model, ``name``, ``version``, ``alias`` and ``run_id``."""
    import mlflow

    model_uri = str(model_uri)
    described: dict = {"model_uri": model_uri}
    scheme = model_uri.split(":", 1)[0].lower() if ":" in model_uri else ""
    try:
        if scheme in ("models", "runs"):
            with tracking_uri_context(resolve_tracking_uri(tracking_uri)) as client:
                exact = model_uri
                if scheme == "models":
                    exact, more = _describe_model_uri(client, model_uri)
                    described.update(more)
                local = mlflow.artifacts.download_artifacts(artifact_uri=exact, dst_path=dst_path)
        else:
            if os.path.isdir(model_uri):  # a model folder: used where it is
                check_code_model(model_uri)
                return os.path.abspath(model_uri), {**described, "path": os.path.abspath(model_uri)}
            local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst_path)
    except RegistryError:
        raise
    except Exception as e:  # noqa: BLE001 - MlflowException, OSError: one line naming the model
        raise RegistryError(f"cannot download model {model_uri} ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    check_code_model(local)
    return local, described


def load_model(
    model_uri: str,
    tracking_uri: str | None = None,
    *,
    input_roots: Sequence[str | os.PathLike] | None = None,
    output_roots: Sequence[str | os.PathLike] | None = None,
    device: str | None = None,
):
    """Load a logged or registered SCRD model as an MLflow pyfunc without unpickling anything, whatever
    ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` says: the model is downloaded and checked (:func:`download_model`), then
    loaded by MLflow with pickle loading switched off.

    Args:
        model_uri: e.g. ``models:/scrd@champion`` (resolved to its version), ``runs:/<run id>/scrd_model`` or a folder.
        tracking_uri: for ``models:/`` and ``runs:/`` URIs (default: ``$MLFLOW_TRACKING_URI``).
        input_roots: folders the model may read images from (default: ``$SCRD_INPUT_ROOTS``, else the working
            directory).
        output_roots: folders a ``map_dir`` may lie in (default: ``$SCRD_OUTPUT_ROOTS``, else none: a ``map_dir`` is
            refused and maps go to a new temporary folder).
        device: ``cpu``/``cuda`` (default: ``$SCRD_DEVICE``, else CUDA when available).

    Returns:
        The ``mlflow.pyfunc.PyFuncModel`` (``predict(DataFrame({"image": [...]}), params={...})``).
    """
    import mlflow.pyfunc

    local, _ = download_model(model_uri, tracking_uri)
    env = dict(NO_PICKLE_ENV)
    if input_roots is not None:
        env["SCRD_INPUT_ROOTS"] = os.pathsep.join(os.path.abspath(os.fspath(r)) for r in input_roots)
    if output_roots is not None:
        env["SCRD_OUTPUT_ROOTS"] = os.pathsep.join(os.path.abspath(os.fspath(r)) for r in output_roots)
    if device:
        env["SCRD_DEVICE"] = str(device)
    with _environ(env):  # the model reads its roots and device when it loads
        return mlflow.pyfunc.load_model(local)
