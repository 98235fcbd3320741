"""MONAI Label infer task for SCRD: anomaly score and label in the result JSON, the anomaly heatmap as the result file.

Needs ``monailabel`` (see ``scripts/install_label.sh``); the scoring itself is :class:`monai_scrd.scoring.Scorer`,
so scores are exactly those of the bundle's evaluation and inference and of the registered MLflow model.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from monai_scrd.registry.spec import ModelSpec, bundle_checkpoint, scorer_from_bundle, scorer_from_dir
from monai_scrd.scoring import Scorer, save_map

__all__ = ["SCRDInferTask", "InferRequestError", "load_scorer", "describe_served", "bundle_folder"]

logger = logging.getLogger("monai_scrd.label")


class InferRequestError(Exception):
    """A request that cannot be served (unknown image, unreadable file...), with the HTTP status to answer."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def http_error(status_code: int, detail: str) -> Exception:
    """FastAPI's ``HTTPException`` (answered as ``{"detail": ...}`` with ``status_code``; the server keeps serving)."""
    try:
        from fastapi import HTTPException

        return HTTPException(status_code=status_code, detail=detail)
    except ImportError:  # pragma: no cover - monailabel always brings fastapi
        return InferRequestError(status_code, detail)


MAP_FORMATS = ("nii.gz", "npy", "png")
# the bundle of the repository this package is installed from (editable install)
REPOSITORY_BUNDLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bundles", "scrd")


def bundle_folder(conf: dict) -> str:
    """The bundle an app's ``--conf`` names: ``bundle``, else ``$SCRD_BUNDLE``, else the repository's ``bundles/scrd``."""
    return os.path.abspath(conf.get("bundle") or os.environ.get("SCRD_BUNDLE") or REPOSITORY_BUNDLE)


def load_scorer(conf: dict, device: str | None = None) -> tuple[ModelSpec, Scorer, dict]:
    """The SCRD model an app serves, exactly as its ``--conf`` values name it:

    * ``model_uri`` (+ optional ``tracking_uri``): a registered MLflow model, e.g. ``models:/scrd@champion``, resolved
      to its version, checked to be SCRD's model from code (:func:`monai_scrd.registry.loading.download_model`) and read
      from its JSON spec and safetensors weights (nothing is unpickled or run);
    * else ``bundle`` (see :func:`bundle_folder`) with optional ``checkpoint``, ``threshold`` (number or JSON file),
      ``config_file`` and ``image_size`` (override of the bundle's value);
    * either way, ``backend`` (``auto``, the default: the fastest installed compiled backend on the CPU; ``torch``,
      ``onnxruntime``, ``openvino``), see :class:`~monai_scrd.scoring.Scorer`.

    Returns ``(spec, scorer, served)``; ``served`` says what is served: ``source`` (``"registry"``, ``"mlflow model"``
    or ``"bundle"``), ``model_uri``/``name``/``version``/``alias``/``run_id`` or ``path``/``checkpoint``, and
    ``threshold``. Raises ``FileNotFoundError`` when the bundle has no trained weights.
    """
    device = device or conf.get("device") or None
    model_uri = conf.get("model_uri")
    if model_uri:
        from monai_scrd.registry.loading import download_model

        local, described = download_model(model_uri, conf.get("tracking_uri") or None)
        art = os.path.join(local, "artifacts")
        spec, scorer = scorer_from_dir(art if os.path.isdir(art) else local, device=device, backend=conf.get("backend") or None)
        served = {"source": "registry" if "version" in described else "mlflow model", **described}
    else:
        bundle = bundle_folder(conf)
        if not os.path.isdir(bundle):
            raise ValueError(f"bundle {bundle}: no such folder")
        overrides = {}
        if conf.get("image_size"):
            overrides["image_size"] = int(conf["image_size"])
        threshold = conf.get("threshold") or None
        if threshold is not None:
            try:
                threshold = float(threshold)
            except ValueError:
                pass
        checkpoint = conf.get("checkpoint") or bundle_checkpoint(bundle, conf.get("config_file") or None)
        spec, scorer = scorer_from_bundle(
            bundle,
            checkpoint=checkpoint,
            config_file=conf.get("config_file") or None,
            overrides=overrides,
            threshold=threshold,
            device=device,
            backend=conf.get("backend") or None,
        )
        served = {"source": "bundle", "path": bundle, "checkpoint": os.path.abspath(checkpoint)}
    served["threshold"] = scorer.threshold
    scorer.compiled()  # a compiled backend is made now, not on the first request (PyTorch when it falls back)
    served["backend"] = scorer.backend
    return spec, scorer, served


