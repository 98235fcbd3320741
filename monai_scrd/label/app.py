"""The MONAI Label app serving SCRD. An app folder's ``main.py`` only needs ``from monai_scrd.label.app import
SCRDLabelApp`` (``python -m monai_scrd.label app DIR`` writes one).

``--conf`` keys (``monailabel start_server ... --conf KEY VALUE``):

* ``models``: the infer task's name (default ``scrd``);
* ``model_uri`` (+ ``tracking_uri``): serve this registered MLflow model, e.g. ``models:/scrd@champion`` (resolved to
  its version at start);
* ``bundle``: or serve this trained bundle folder (``models/model.pt``, ``models/threshold.json``, ``configs/``),
  with optional ``checkpoint``, ``threshold``, ``config_file``, ``image_size`` (default: ``$SCRD_BUNDLE``, else the
  repository's ``bundles/scrd``); ``model_uri`` and ``bundle`` together are refused;
* ``device``: ``cpu``/``cuda`` (default: CUDA when available);
* ``extensions``: comma-separated file patterns of the studies folder (default PNG/JPEG/DICOM/NIfTI);
* ``train``: ``false`` leaves out the train task (default ``true``);
* ``train_bundle``: bundle whose ``configs/train.json`` the train task runs (default: ``bundle`` when it has one,
  else ``$SCRD_BUNDLE``, else the repository's ``bundles/scrd``).

**Which model is served**: exactly the one configured (``model_uri``, or a ``bundle`` with trained weights, or an
explicit ``checkpoint``), for the server's whole life; training does not replace it. Only when the configured bundle has
no trained weights (a bundle used as the training recipe) does the server serve what its train task publishes
(:mod:`monai_scrd.label.train`, ``POST /train/<models>``, into ``<app_dir>/model/<models>/``): from the next request
after a training, and after a restart; until then it has the train task only. The server logs which model it serves at
start (one line: source, version or path, threshold; ``describe_served``), and ``GET /info/`` shows it as
``models.<name>.served``.

The datastore (``/datastore/``) is :class:`monai_scrd.label.datastore.ContainedDatastore`: it lists, serves and writes
only files inside the studies folder, symbolic links resolved.

Requests for an unknown model or image answer HTTP 404, unreadable images 422, each with a one-line ``detail``.
Images are read only from the studies folder: an image id of the datastore, or a path that resolves (symbolic links
included) to a file inside it; anything else, existing or not (absolute paths, ``..``, uploads), answers the same 404.
"""

from __future__ import annotations

import logging
import os
import threading

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp

from monai_scrd.label.datastore import ContainedDatastore
from monai_scrd.label.infer import (
    REPOSITORY_BUNDLE,
    SCRDInferTask,
    bundle_folder,
    describe_served,
    http_error,
    load_scorer,
)
from monai_scrd.label.train import SCRDTrainTask
from monai_scrd.registry.spec import bundle_checkpoint
from monai_scrd.scoring import resolve_inside

__all__ = ["SCRDLabelApp", "DEFAULT_EXTENSIONS"]

logger = logging.getLogger("monai_scrd.label")

DEFAULT_EXTENSIONS = ("*.png", "*.jpg", "*.jpeg", "*.bmp", "*.tif", "*.tiff", "*.dcm", "*.nii.gz", "*.nii")


def _weights_signature(bundle_dir: str) -> tuple | None:
    """(mtime, size) of a trained bundle's ``models/model.pt`` and ``models/threshold.json``; None without weights."""
    stamps = []
    for name in ("model.pt", "threshold.json"):
        try:
            st = os.stat(os.path.join(bundle_dir, "models", name))
            stamps.append((st.st_mtime_ns, st.st_size))
        except OSError:
            if name == "model.pt":
                return None
            stamps.append(None)
    return tuple(stamps)


