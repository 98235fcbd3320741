"""Log, register and alias SCRD models in an MLflow (3.x) tracking server / model registry."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from monai_scrd.registry.spec import (
    CHECKPOINT_FILE,
    GRAPH_FOLDER,
    NETWORK_TARGET,
    SPEC_FILE,
    WEIGHTS_FILE,
    ModelSpec,
    bundle_checkpoint,
    spec_from_bundle,
    write_model_dir,
)
from monai_scrd.scoring.dataset import PREPROCESSING_KEYS
from monai_scrd.scoring.io import json_safe
from monai_scrd.scoring.scorer import read_threshold

__all__ = [
    "RegistryError",
    "resolve_tracking_uri",
    "tracking_uri_context",
    "log_scrd_model",
    "register_model",
    "register_run",
    "register_trained_model",
    "set_alias",
    "spec_from_run",
    "spec_from_network",
    "RegisterModelHandler",
    "check_code_model",
    "download_model",
    "load_model",
]

logger = logging.getLogger("monai_scrd.registry")

MODEL_NAME_IN_RUN = "scrd_model"
NETWORK_ARGS = ("backbone", "contrastive", "scale_adaptive", "sigma", "alpha_temperature", "alpha_floor",
                "scale_weighting")
# third-party packages the pyfunc imports when it scores (monai_scrd itself travels with the model by default)
RUNTIME_PACKAGES = ("torch", "torchvision", "monai", "numpy", "pandas", "nibabel", "pydicom", "pillow", "scipy", "timm", "mlflow",
                    "safetensors", "onnxruntime")


class RegistryError(RuntimeError):
    """A registration that cannot be done as asked (no weights, no threshold, unusable backend...)."""


# ------------------------------------------------------------------------------------------------ backend
def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The tracking/registry URI to use: ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's default
    (``sqlite:///mlflow.db`` in the working directory). A plain folder (file store) is refused: MLflow 3's model
    registry needs a database, e.g. ``sqlite:////abs/path/mlflow.db``."""
    import mlflow

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    uri = str(uri)
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("", "file"):
        raise RegistryError(
            f"tracking URI {uri!r} is a plain folder (MLflow file store), which MLflow 3's model registry does not "
            "support; use a database, e.g. --tracking-uri sqlite:///mlflow.db (or an http(s):// tracking server)"
        )
    return uri


@contextlib.contextmanager
def _restored_environ(names: Iterable[str]) -> Iterator[None]:
    """Put the environment variables ``names`` back as they were before the block (unset ones unset again)."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` set in the environment for the block only."""
    with _restored_environ(values):
        os.environ.update(values)
        yield


