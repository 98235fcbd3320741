"""The end of training, one job per handler: :class:`ScoringFitter` gives the final network its scoring, fitted on
the held-out normals (the maths is :mod:`monai_scrd.scoring.fitting`); :class:`ModelWriter` then writes the weights
(``model.pt``) and the threshold record (``threshold.json``)."""

from __future__ import annotations

import json
import logging
import os
import shlex
from collections.abc import Mapping

import numpy as np
import torch
from ignite.engine import Engine, Events

from monai_scrd.data.errors import DataError
from monai_scrd.engines.utils import find_bundle_root, is_rank0, unwrap
from monai_scrd.scoring.fitting import fit_network_scoring, threshold_record
from monai_scrd.scoring.io import write_json

__all__ = ["ScoringFitter", "ModelWriter"]

logger = logging.getLogger("monai_scrd.engines")


class ScoringFitter:
    """At the end of training (rank 0): loads the selected weights (``selection``) and fits the network's scoring on
    the held-out normals: the calibration of the scored statistic, the ``auto`` choice of scales and image reduction
    on synthetic anomalies, and the cross-fitted threshold (:func:`~monai_scrd.scoring.fitting.fit_network_scoring`);
    without ``calibrate_scales`` only the threshold of the network's own scoring (the paper's). The threshold record
    goes to ``engine.state.scrd_threshold`` for :class:`ModelWriter`.

    Args:
        network: the trained network.
        scorer: the :class:`~monai_scrd.scoring.Scorer` of the validation (on ``network``): its preprocessing and
            settings are recorded, and without ``calibrate_scales`` its scores give the threshold.
        val_loader: loader of a :class:`~monai_scrd.scoring.ScoringDataset` of the validation normals; None fits
            nothing.
        percentile: of the validation scores.
        selection: :class:`~monai_scrd.engines.SyntheticValidation`; its ``select(engine)`` first loads the selected
            weights (best synthetic-validation or last, its ``model_selection``) into the network, and what it returns
            is added to the threshold record.
        calibrate_scales: fit the scoring (:func:`~monai_scrd.scoring.fitting.fit_scoring`) on the validation
            normals; False keeps the network's scoring as it is and fits only the threshold.
        score_reduction: ``"auto"`` or a fixed image reduction (with ``calibrate_scales``).
        seed: of the synthetic anomalies and the cross-fitting folds.
        max_anomalies: synthetic anomalies at most (1 to 3 per normal).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        scorer=None,
        val_loader=None,
        percentile: float = 95.0,
        selection=None,
        calibrate_scales: bool = False,
        score_reduction: str = "auto",
        seed: int = 0,
        max_anomalies: int = 600,
    ) -> None:
        self.network = network
        self.scorer = scorer
        self.val_loader = val_loader
        self.percentile = float(percentile)
        self.selection = selection
        self.calibrate_scales = bool(calibrate_scales)
        self.score_reduction = score_reduction
        self.seed = int(seed)
        self.max_anomalies = int(max_anomalies)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    @staticmethod
    def _refuse_failures(errors: list[str], total: int) -> None:
        """Nothing is fitted on part of the validation list: one line naming the first failure."""
        if errors:
            raise DataError(f"{len(errors)} of {total} validation images could not be scored, so nothing is fitted; "
                            f"fix or remove them: {errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))

    def validation_images(self) -> torch.Tensor:
        """The preprocessed validation images ``[N, C, H, W]`` (a volume's slices each)."""
        prepared = [p for batch in self.val_loader for p in batch]
        self._refuse_failures([p.error for p in prepared if p.error], len(prepared))
        return torch.cat([p.images for p in prepared]) if prepared else torch.zeros(0)

    def validation_scores(self) -> np.ndarray:
        """Scores of the validation images under the network's current scoring (``calibrate_scales`` off)."""
        results = [r for batch in self.val_loader for r in self.scorer.score_prepared(batch)]
        self._refuse_failures([r.error for r in results if not r.ok], len(results))
        return np.asarray([r.score for r in results], dtype=float)

    def fit(self):
        """:class:`~monai_scrd.scoring.fitting.ScoringFit` on the validation normals and synthetic anomalies (foreign
        patches) made from them, applied to the network (:func:`~monai_scrd.scoring.fitting.fit_network_scoring`)."""
        return fit_network_scoring(unwrap(self.network), self.validation_images(), self.score_reduction,
                                   self.percentile, self.seed, self.max_anomalies, getattr(self.scorer, "batch_size", 16))

    def __call__(self, engine: Engine) -> None:
        if not is_rank0():
            return
        selection_info = self.selection.select(engine) if self.selection is not None else {}
        engine.state.scrd_threshold = None
        if self.val_loader is None or self.scorer is None:
            return
        if self.calibrate_scales:
            fit = self.fit()
            record = fit.record()
            choice = record["scoring_choice"]
            logger.info(f"scoring fitted on {fit.n_normal} validation normals and {fit.n_anomalous} synthetic anomalies "
                        f"(foreign patches): {fit.scales}, image score {fit.reduction} (synthetic AUROC "
                        f"{choice['synthetic_auroc'] if choice['synthetic_auroc'] is None else round(choice['synthetic_auroc'], 4)}"
                        f" among {len(fit.candidates)} candidates; a label-free ranking, not a test AUROC)")
        else:
            record = threshold_record(self.validation_scores(), self.percentile, self.scorer.score_reduction)
        engine.state.scrd_threshold = {
            **record,
            "fitted_on": "validation",
            "n_images": len(record["validation_scores"]),
            "scale_weighting": self.scorer.scale_weighting,
            "preprocessing": self.scorer.preprocessing,
            "iteration": int(engine.state.iteration),
            **selection_info,
        }
        engine.state.metrics["threshold"] = record["threshold"]


class ModelWriter:
    """At the end of training (rank 0), after :class:`ScoringFitter`: writes the final weights
    ``{"model": state_dict}`` to ``model_path`` and the threshold record of ``engine.state.scrd_threshold`` (with
    ``extra_info``) to ``threshold_path``; both become MLflow artifacts when tracking is on. Its last log line names
    the commands that use the model.

    Args:
        network: the trained network.
        model_path: where the final weights go.
        threshold_path: where the threshold record goes (nothing is written without a fitted record).
        extra_info: bundle settings written into the threshold file (``backbone``, ``image_size``, ``color_mode``).
    """

    def __init__(self, network: torch.nn.Module, model_path: str, threshold_path: str | None = None,
                 extra_info: Mapping | None = None) -> None:
        self.network = network
        self.model_path = model_path
        self.threshold_path = threshold_path
        self.extra_info = dict(extra_info or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_rank0():
            return
        net = unwrap(self.network)
        os.makedirs(os.path.dirname(os.path.abspath(self.model_path)), exist_ok=True)
        torch.save({"model": {k: v.detach().cpu() for k, v in net.state_dict().items()}}, self.model_path)
        files = [self.model_path]
        logger.info(f"saved final model weights to {self.model_path} (iteration {engine.state.iteration})")
        record = getattr(engine.state, "scrd_threshold", None)
        if self.threshold_path and record:
            files.append(write_json(self.threshold_path, {**record, **self.extra_info}))
            logger.info(f"decision threshold {record['threshold']:.5g} ({record['method']}) -> {self.threshold_path}")
        engine.state.scrd_artifacts = list(getattr(engine.state, "scrd_artifacts", [])) + files
        logger.info(self.next_step())

    def next_step(self) -> str:
        """The last line of a training log: the commands that use the model just saved (inference on new images,
        evaluation on the datalist's test list), with the settings they need to find and rebuild it."""
        try:
            root = find_bundle_root()
        except Exception:
            root = os.path.join("bundles", "scrd")
        configs = os.path.relpath(os.path.join(root, "configs"))
        extra = []
        model_dir = os.path.dirname(os.path.abspath(self.model_path))
        if model_dir != os.path.abspath(os.path.join(root, "models")):
            extra += ["--model_dir", model_dir]
        try:  # the settings inference.json would otherwise use
            with open(os.path.join(root, "configs", "inference.json")) as f:
                defaults = json.load(f)
        except (OSError, ValueError):
            defaults = {}
        for key in ("image_size", "backbone"):
            value = self.extra_info.get(key)
            if value is not None and str(value) != str(defaults.get(key)):
                extra += [f"--{key}", str(value)]
        more = "".join(f" {shlex.quote(a)}" for a in extra)
        infer = f"python -m monai.bundle run --config_file {shlex.quote(os.path.join(configs, 'inference.json'))}"
        both = f"['{os.path.join(configs, 'train.json')}','{os.path.join(configs, 'evaluate.json')}']"
        return (f"next: score new images with `{infer} --inputs /path/to/images{more}`; evaluate on the test list with "
                f"`python -m monai.bundle run evaluating --config_file \"{both}\"{more}`")