class SCRDLabelApp(MONAILabelApp):
    """MONAI Label app with one SCRD infer task and one SCRD train task (see the module docstring)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        conf = dict(conf or {})
        self.model_name = conf.get("models", "scrd").split(",")[0].strip() or "scrd"
        self.trained_dir = os.path.join(os.path.abspath(app_dir), "model", self.model_name)
        self._model_lock = threading.Lock()
        self._device = conf.get("device", "")
        self.spec, self.scorer, self.served = None, None, None
        # True when the configured bundle has no weights: the server then serves what its train task publishes
        self.serves_training = False
        self._served_signature = None
        if conf.get("model_uri") and conf.get("bundle"):
            raise ValueError("--conf model_uri and --conf bundle name two models to serve: give one")
        if conf.get("model_uri") or conf.get("checkpoint") or self._bundle_has_weights(conf):
            self.spec, self.scorer, self.served = load_scorer(conf)  # exactly this model, never replaced
            logger.info(f"SCRD serves {describe_served(self.served)}")
        else:
            self.serves_training = True
            bundle = bundle_folder(conf)
            self._served_signature = _weights_signature(self.trained_dir)
            if self._served_signature is not None:  # an earlier training of this app
                self._load_trained()
                logger.info(f"SCRD serves {describe_served(self.served)} (bundle {bundle} has no trained weights)")
            else:
                logger.info(f"SCRD serves no model yet: bundle {bundle} has no trained weights; the model that "
                            f"POST /train/{self.model_name} publishes to {self.trained_dir} is served once trained")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SCRD anomaly detection",
            description="Scale-aware Contrastive Reverse Distillation: anomaly score, label and heatmap for 2D images",
            version="0.1.0",
            labels=["anomaly"],
        )

    @staticmethod
    def _bundle_has_weights(conf: dict) -> bool:
        bundle = bundle_folder(conf)
        if not os.path.isdir(bundle):
            raise ValueError(f"bundle {bundle}: no such folder")
        try:
            bundle_checkpoint(bundle, conf.get("config_file") or None)
        except FileNotFoundError:
            return False
        return True

    def _load_trained(self) -> None:
        spec, scorer, served = load_scorer({"bundle": self.trained_dir, "device": self._device})
        self.spec, self.scorer, self.served = spec, scorer, {**served, "source": "app training"}

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        ext = self.conf.get("extensions")
        extensions = [e.strip() for e in ext.split(",") if e.strip()] if ext else list(DEFAULT_EXTENSIONS)
        return ContainedDatastore(
            self.studies,
            extensions=extensions,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self):
        return {self.model_name: SCRDInferTask(self.spec, self.scorer, served=self.served)}

    def _train_bundle(self) -> str | None:
        for candidate in (self.conf.get("train_bundle"), self.conf.get("bundle"), os.environ.get("SCRD_BUNDLE"),
                          REPOSITORY_BUNDLE):
            if candidate and os.path.isfile(os.path.join(candidate, "configs", "train.json")):
                return candidate
        return None

    def init_trainers(self):
        if str(self.conf.get("train", "true")).strip().lower() in ("false", "0", "no"):
            return {}
        source = self._train_bundle()
        if source is None:
            logger.warning("no bundle with configs/train.json (--conf train_bundle DIR): no train task")
            return {}
        served_after = None if self.serves_training else describe_served(self.served)
        return {self.model_name: SCRDTrainTask(source, self.trained_dir, device=self.conf.get("device") or None,
                                               serving_instead=served_after)}

    def _refresh_model(self) -> None:
        """Serve the trained bundle when a training published new weights since the model was loaded (only when the
        configured bundle has no weights of its own: a model given by URI or a trained bundle is never replaced)."""
        if not self.serves_training:
            return
        signature = _weights_signature(self.trained_dir)
        if signature is None or signature == self._served_signature:
            return
        with self._model_lock:
            if signature == self._served_signature:
                return
            self._served_signature = signature  # tried once per published model, also when it fails to load
            previous = self.spec, self.scorer, self.served
            try:
                self._load_trained()
            except Exception as e:  # noqa: BLE001 - keep serving the current model
                self.spec, self.scorer, self.served = previous
                logger.error(f"cannot load the newly trained model {self.trained_dir} ({e}); still serving {describe_served(self.served)}")
                return
            infer = self._infers[self.model_name]
            infer.spec, infer.scorer, infer.served = self.spec, self.scorer, self.served
            logger.info(f"SCRD now serves {describe_served(self.served)}")

    def info(self):
        self._refresh_model()
        return super().info()

    def init_strategies(self):
        return {}

    def resolve_image(self, image, datastore) -> str:
        """The real path of a requested image: a datastore id, or a path inside the studies folder; else HTTP 404
        (the same answer for a missing file and for one outside the studies folder)."""
        if isinstance(image, str) and image:
            uri = datastore.get_image_uri(image) if "\x00" not in image else ""
            candidate = uri or (image if os.path.isabs(image) else os.path.join(self.studies, image))
            real = resolve_inside(candidate, [self.studies])
            if real is not None:
                return real
        raise http_error(404, f"image {image!r} is not in the studies folder (list them with GET /datastore/?output=all)")

    def infer(self, request, datastore=None):
        model = request.get("model")
        if model not in self._infers:
            raise http_error(404, f"unknown model {model!r}; this server has {sorted(self._infers)}")
        self._refresh_model()
        if self.scorer is None:
            raise http_error(404, f"model {model!r} has no trained weights yet; mark normal studies and POST /train/{model}")
        ds = datastore if datastore else self.datastore()
        request = {**request, "image": self.resolve_image(request.get("image"), ds)}
        return super().infer(request, ds)