@contextlib.contextmanager
def quiet_progress(enabled: bool = True) -> Iterator[None]:
    """No MLflow artifact progress bars inside the block (our commands print none unless asked)."""
    with _environ({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"} if enabled else {}):
        yield


@contextlib.contextmanager
def tracking_uri_context(uri: str) -> Iterator[Any]:
    """Point MLflow (tracking and registry) at ``uri`` for the block, yielding a client for it, then restore what
    was there before, the environment included.

    ``mlflow.set_tracking_uri`` / ``set_registry_uri`` also export ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI``
    for child processes; restoring them with the resolved previous URIs (``get_tracking_uri()``) would leave the
    caller's process pinned to this block's URI or to a default store in its working folder. MLflow exposes what the
    caller set only through those variables, so they are saved and put back as they were (``None``: unset).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {name: os.environ.get(name) for name in names}
    with _restored_environ(names):
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield MlflowClient(tracking_uri=uri, registry_uri=uri)
        finally:
            mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # None: unset again
            mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a new experiment in a local sqlite store: ``mlruns/`` beside the database file, as MONAI's
    ``MLFlowHandler`` does, rather than MLflow's default ``./mlruns`` in whatever folder the command runs from."""
    if not uri.startswith("sqlite:///"):
        return None
    from pathlib import Path

    return Path(os.path.abspath(uri[len("sqlite:///"):])).parent.joinpath("mlruns").as_uri()


@contextlib.contextmanager
def _run(run_id: str | None, experiment_name: str | None, run_name: str) -> Iterator[Any]:
    """The MLflow run to log into: ``run_id`` (re-opened if finished), else a new run in ``experiment_name``."""
    import mlflow

    active = mlflow.active_run()
    if run_id and active is not None and active.info.run_id == run_id:
        yield active
        return
    if run_id:
        with mlflow.start_run(run_id=run_id, nested=active is not None) as run:
            yield run
        return
    if experiment_name:
        exp = mlflow.get_experiment_by_name(experiment_name)
        exp_id = exp.experiment_id if exp is not None else mlflow.create_experiment(
            experiment_name, artifact_location=_artifact_location(mlflow.get_tracking_uri()))
    else:
        exp_id = None
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, nested=active is not None) as run:
        yield run


# ------------------------------------------------------------------------------------------------ loading
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


# ------------------------------------------------------------------------------------------------ spec sources
def spec_from_network(network: Any) -> dict:
    """SCRD constructor arguments from an SCRD instance (or a dict of them)."""
    if isinstance(network, Mapping):
        from monai_scrd.networks.scrd import drop_removed_arguments

        network = drop_removed_arguments(network, "network arguments")
        args = {k: v for k, v in network.items() if k in NETWORK_ARGS or k == "_target_"}
    else:
        net = getattr(network, "module", network)  # DataParallel / DDP
        teacher = getattr(net, "teacher", None)
        if teacher is None or not hasattr(teacher, "backbone"):
            raise RegistryError(f"cannot read SCRD arguments from a {type(network).__name__}; pass a dict")
        args = {
            "backbone": teacher.backbone,
            "contrastive": bool(net.contrastive),
            "scale_adaptive": bool(net.scale_adaptive),
            "sigma": float(net.anomaly_map.sigma),
            # the scale head's and the map's options, so that the registered model scores like the trained one
            "scale_weighting": net.anomaly_map.scale_weighting,
        }
        if net.scale_head is not None:
            args.update(alpha_temperature=net.scale_head.temperature, alpha_floor=net.scale_head.alpha_floor)
    args = {"_target_": NETWORK_TARGET, **{k: v for k, v in args.items() if k != "_target_"}}
    return json_safe(args)


def _parse_param(value: str) -> Any:
    v = value.strip()
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    try:
        return json.loads(v)
    except (json.JSONDecodeError, ValueError):
        return v


def _param(params: Mapping[str, str], key: str) -> Any:
    """A run parameter by name, exact or as the last part of a dotted/``::``/``#`` name."""
    if key in params:
        return _parse_param(params[key])
    for k, v in params.items():
        for sep in (".", "::", "#", "/"):
            if k.endswith(sep + key):
                return _parse_param(v)
    return None


def _list_artifacts(client, run_id: str, path: str | None = None, depth: int = 3) -> list[str]:
    out = []
    for f in client.list_artifacts(run_id, path):
        if f.is_dir:
            if depth > 0:
                out.extend(_list_artifacts(client, run_id, f.path, depth - 1))
        else:
            out.append(f.path)
    return out


def spec_from_run(
    run_id: str,
    tracking_uri: str | None = None,
    bundle_dir: str | os.PathLike | None = None,
    config_file: str | Sequence[str] | None = None,
    download_dir: str | os.PathLike | None = None,
    threshold=None,
) -> tuple[ModelSpec, str]:
    """The model spec and local checkpoint of a finished training run.

    Weights: the run's artifact ``model.pt`` (the bundle's final weights). Threshold: the artifact ``threshold.json``
    unless ``threshold`` is given. Network and preprocessing: the bundle config in ``bundle_dir`` (or the run's
    logged ``configs/*.json``) with the run's parameters (``backbone``, ``image_size``, ...) as overrides, else the
    run's parameters alone.

    Returns:
        ``(spec, checkpoint_path)`` with the checkpoint downloaded into ``download_dir`` (default: a temp folder).
    """
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
    with tracking_uri_context(uri) as client:
        try:
            run = client.get_run(run_id)
        except Exception as e:  # noqa: BLE001 - MlflowException: not found / bad id
            raise RegistryError(f"run {run_id!r} not found in {uri} ({str(e).splitlines()[0] if str(e) else e})") from e
        files = _list_artifacts(client, run_id)
        weights = [f for f in files if os.path.basename(f) == CHECKPOINT_FILE] or [
            f for f in files if f.endswith(".pt") and "final" in os.path.basename(f)
        ]
        if not weights:
            raise RegistryError(
                f"run {run_id} has no '{CHECKPOINT_FILE}' artifact (artifacts: {files[:10]}); register the checkpoint "
                "directly with --checkpoint/--bundle-dir"
            )
        dst = os.fspath(download_dir or tempfile.mkdtemp(prefix="scrd_run_"))

        def fetch(path: str) -> str:
            return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=dst, tracking_uri=uri)

        checkpoint = fetch(sorted(weights, key=len)[0])
        if threshold is None:
            thr_files = [f for f in files if os.path.basename(f) == "threshold.json"]
            threshold = fetch(thr_files[0]) if thr_files else None
        params = dict(run.data.params)
        logged_configs = [f for f in files if f.endswith((".json", ".yaml")) and os.path.basename(f) in (
            "inference.json", "train.json", "inference.yaml", "train.yaml", "metadata.json")]
        if bundle_dir is None and any(os.path.basename(f) in ("inference.json", "train.json") for f in logged_configs):
            bundle_dir = os.path.join(dst, "bundle")
            os.makedirs(os.path.join(bundle_dir, "configs"), exist_ok=True)
            for f in logged_configs:
                shutil.copy(fetch(f), os.path.join(bundle_dir, "configs", os.path.basename(f)))

    overrides = {k: _param(params, k) for k in (*NETWORK_ARGS, *PREPROCESSING_KEYS, "score_reduction")}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if bundle_dir is not None:
        spec = spec_from_bundle(bundle_dir, config_file, overrides=overrides, threshold=threshold)
    else:
        if "backbone" not in overrides:
            raise RegistryError(
                f"run {run_id} has no 'backbone' parameter and no logged bundle config: pass --bundle-dir (the bundle "
                "the run was trained with) so that the network and preprocessing can be rebuilt"
            )
        network = {"_target_": NETWORK_TARGET, **{k: overrides[k] for k in NETWORK_ARGS if k in overrides}}
        spec = ModelSpec(
            network=network,
            preprocessing={k: overrides[k] for k in PREPROCESSING_KEYS if k in overrides},
            threshold=read_threshold(threshold),
        )
        if "score_reduction" in overrides:
            spec.score_reduction = str(overrides["score_reduction"])
        else:
            spec.use_recorded_reduction()
    spec.source = {**spec.source, "run_id": run_id, "tracking_uri": uri, "checkpoint_artifact": sorted(weights, key=len)[0]}
    spec.validate()
    return spec, checkpoint


