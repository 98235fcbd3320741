"""Ignite handlers for the SCRD bundle: iteration limit, score collection/evaluation outputs, final model export
with a fitted threshold, and MLflow extras (params, per-iteration alpha, artifacts) on top of MONAI's MLFlowHandler."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from monai_scrd.engines.evaluation import SCRDEvalStep, write_errors_csv, write_json, write_scores_csv
from monai_scrd.engines.utils import is_rank0, unwrap

__all__ = [
    "MaxIterationsHandler",
    "ScoreCollector",
    "TrainingFinalizer",
    "MLflowExtrasHandler",
    "fit_threshold",
    "load_threshold",
    "find_mlflow_handler",
]

logger = logging.getLogger("monai_scrd.engines")


class MaxIterationsHandler:
    """Stops the trainer after ``max_iterations`` iterations in total (counting those before a resume), and prints a
    progress line with the speed every ``log_every`` iterations."""

    def __init__(self, max_iterations: int, log_every: int = 0) -> None:
        self.max_iterations = int(max_iterations)
        self.log_every = int(log_every)
        self._t0 = None
        self._it0 = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self._started_iteration)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _started_iteration(self, engine: Engine) -> None:
        if self._t0 is None:  # first iteration of this run (after a resume: the restored iteration + 1)
            self._t0 = time.time()
            self._it0 = engine.state.iteration - 1
            if self._it0 > 0:
                engine.logger.info(f"resumed training at iteration {self._it0}")
        if engine.state.iteration > self.max_iterations:
            engine.logger.info(f"checkpoint is already at {self._it0} >= max_iterations={self.max_iterations}; nothing to do")
            engine.terminate()

    def __call__(self, engine: Engine) -> None:
        it = engine.state.iteration
        if self.log_every and is_rank0() and (it % self.log_every == 0 or it == self.max_iterations):
            done = it - self._it0
            rate = (time.time() - self._t0) / max(done, 1)
            engine.logger.info(
                f"iteration {it}/{self.max_iterations} ({rate:.2f} s/it, ~{rate * (self.max_iterations - it):.0f} s left)"
            )
        if it >= self.max_iterations:
            engine.terminate()


def _to_list(x) -> list:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().view(-1).tolist()
    return list(x)


def load_threshold(path: str | None) -> dict | None:
    """The stored threshold file (``{"threshold": float, ...}``) or None when ``path`` is empty/missing."""
    if not path or not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("threshold"), (int, float)):
        raise ValueError(f"{path}: not a threshold file (expected {{'threshold': number, ...}})")
    return data


def fit_threshold(scores: Sequence[float], percentile: float = 99.0) -> float:
    """Decision threshold from anomaly scores of held-out *normal* images: their ``percentile``-th percentile, so about
    (100 - percentile)% of normal images are flagged. Uses no anomalous images and no test labels."""
    arr = np.asarray(scores, dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        raise ValueError("no finite validation scores to fit a threshold on")
    return float(np.percentile(arr, percentile))


class ScoreCollector:
    """Collects the image scores from :class:`SCRDEvalStep` outputs over one evaluator run.

    ``mode="validation"`` (held-out normals during training): puts ``val_mean_score``, ``val_std_score``,
    ``val_p99_score`` into ``engine.state.metrics`` (lower mean = student reproduces normal images better; used for
    monitoring only, never for model selection on test labels).

    ``mode="test"`` (labelled test list): computes AUROC / AP / F1 / accuracy at the best-F1 threshold
    (``detection_metrics``, the paper's protocol, fitted on the test labels) and, when ``threshold_path`` holds a
    stored threshold (fitted on validation normals), F1/accuracy at that threshold too; writes ``metrics.json``,
    ``scores.csv``, ``roc_curve.png``, ``score_histogram.png`` and ``errors.csv`` (unreadable inputs) into
    ``output_dir`` and puts the metrics into ``engine.state.metrics``.
    """

    def __init__(
        self,
        mode: str = "test",
        output_dir: str | None = None,
        threshold_path: str | None = None,
        error_report=None,
        extra_info: Mapping | None = None,
    ) -> None:
        if mode not in ("validation", "test"):
            raise ValueError(f"mode {mode!r} is not 'validation' or 'test'")
        self.mode = mode
        self.output_dir = output_dir
        self.threshold_path = threshold_path
        self.error_report = error_report
        self.extra_info = dict(extra_info or {})
        self.rows: list[dict] = []
        self.files: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._compute)

    def _reset(self, engine: Engine) -> None:
        self.rows = []
        self.files = []

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        for path, score, label, error in zip(out["path"], _to_list(out["score"]), _to_list(out["label"]), out["error"]):
            self.rows.append({"path": path, "score": float(score), "label": int(label), "error": error})

    def _gather(self) -> list[dict]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self.rows)
            seen, rows = set(), []
            for part in gathered:
                for r in part:
                    if r["path"] not in seen:  # DistributedSampler may repeat items to even out the ranks
                        seen.add(r["path"])
                        rows.append(r)
            return rows
        return self.rows

    def _compute(self, engine: Engine) -> None:
        rows = self._gather()
        good = [r for r in rows if not r["error"]]
        bad = [(r["path"], r["error"]) for r in rows if r["error"]]
        scores = np.array([r["score"] for r in good], dtype=float)
        if self.mode == "validation":
            if scores.size:
                engine.state.metrics.update(
                    val_mean_score=float(scores.mean()),
                    val_std_score=float(scores.std()),
                    val_p99_score=float(np.percentile(scores, 99)),
                )
            engine.state.scrd_scores = scores
            return
        if not is_rank0():
            return
        from monai_scrd.scoring import detection_metrics, threshold_metrics

        out_dir = self.output_dir or "."
        os.makedirs(out_dir, exist_ok=True)
        labels = np.array([r["label"] for r in good], dtype=int)
        stored = load_threshold(self.threshold_path)
        metrics: dict = {"n_images": len(rows), "n_scored": len(good), "n_errors": len(bad), **self.extra_info}
        if good and set(np.unique(labels)) == {0, 1}:
            metrics.update(detection_metrics(labels, scores))
            metrics["threshold_source"] = "best F1 on the test labels (paper protocol)"
            from monai_scrd.engines.plots import save_roc_curve, save_score_histogram

            self.files.append(save_roc_curve(labels, scores, os.path.join(out_dir, "roc_curve.png")))
            self.files.append(
                save_score_histogram(labels, scores, os.path.join(out_dir, "score_histogram.png"),
                                     threshold=stored["threshold"] if stored else metrics["threshold"])
            )
            if stored is not None:
                metrics["stored_threshold"] = {
                    **threshold_metrics(labels, scores, stored["threshold"]),
                    "source": f"{self.threshold_path} ({stored.get('method', 'stored')})",
                }
        else:
            logger.warning("test list needs labels 0 and 1 for AUROC/AP/F1; writing scores only")
        for r in rows:
            r["is_anomaly"] = int(r["score"] >= stored["threshold"]) if (stored and not r["error"]) else ""
        self.files.append(write_json(os.path.join(out_dir, "metrics.json"), metrics))
        self.files.append(
            write_scores_csv(os.path.join(out_dir, "scores.csv"), [r for r in rows if not r["error"]],
                             ["path", "label", "score", "is_anomaly"])
        )
        errors_csv = write_errors_csv(os.path.join(out_dir, "errors.csv"), bad)
        if errors_csv:
            self.files.append(errors_csv)
        if self.error_report is not None:
            for p, e in bad:
                self.error_report.add(p, e)
        engine.state.metrics.update(
            {k: v for k, v in metrics.items()
             if k not in self.extra_info and isinstance(v, (int, float)) and not isinstance(v, bool)}
        )
        engine.state.scrd_artifacts = list(self.files)
        engine.logger.info("evaluation: " + ", ".join(
            f"{k}={metrics[k]:.4f}" for k in ("auroc", "average_precision", "f1", "accuracy") if k in metrics
        ) + f" -> {out_dir}")


class TrainingFinalizer:
    """At the end of training (rank 0): writes the final weights ``{"model": state_dict}`` to ``model_path`` and, with
    a validation data loader of held-out normals, the decision threshold (``percentile`` of their scores) to
    ``threshold_path``; both become MLflow artifacts when tracking is on. With a ``selection``
    (:class:`~monai_scrd.engines.SyntheticValidation`), its ``select(engine)`` first loads the selected weights (best
    synthetic-validation or last, its ``model_selection``) into the network, and what it returns (iteration and
    validation AUROCs of the best and the last evaluations) is added to the threshold file. With ``calibrate_scales``,
    the per-scale calibration of the anomaly map (:meth:`~monai_scrd.scoring.AnomalyMapGenerator.calibrate`) is then
    fitted on the validation normals, before the weights are saved and the threshold is fitted."""

    def __init__(
        self,
        network: torch.nn.Module,
        model_path: str,
        threshold_path: str | None = None,
        val_loader=None,
        percentile: float = 99.0,
        reduction: str = "mean",
        device=None,
        extra_info: Mapping | None = None,
        selection=None,
        calibrate_scales: bool = False,
    ) -> None:
        self.network = network
        self.selection = selection
        self.calibrate_scales = bool(calibrate_scales)
        self.model_path = model_path
        self.threshold_path = threshold_path
        self.val_loader = val_loader
        self.percentile = float(percentile)
        self.reduction = reduction
        self.device = device
        self.extra_info = dict(extra_info or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    @torch.no_grad()
    def validation_scores(self, device) -> np.ndarray:
        step = SCRDEvalStep(self.reduction)

        class _E:  # minimal engine stand-in for the eval step
            pass

        e = _E()
        e.network, e.amp = self.network, False
        e.state = type("S", (), {"device": device})()
        scores = []
        for batch in self.val_loader:
            out = step(e, batch)
            scores.extend(s for s in out["score"].tolist() if np.isfinite(s))
        return np.asarray(scores, dtype=float)

    @torch.no_grad()
    def fit_scale_calibration(self, device) -> dict:
        """Per-scale calibration of the anomaly map from the validation normals (see ``calibrate_scales``)."""
        net = unwrap(self.network)
        was_training = net.training
        net.eval()
        chunks = []
        for batch in self.val_loader:
            ok = torch.tensor([not e for e in batch.get("error", [""] * len(batch["image"]))], dtype=torch.bool)
            if ok.any():
                x = torch.as_tensor(batch["image"])[ok]
                x = x.as_tensor() if hasattr(x, "as_tensor") else x
                chunks.append(net.scale_scores(x.to(device))[0].float().cpu())
        net.train(was_training)
        if not chunks:
            raise ValueError("calibrate_scales needs validation (normal) images, but none could be read")
        net.anomaly_map.calibrate(torch.cat(chunks))
        return {"scale_calibration": {"mean": net.anomaly_map.scale_mean.tolist(), "std": net.anomaly_map.scale_std.tolist(),
                                      "n_images": int(sum(len(c) for c in chunks))}}

    def __call__(self, engine: Engine) -> None:
        if not is_rank0():
            return
        net = unwrap(self.network)
        selection_info = self.selection.select(engine) if self.selection is not None else {}
        if self.calibrate_scales and self.val_loader is not None:
            selection_info.update(self.fit_scale_calibration(self.device if self.device is not None else engine.state.device))
            engine.logger.info(f"per-scale calibration on the validation normals: {selection_info['scale_calibration']}")
        os.makedirs(os.path.dirname(os.path.abspath(self.model_path)), exist_ok=True)
        torch.save({"model": {k: v.detach().cpu() for k, v in net.state_dict().items()}}, self.model_path)
        files = [self.model_path]
        engine.logger.info(f"saved final model weights to {self.model_path} (iteration {engine.state.iteration})")
        if self.threshold_path and self.val_loader is not None:
            was_training = net.training
            scores = self.validation_scores(self.device if self.device is not None else engine.state.device)
            net.train(was_training)
            if scores.size:
                thr = fit_threshold(scores, self.percentile)
                info = {
                    "threshold": thr,
                    "method": f"{self.percentile:g}th percentile of the anomaly scores of the validation (normal) images",
                    "fitted_on": "validation",
                    "n_images": int(scores.size),
                    "validation_mean_score": float(scores.mean()),
                    "score_reduction": self.reduction,
                    "iteration": int(engine.state.iteration),
                    **self.extra_info,
                    **selection_info,
                }
                files.append(write_json(self.threshold_path, info))
                engine.state.metrics["threshold"] = thr
                engine.logger.info(f"decision threshold {thr:.5g} ({info['method']}) -> {self.threshold_path}")
            else:
                engine.logger.warning("no validation images could be scored; no threshold file written")
        engine.state.scrd_artifacts = list(getattr(engine.state, "scrd_artifacts", [])) + files


def find_mlflow_handler(engine: Engine):
    """The ``monai.handlers.MLFlowHandler`` attached to ``engine`` (by ``--tracking mlflow``), or None."""
    from monai.handlers import MLFlowHandler

    for handlers in engine._event_handlers.values():
        for entry in handlers:
            func = entry[0]
            owner = getattr(func, "__self__", None)
            if isinstance(owner, MLFlowHandler):
                return owner
    return None


class MLflowExtrasHandler:
    """Adds SCRD specifics to the run of the MLFlowHandler that ``--tracking mlflow`` attaches (no-op without one):
    run parameters (once), the per-scale alpha means at every iteration (``engine.state.metrics`` keys starting with
    ``metric_prefixes``), and at completion the final metrics and the artifacts listed in
    ``engine.state.scrd_artifacts`` (final checkpoint, threshold, ROC curve, histogram, metrics.json, scores.csv).

    Attach it *before* the MLFlowHandler (it is in the bundle's handler list; tracking appends MLflow's after), so its
    COMPLETED callback runs before MLflow closes the run.
    """

    def __init__(
        self,
        params: Mapping | None = None,
        metric_prefixes: Sequence[str] = ("alpha_",),
        iteration_log: bool = True,
        close_run: bool = False,
    ) -> None:
        self.params = {k: str(v) for k, v in dict(params or {}).items()}
        self.metric_prefixes = tuple(metric_prefixes)
        self.iteration_log = iteration_log
        self.close_run = close_run
        self._params_logged = False

    def attach(self, engine: Engine) -> None:
        if self.iteration_log:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._params)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _handler(self, engine: Engine):
        if not is_rank0():
            return None
        h = find_mlflow_handler(engine)
        return h if (h is not None and h.cur_run is not None) else None

    def _params(self, engine: Engine) -> None:
        h = self._handler(engine)
        if h is None or self._params_logged:
            return
        existing = h.client.get_run(h.cur_run.info.run_id).data.params
        new = {k: v for k, v in self.params.items() if k not in existing}
        if new:
            h._log_params(new)
        self._params_logged = True

    def _iteration(self, engine: Engine) -> None:
        h = self._handler(engine)
        if h is None:
            return
        self._params(engine)
        values = {k: float(v) for k, v in engine.state.metrics.items() if k.startswith(self.metric_prefixes)}
        if values:
            h._log_metrics(values, step=engine.state.iteration)

    def _completed(self, engine: Engine) -> None:
        h = self._handler(engine)
        if h is None:
            return
        self._params(engine)
        final = {k: float(v) for k, v in engine.state.metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
        if final:
            h._log_metrics(final, step=engine.state.iteration)
        for path in getattr(engine.state, "scrd_artifacts", []):
            if path and os.path.isfile(path):
                h.client.log_artifact(h.cur_run.info.run_id, path)
        if self.close_run:
            h.close()


def _engine_objects(engine: Engine) -> dict:
    objs = {"trainer": engine}
    scaler = getattr(engine, "scaler", None)
    if scaler is not None and hasattr(scaler, "state_dict"):
        objs["scaler"] = scaler
    return objs


from monai.handlers import CheckpointLoader as _CheckpointLoader  # noqa: E402
from monai.handlers import CheckpointSaver as _CheckpointSaver  # noqa: E402


class TrainerCheckpointSaver(_CheckpointSaver):
    """``CheckpointSaver`` that also saves the engine it is attached to (``"trainer"``: iteration, epoch) and the AMP
    grad scaler, so a run can resume where it stopped (the trainer cannot be referenced from its own handler list in
    a bundle config). Everything else as MONAI's (``save_interval`` iterations with ``epoch_level=False``)."""

    def attach(self, engine: Engine) -> None:
        self.save_dict.update(_engine_objects(engine))
        super().attach(engine)


class TrainerCheckpointLoader(_CheckpointLoader):
    """``CheckpointLoader`` that restores the engine it is attached to (``"trainer"``) and its AMP grad scaler along
    with the objects in ``load_dict`` (model, optimizer) when the run starts."""

    def attach(self, engine: Engine) -> None:
        self.load_dict.update(_engine_objects(engine))
        super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        data = torch.load(self.load_path, map_location="cpu", weights_only=True)
        missing = [k for k in self.load_dict if k not in data and k != "scaler"]
        if missing:
            raise ValueError(f"{self.load_path}: not a resumable training checkpoint (missing {missing}); "
                             "use a file from ckpt_dir, not models/model.pt")
        if "scaler" in self.load_dict and "scaler" not in data:
            self.load_dict.pop("scaler")
        super().__call__(engine)
        engine.logger.info(f"resuming from {self.load_path} at iteration {engine.state.iteration}")


__all__ += ["TrainerCheckpointSaver", "TrainerCheckpointLoader"]
