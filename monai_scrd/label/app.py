"""The MONAI Label app serving SCRD. An app folder's ``main.py`` only needs ``from monai_scrd.label.app import
SCRDLabelApp`` (``python -m monai_scrd.label app DIR`` writes one).

``--conf`` keys (``monailabel start_server ... --conf KEY VALUE``):

* ``models``: the infer task's name (default ``scrd``);
* ``model_uri`` (+ ``tracking_uri``): serve a registered MLflow model, e.g. ``models:/scrd@champion``;
* ``bundle``: else serve this trained bundle folder (``models/model.pt``, ``models/threshold.json``, ``configs/``),
  with optional ``checkpoint``, ``threshold``, ``config_file``, ``image_size``;
* ``device``: ``cpu``/``cuda`` (default: CUDA when available);
* ``extensions``: comma-separated file patterns of the studies folder (default PNG/JPEG/DICOM/NIfTI).

Requests for an unknown model or image answer HTTP 404, unreadable images 422, each with a one-line ``detail``.
"""

from __future__ import annotations

import logging
import os

from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp

from monai_scrd.label.infer import SCRDInferTask, http_error, load_scorer

__all__ = ["SCRDLabelApp", "DEFAULT_EXTENSIONS"]

logger = logging.getLogger("monai_scrd.label")

DEFAULT_EXTENSIONS = ("*.png", "*.jpg", "*.jpeg", "*.bmp", "*.tif", "*.tiff", "*.dcm", "*.nii.gz", "*.nii")


class SCRDLabelApp(MONAILabelApp):
    """MONAI Label app with one SCRD infer task (and, with ``--conf train true``, no train task yet: see README)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        self.model_name = (conf or {}).get("models", "scrd").split(",")[0].strip() or "scrd"
        self.spec, self.scorer = load_scorer(dict(conf or {}))
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SCRD anomaly detection",
            description="Scale-aware Contrastive Reverse Distillation: anomaly score, label and heatmap for 2D images",
            version="0.1.0",
            labels=["anomaly"],
        )

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        ext = self.conf.get("extensions")
        extensions = [e.strip() for e in ext.split(",") if e.strip()] if ext else list(DEFAULT_EXTENSIONS)
        return LocalDatastore(
            self.studies,
            extensions=extensions,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self):
        return {self.model_name: SCRDInferTask(self.spec, self.scorer)}

    def init_strategies(self):
        return {}

    def infer(self, request, datastore=None):
        model = request.get("model")
        if model not in self._infers:
            raise http_error(404, f"unknown model {model!r}; this server has {sorted(self._infers)}")
        image = request.get("image")
        if isinstance(image, str) and image and not os.path.exists(image):
            ds = datastore if datastore else self.datastore()
            if not ds.get_image_uri(image):
                raise http_error(404, f"image {image!r} is not in the studies folder (list them with GET /datastore/?output=all)")
        return super().infer(request, datastore)