# ------------------------------------------------------------------------------------------------ logging
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


# ------------------------------------------------------------------------------------------------ registering
def set_alias(name: str, version: int | str, alias: str, tracking_uri: str | None = None) -> None:
    """Point ``models:/name@alias`` at ``version``."""
    with tracking_uri_context(resolve_tracking_uri(tracking_uri)) as client:
        client.set_registered_model_alias(name, alias, str(version))


def register_model(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    *,
    spec: ModelSpec | None = None,
    bundle_dir: str | os.PathLike | None = None,
    config_file: str | Sequence[str] | None = None,
    overrides: Mapping | None = None,
    network: Any = None,
    preprocessing: Mapping | None = None,
    score_reduction: str | None = None,
    threshold=None,
    metadata: Mapping | str | os.PathLike | None = None,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    experiment_name: str | None = "scrd-registry",
    alias: str | None = None,
    include_code: bool = True,
    require_threshold: bool = True,
    example_paths: Sequence[str] | None = None,
    description: str | None = None,
):
    """Log a trained SCRD model as a pyfunc and register a new version of ``name`` (optionally with ``alias``).

    Where the pieces come from, in order:

    * weights: ``checkpoint``, else the bundle's ``models/model.pt``;
    * network/preprocessing: ``spec``, else ``bundle_dir``'s config (with ``overrides``), else ``network`` (SCRD
      arguments or the SCRD instance) and ``preprocessing`` (``preprocessing_transforms`` arguments); ``network`` /
      ``preprocessing`` / ``score_reduction`` given together with a bundle replace the bundle's values;
    * threshold: ``threshold`` (number, JSON file or record), else the bundle's stored one;
    * image score reduction: ``score_reduction``, else the spec's or the bundle's, else (network arguments alone) the
      one the threshold record was fitted with, else ``"mean"``;
    * metadata: ``metadata`` (dict or JSON file), else the bundle's ``configs/metadata.json``.

    The model is logged into run ``run_id`` (e.g. the training run) or a new run of ``experiment_name``.

    Raises:
        RegistryError: nothing to build the network from, no threshold (unless ``require_threshold=False``), or a
            file-store tracking URI. ``CheckpointError``: the weights do not fit the network.

    Returns:
        The new ``ModelVersion``.
    """
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
    described_by_arguments = spec is None and bundle_dir is None  # no config names a reduction
    if spec is None:
        if bundle_dir is not None:
            spec = spec_from_bundle(bundle_dir, config_file, overrides, threshold)
        elif network is not None:
            spec = ModelSpec(network={}, preprocessing={})
        else:
            raise RegistryError("nothing describes the network: give a bundle folder, a model spec or the network arguments")
    else:
        spec = ModelSpec.from_dict(spec.to_dict())
    if network is not None:
        spec.network = spec_from_network(network)
    if preprocessing is not None:
        spec.preprocessing = {k: v for k, v in json_safe(dict(preprocessing)).items() if v is not None}
    if threshold is not None:
        spec.threshold = read_threshold(threshold)
    if score_reduction is not None:
        spec.score_reduction = str(score_reduction)
    elif described_by_arguments:
        spec.use_recorded_reduction()
    if isinstance(metadata, (str, os.PathLike)):
        with open(metadata) as f:
            spec.metadata = json.load(f)
    elif metadata is not None:
        spec.metadata = json_safe(dict(metadata))
    if not spec.network.get("backbone"):
        raise RegistryError("the model spec names no backbone")
    spec.validate()
    if require_threshold and spec.threshold is None:
        raise RegistryError(
            "no decision threshold: train with validation images (the bundle writes models/threshold.json), or pass "
            "one (--threshold 0.123 or --threshold path/threshold.json); --no-threshold registers without is_anomaly"
        )
    if checkpoint is None:
        if bundle_dir is None:
            raise RegistryError("no checkpoint: pass the weights file or the bundle folder")
        checkpoint = bundle_checkpoint(bundle_dir, config_file)
    checkpoint = os.fspath(checkpoint)
    spec.source = {**spec.source, "checkpoint": os.path.abspath(checkpoint)}

    with tracking_uri_context(uri) as client, _run(run_id, experiment_name, run_name=f"register-{name}") as run:
        spec.source.setdefault("run_id", run.info.run_id)
        info = log_scrd_model(checkpoint, spec, include_code=include_code, example_paths=example_paths)
        version = mlflow.register_model(info.model_uri, name)
        tags = {
            "scrd.threshold": spec.threshold_value,
            "scrd.backbone": spec.network.get("backbone"),
            "scrd.image_size": spec.preprocessing.get("image_size", 256),
            "scrd.score_reduction": spec.score_reduction,
            "scrd.source_run_id": run.info.run_id,
            "scrd.checkpoint": os.path.abspath(checkpoint),
        }
        for k, v in tags.items():
            if v is not None:
                client.set_model_version_tag(name, version.version, k, str(v))
        if description:
            client.update_model_version(name, version.version, description=description)
        if alias:
            client.set_registered_model_alias(name, alias, version.version)
        version = client.get_model_version(name, version.version)
    logger.info(f"registered {name} version {version.version}{' @' + alias if alias else ''} ({info.model_uri}) in {uri}")
    return version


