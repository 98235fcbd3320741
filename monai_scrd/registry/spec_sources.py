"""Model specs read from where a model was trained: the arguments of an SCRD network, or the artifacts and parameters
of a finished MLflow training run (a bundle's config is read by :func:`monai_scrd.registry.spec.spec_from_bundle`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from monai_scrd.registry.errors import RegistryError
from monai_scrd.registry.spec import CHECKPOINT_FILE, NETWORK_TARGET, ModelSpec, spec_from_bundle
from monai_scrd.registry.tracking import resolve_tracking_uri, tracking_uri_context
from monai_scrd.scoring.dataset import PREPROCESSING_KEYS
from monai_scrd.scoring.io import json_safe
from monai_scrd.scoring.scorer import read_threshold

__all__ = ["spec_from_network", "spec_from_run"]

NETWORK_ARGS = ("backbone", "contrastive", "scale_adaptive", "sigma", "alpha_temperature", "alpha_floor",
                "scale_weighting")


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
