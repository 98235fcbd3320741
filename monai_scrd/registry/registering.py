"""Register SCRD models in the MLflow model registry: a new version from weights and a spec (a bundle, a training
run, network arguments), aliases, and the bundle's hook that registers the final weights at the end of training."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from monai_scrd.registry.errors import RegistryError
from monai_scrd.registry.logged_model import log_scrd_model
from monai_scrd.registry.spec import ModelSpec, bundle_checkpoint, spec_from_bundle
from monai_scrd.registry.spec_sources import spec_from_network, spec_from_run
from monai_scrd.registry.tracking import _run, quiet_progress, resolve_tracking_uri, tracking_uri_context
from monai_scrd.scoring.io import json_safe
from monai_scrd.scoring.scorer import read_threshold

__all__ = ["RegisterModelHandler", "register_model", "register_run", "register_trained_model", "set_alias"]

logger = logging.getLogger("monai_scrd.registry")


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
    the handler that writes ``model_path``/``threshold_path`` (``ModelWriter``).

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