def register_run(
    run_id: str,
    name: str,
    *,
    tracking_uri: str | None = None,
    bundle_dir: str | os.PathLike | None = None,
    config_file: str | Sequence[str] | None = None,
    threshold=None,
    alias: str | None = None,
    include_code: bool = True,
    require_threshold: bool = True,
    description: str | None = None,
):
    """Register the model of a finished training run (its ``model.pt`` and ``threshold.json`` artifacts); the pyfunc
    is logged into that same run. See :func:`spec_from_run` for where the network arguments come from."""
    with tempfile.TemporaryDirectory(prefix="scrd_run_") as tmp:
        spec, checkpoint = spec_from_run(run_id, tracking_uri, bundle_dir, config_file, tmp, threshold)
        if bundle_dir is not None and not spec.metadata:
            meta = os.path.join(os.fspath(bundle_dir), "configs", "metadata.json")
            if os.path.isfile(meta):
                with open(meta) as f:
                    spec.metadata = json.load(f)
        return register_model(
            name,
            checkpoint,
            spec=spec,
            run_id=run_id,
            tracking_uri=tracking_uri,
            alias=alias,
            include_code=include_code,
            require_threshold=require_threshold,
            description=description,
        )


def register_trained_model(
    name: str,
    model_path: str | os.PathLike,
    *,
    network: Any,
    preprocessing: Mapping | None = None,
    score_reduction: str | None = None,
    threshold_path: str | os.PathLike | None = None,
    metadata: Mapping | str | os.PathLike | None = None,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    experiment_name: str | None = "scrd",
    alias: str | None = None,
):
    """The bundle's hook at the end of training: register the final weights with the values training used.

    Args:
        name: registered model name (empty/None: do nothing and return None).
        model_path: the final ``{"model": state_dict}`` file.
        network: the trained SCRD module (its arguments are read from it) or a dict of SCRD arguments.
        preprocessing: ``preprocessing_transforms`` arguments (``{"image_size": 128, ...}``).
        score_reduction: ``"mean"``, ``"max"`` or ``"top<P>%"`` (see :func:`monai_scrd.scoring.image_score`);
            default: the one the threshold file records, else ``"mean"``.
        threshold_path: the fitted threshold file; when missing, the model is registered without a threshold
            (``is_anomaly`` is then None) and a warning is logged.
        metadata: the bundle's ``metadata.json`` (path or dict).
        run_id: the training run to log the pyfunc into (else a new run in ``experiment_name``).
        tracking_uri: the training's tracking URI.
        alias: alias to point at the new version (e.g. ``champion``).
    """
    if not name:
        return None
    threshold = threshold_path if threshold_path and os.path.isfile(os.fspath(threshold_path)) else None
    if threshold is None:
        logger.warning(f"no threshold file at {threshold_path}: registering {name} without a decision threshold")
    if isinstance(metadata, (str, os.PathLike)) and not os.path.isfile(os.fspath(metadata)):
        metadata = None
    return register_model(
        name,
        model_path,
        network=network,
        preprocessing=preprocessing or {},
        score_reduction=score_reduction,
        threshold=threshold,
        metadata=metadata,
        run_id=run_id,
        tracking_uri=tracking_uri,
        experiment_name=experiment_name,
        alias=alias,
        require_threshold=False,
    )


