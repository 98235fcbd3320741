"""MONAI Label train task for SCRD: trains on the datastore's studies marked normal with the bundle's own training
workflow, and publishes the trained bundle, which the app's infer task serves when the app was started with a
bundle without trained weights (a model URI or a trained bundle stays served: see :mod:`monai_scrd.label.app`).

* **Normal studies**: images whose datastore info has ``"normal": true``, set per image with
  ``PUT /datastore/image/info?image=<id>`` and the form field ``info={"normal": true}``. Training refuses to start
  with fewer than :data:`MIN_NORMAL_STUDIES`; :data:`VAL_SPLIT` of them (at least one) are held out to fit the
  decision threshold, as the bundle does with its ``validation`` list.
* **Same training as the bundle**: the source bundle's ``configs/train.json`` runs through ``monai.bundle`` (the
  ``run`` workflow of ``python -m monai.bundle run training``: ``SCRDTrainStep``, loss, checkpoints,
  ``ModelWriter`` writing ``models/model.pt`` and ``models/threshold.json``), with overrides only for the data
  (a datalist of the normal studies), the output folder, the device and the request's parameters.
* **Output**: a complete bundle in ``<app_dir>/model/<name>/`` (``configs/`` as trained, ``models/``, ``runs/``,
  ``datalist.json``). It is built in ``<name>.training/`` and renamed into place only after training succeeded, so
  the infer task never sees half-written weights.
* **Progress**: one line per step (``SCRD training: iteration 3/200 ...``) in the task's details
  (``GET /train/``), and ``train_stats`` in ``GET /info/`` (from ``train_stats.json``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any

from monailabel.interfaces.tasks.train import TrainTask

from monai_scrd.data.prepare import hold_out_validation
from monai_scrd.engines.utils import resolve_iterations

__all__ = ["SCRDTrainTask", "TrainProgress", "normal_studies", "is_marked_normal", "MIN_NORMAL_STUDIES", "VAL_SPLIT"]

logger = logging.getLogger("monai_scrd.label")

#: studies marked normal needed before training starts (8 to train on, 2 to fit the threshold with the default split)
MIN_NORMAL_STUDIES = 10
#: share of the normal studies held out to fit the decision threshold (at least one study)
VAL_SPLIT = 0.2
#: image info key that marks a study normal
NORMAL_KEY = "normal"
#: train.json values a train request may set (``params`` of ``POST /train/<name>``)
TRAIN_PARAMS = (
    "max_iterations",
    "batch_size",
    "learning_rate",
    "image_size",
    "pretrained_weights",
    "noise_intensity",
    "threshold_percentile",
    "seed",
)
STATS_FILE = "train_stats.json"


def is_marked_normal(info: dict) -> bool:
    """Whether a datastore image info marks the study normal (``true``, or the strings ``true``/``yes``/``1``)."""
    value = (info or {}).get(NORMAL_KEY)
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1")
    return value is True or (isinstance(value, int) and value == 1)


def normal_studies(datastore) -> list[tuple[str, str]]:
    """``[(image id, path), ...]`` of the datastore's studies marked normal, sorted by id."""
    out = []
    for image_id in sorted(datastore.list_images()):
        if is_marked_normal(datastore.get_image_info(image_id)):
            out.append((image_id, datastore.get_image_uri(image_id)))
    return out


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)  # readers never see a half-written file


class TrainProgress:
    """Ignite handler: every ``every`` iterations, prints ``SCRD training: iteration i/N, loss x`` (MONAI Label shows
    the training process's output in ``GET /train/``) and updates ``stats_path`` (``train_stats`` in ``/info/``).

    Args:
        stats_path: JSON file to keep up to date.
        max_iterations: planned iterations (for the progress).
        every: print/write interval in iterations.
        info: extra fields written with the stats (numbers of studies...).
    """

    def __init__(self, stats_path: str, max_iterations: int, every: int = 1, info: dict | None = None) -> None:
        self.stats_path = stats_path
        self.max_iterations = int(max_iterations)
        self.every = max(1, int(every))
        self.info = dict(info or {})
        self.start = time.time()

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        it = int(engine.state.iteration)
        if it % self.every and it < self.max_iterations:
            return
        loss = None
        try:
            from monai_scrd.engines import train_log_values

            loss = train_log_values(engine.state.output)["loss"]
        except Exception:  # noqa: BLE001 - progress without a loss value rather than no progress
            pass
        elapsed = time.time() - self.start
        stats = {
            "status": "RUNNING",
            "iteration": it,
            "max_iterations": self.max_iterations,
            "progress": round(min(it / max(self.max_iterations, 1), 1.0), 4),
            "loss": loss,
            "elapsed_s": round(elapsed, 1),
            "start_ts": int(self.start),
            **self.info,
        }
        _write_json(self.stats_path, stats)
        loss_text = "" if loss is None else f", loss {loss:.5g}"
        print(f"SCRD training: iteration {it}/{self.max_iterations}{loss_text} ({elapsed:.0f} s)", flush=True)


