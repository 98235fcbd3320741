"""Which MLflow tracking/registry server to talk to, and the context to talk to it in: the tracking URI (database
stores only), environment variables set or restored for a block, quiet artifact progress and the run to log into."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from monai_scrd.registry.errors import RegistryError

__all__ = ["quiet_progress", "resolve_tracking_uri", "tracking_uri_context"]


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