class RegisterModelHandler:
    """Ignite handler for bundle training: at ``COMPLETED`` (rank 0), register the final weights under ``name``
    (no-op when ``name`` is empty), logging the pyfunc into the training's MLflow run (the one named ``run_name``,
    opened by ``--tracking mlflow``) when there is one, else into a new run of ``experiment_name``. Attach it after
    the handler that writes ``model_path``/``threshold_path`` (``TrainingFinalizer``).

    Args: as :func:`register_trained_model`, plus ``run_name`` and ``enabled``.
    """

    def __init__(
        self,
        name: str | None,
        model_path: str,
        network: Any,
        preprocessing: Mapping | None = None,
        score_reduction: str = "mean",
        threshold_path: str | None = None,
        metadata: Mapping | str | None = None,
        tracking_uri: str | None = None,
        experiment_name: str | None = "scrd",
        run_name: str | None = None,
        alias: str | None = None,
        enabled: bool = True,
    ) -> None:
        self.name = name
        self.model_path = model_path
        self.network = network
        self.preprocessing = preprocessing
        self.score_reduction = score_reduction
        self.threshold_path = threshold_path
        self.metadata = metadata
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.alias = alias or None
        self.enabled = enabled
        self.version = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        from monai_scrd.engines.tracking import find_mlflow_run
        from monai_scrd.engines.utils import is_rank0

        if not (self.enabled and self.name) or not is_rank0():
            return
        found = find_mlflow_run(self.tracking_uri, self.experiment_name or "", self.run_name or "")
        with quiet_progress():
            self.version = register_trained_model(
                self.name,
                self.model_path,
                network=self.network,
                preprocessing=self.preprocessing,
                score_reduction=self.score_reduction,
                threshold_path=self.threshold_path,
                metadata=self.metadata,
                run_id=found[1] if found else None,
                tracking_uri=self.tracking_uri,
                experiment_name=self.experiment_name,
                alias=self.alias,
            )
        logger.info(
            f"registered model {self.name} version {self.version.version}"
            + (f" (alias {self.alias}: models:/{self.name}@{self.alias})" if self.alias else "")
        )