class SCRDTrainTask(TrainTask):
    """Trains SCRD on the studies marked normal (see the module docstring) and publishes the bundle to
    ``output_dir``.

    Args:
        source_bundle: bundle whose ``configs/`` (``train.json``, ``inference.json``, ``metadata.json``...) are copied
            and run.
        output_dir: where the trained bundle is published (``<app_dir>/model/<name>``).
        device: default device (``cpu``/``cuda``; default CUDA when available); a request's ``device`` wins.
        description: shown in ``/info/``.
        serving_instead: the model the server serves whatever is trained (a model URI or a trained bundle), named in
            the final message; None when the server serves what this task publishes.
    """

    def __init__(self, source_bundle: str, output_dir: str, device: str | None = None,
                 description: str = "Train SCRD on the studies marked normal (image info {\"normal\": true})",
                 serving_instead: str | None = None):
        super().__init__(description)
        self.source_bundle = os.path.abspath(source_bundle)
        self.output_dir = os.path.abspath(output_dir)
        self.device = device
        self.serving_instead = serving_instead
        with open(os.path.join(self.source_bundle, "configs", "train.json")) as f:
            self.train_config = json.load(f)

    @property
    def staging_dir(self) -> str:
        return self.output_dir + ".training"

    def _default_device(self) -> str:
        import torch

        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def config(self) -> dict[str, Any]:
        given = {k: self.train_config[k] for k in TRAIN_PARAMS if k in self.train_config}
        cfg = {k: v for k, v in given.items() if not str(v).startswith("$")}  # plain values only, no expressions
        cfg.update(val_split=VAL_SPLIT, device=self._default_device(), min_normal_studies=MIN_NORMAL_STUDIES)
        return cfg

    def info(self) -> dict[str, Any]:
        d = super().info()
        d.update(source_bundle=self.source_bundle, output_dir=self.output_dir, normal_key=NORMAL_KEY,
                 served_after_training=not self.serving_instead)
        return d

    def stats(self) -> dict[str, Any]:
        for folder in (self.staging_dir, self.output_dir):
            path = os.path.join(folder, STATS_FILE)
            if os.path.isfile(path):
                try:
                    with open(path) as f:
                        return json.load(f)
                except (OSError, ValueError):
                    return {}
        return {}

    def _params(self, request: dict) -> dict[str, Any]:
        """Request values for :data:`TRAIN_PARAMS`, converted to the type of the config's value (the UI sends text)."""
        out = {}
        for key in TRAIN_PARAMS:
            if key not in request or request[key] is None or request[key] == "":
                continue
            value, default = request[key], self.train_config.get(key)
            if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
                try:
                    number = float(value)
                except ValueError as e:
                    raise ValueError(f"train request: {key}={value!r} is not a number") from e
                value = int(number) if isinstance(default, int) and number.is_integer() else number
            out[key] = value
        return out

    def __call__(self, request: dict, datastore) -> dict:
        shutil.rmtree(self.staging_dir, ignore_errors=True)  # what a failed earlier run left
        studies = normal_studies(datastore)
        if len(studies) < MIN_NORMAL_STUDIES:
            raise ValueError(
                f"SCRD training refused: {len(studies)} studies marked normal in the datastore, at least "
                f"{MIN_NORMAL_STUDIES} needed; mark each with PUT /datastore/image/info?image=<id> and form field "
                f'info={{"{NORMAL_KEY}": true}}'
            )
        val_split = float(request.get("val_split", VAL_SPLIT) or VAL_SPLIT)
        if not 0 < val_split < 1:
            raise ValueError(f"train request: val_split={val_split} is not between 0 and 1")
        params = self._params(request)
        device = request.get("device") or self._default_device()
        device = device[0] if isinstance(device, (list, tuple)) else str(device)
        seed = int(params.get("seed", self.train_config.get("seed", 0)))
        training, validation = hold_out_validation(studies, val_split, seed, setting="train request: val_split")

        # a fresh bundle folder: the source's configs with the request's values written in, so the published bundle
        # records how it was trained and its inference uses the same image size
        staging = self.staging_dir
        shutil.copytree(os.path.join(self.source_bundle, "configs"), os.path.join(staging, "configs"))
        train_config: dict = {}
        for name in ("train.json", "inference.json"):
            path = os.path.join(staging, "configs", name)
            if os.path.isfile(path):
                with open(path) as f:
                    cfg = json.load(f)
                cfg.update({k: v for k, v in params.items() if k in cfg or name == "train.json"})
                _write_json(path, cfg)
                train_config = cfg if name == "train.json" else train_config
        datalist = os.path.join(staging, "datalist.json")
        _write_json(datalist, {
            "description": f"studies marked normal in the MONAI Label datastore ({NORMAL_KEY}: true)",
            "training": [{"image": p, "id": i} for i, p in training],
            "validation": [{"image": p, "id": i, "label": 0} for i, p in validation],
        })
        try:  # the bundle's own rule for "auto" (a schedule from the number of training studies)
            max_iterations = resolve_iterations(train_config.get("max_iterations", 0), len(training),
                                                int(train_config.get("batch_size", 8)))
        except (TypeError, ValueError):  # an expression: progress without the total
            max_iterations = 0
        stats_info = {"normal_studies": len(studies), "training_studies": len(training), "validation_studies": len(validation),
                      "device": device}
        progress = {
            "_target_": "monai_scrd.label.train.TrainProgress",
            "stats_path": os.path.join(staging, STATS_FILE),
            "max_iterations": max_iterations,
            "every": max(1, max_iterations // 50),
            "info": stats_info,
        }
        handlers = list(train_config.get("train", {}).get("handlers", [])) + [progress]
        overrides = {
            "bundle_root": staging,
            "datalist": datalist,
            "allow_absolute_paths": True,  # the datastore's own absolute paths
            "device": device,
            "num_workers": 0,
            "train#handlers": handlers,
        }
        print(f"SCRD training: {len(training)} normal studies, {len(validation)} held out for the threshold, "
              f"{max_iterations} iterations on {device}, source {self.source_bundle}", flush=True)
        try:
            self._run_bundle(staging, overrides)
        except BaseException as e:
            failed = {**self.stats(), **stats_info, "status": "ERROR", "error": str(e)}
            _write_json(os.path.join(staging, STATS_FILE), failed)
            raise
        threshold_path = os.path.join(staging, "models", "threshold.json")
        threshold = None
        if os.path.isfile(threshold_path):
            with open(threshold_path) as f:
                threshold = json.load(f).get("threshold")
        stats = {**self.stats(), "status": "DONE", "threshold": threshold, "end_ts": int(time.time())}
        _write_json(os.path.join(staging, STATS_FILE), stats)
        self._publish(staging)
        if self.serving_instead:
            after = (f"this server keeps serving {self.serving_instead}; serve the new model with "
                     f"`python -m monai_scrd.label serve --bundle {self.output_dir} ...` or register it")
        else:
            after = "served from the next request"
        print(f"SCRD training: done; model published to {self.output_dir} (threshold {threshold}); {after}", flush=True)
        return stats

    @staticmethod
    def _run_bundle(staging: str, overrides: dict) -> None:
        """``python -m monai.bundle run --config_file configs/train.json ...`` of the staged bundle, in this process
        (MONAI Label already runs each training in a process of its own)."""
        from monai.bundle import create_workflow

        logging_file = os.path.join(staging, "configs", "logging.conf")
        workflow = create_workflow(
            config_file=os.path.join(staging, "configs", "train.json"),
            meta_file=os.path.join(staging, "configs", "metadata.json"),
            logging_file=logging_file if os.path.isfile(logging_file) else None,
            **overrides,
        )
        workflow.run()
        workflow.finalize()
        model_path = os.path.join(staging, "models", "model.pt")
        if not os.path.isfile(model_path):
            raise RuntimeError(f"SCRD training finished without writing {model_path}")

    def _publish(self, staging: str) -> None:
        """Swap the trained bundle into ``output_dir`` (two renames; the previous one is removed afterwards)."""
        previous = self.output_dir + ".previous"
        shutil.rmtree(previous, ignore_errors=True)
        if os.path.isdir(self.output_dir):
            os.rename(self.output_dir, previous)
        os.rename(staging, self.output_dir)
        shutil.rmtree(previous, ignore_errors=True)