def describe_served(served: dict | None) -> str:
    """One line naming the served model: source, version or path, threshold."""
    if not served:
        return "no model"
    thr = served.get("threshold")
    thr_text = "no decision threshold" if thr is None else f"threshold {thr:.6g}"
    if served.get("source") == "registry":
        alias = f" @{served['alias']}" if served.get("alias") else ""
        run = f", run {served['run_id']}" if served.get("run_id") else ""
        return f"registered model {served['model_uri']} ({served['name']} version {served['version']}{alias}{run}), {thr_text}"
    if served.get("source") == "mlflow model":
        return f"MLflow model {served['model_uri']}, {thr_text}"
    what = "the model trained in this app" if served.get("source") == "app training" else "bundle"
    return f"{what} {served.get('path')} (weights {served.get('checkpoint')}), {thr_text}"


class SCRDInferTask(InferTask):
    """Scores one image (PNG/JPEG/DICOM/NIfTI; 3D volumes slice by slice, like the bundle) with SCRD.

    Result JSON: ``score`` (the image score, as the bundle computes it: the model's recorded reduction of the map), ``is_anomaly`` (``score >= threshold``),
    ``label`` (``"anomaly"``/``"normal"``), ``threshold``, ``map_shape``, ``map_max``, ``latencies``.
    Result file: the anomaly heatmap, resized to the image's own size, as NIfTI (float32, the image's affine; default)
    or PNG/NPY (request parameter ``map_format``).

    Args:
        spec: what the model is (network, preprocessing, threshold, bundle metadata).
        scorer: the loaded model.
        description: shown in ``/info/``.
        served: where the model comes from (see :func:`load_scorer`), shown in ``/info/`` as ``served``.
    """

    def __init__(self, spec: ModelSpec, scorer: Scorer, description: str = "SCRD unsupervised anomaly detection (score + heatmap)",
                 served: dict | None = None):
        config = {"map_format": "nii.gz", "map_size": "original"}
        super().__init__(type=InferType.CLASSIFICATION, labels=["anomaly"], dimension=2, description=description, config=config)
        self.spec = spec
        self.scorer = scorer
        self.served = served

    def is_valid(self) -> bool:
        return self.scorer is not None  # an app without trained weights yet (see its train task)

    def info(self) -> dict[str, Any]:
        d = super().info()
        if self.scorer is None:
            return d
        spec = self.spec
        d.update(
            {
                "threshold": self.scorer.threshold,
                "backbone": spec.network.get("backbone"),
                "image_size": self.scorer.preprocessing["image_size"],
                "color_mode": self.scorer.preprocessing["color_mode"] or "grayscale",
                "score_reduction": self.scorer.score_reduction,
                "bundle": {k: spec.metadata.get(k) for k in ("name", "version") if k in spec.metadata},
                "served": dict(self.served or {}),
            }
        )
        return d

    def __call__(self, request) -> tuple[str | None, dict]:
        t0 = time.time()
        path = request.get("image")
        if not isinstance(path, str) or not path:
            raise http_error(404, "no image: give ?image=<id> of an image in the studies folder, or upload a file")
        if os.path.isdir(path):
            raise http_error(422, f"{path}: a folder (DICOM series) is not supported; give one image file (2D, 3D NIfTI or multi-frame DICOM)")
        fmt = str(request.get("map_format") or "nii.gz").lstrip(".")
        if fmt not in MAP_FORMATS:
            raise http_error(400, f"map_format {fmt!r} is not one of {list(MAP_FORMATS)}")
        map_size = str(request.get("map_size") or "original")
        if map_size not in ("original", "model"):
            raise http_error(400, f"map_size {map_size!r} is not 'original' or 'model'")
        result = next(self.scorer.score([path], return_maps=True, map_size=map_size))
        if result.error:
            raise http_error(422, result.error)
        amap = result.anomaly_map
        if fmt == "png" and np.squeeze(amap).ndim != 2:
            raise http_error(400, f"{path}: a 3D volume's map cannot be a PNG; use map_format nii.gz")
        t_infer = time.time()
        out = tempfile.NamedTemporaryFile(suffix=f".{fmt}", prefix="scrd_map_", delete=False).name
        header = result.source.meta.get("header") if result.source is not None else None
        save_map(amap, out, result.affine, header)
        score, is_anomaly = float(result.score), result.is_anomaly
        res = {
            "score": score,
            "is_anomaly": is_anomaly,
            "label": None if is_anomaly is None else ("anomaly" if is_anomaly else "normal"),
            "threshold": self.scorer.threshold,
            "map_shape": list(np.asarray(amap).shape),
            "map_max": float(np.max(amap)),
            "map_format": fmt,
            "volume": result.kind == "volume",
            "latencies": {"infer": round(t_infer - t0, 4), "total": round(time.time() - t0, 4)},
        }
        logger.info(f"SCRD {os.path.basename(path)}: score={score:.6g} is_anomaly={is_anomaly}")
        return out, res
