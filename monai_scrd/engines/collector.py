"""Ignite handler that collects an evaluator's scores: the monitoring metrics of the held-out normals during training,
or the test metrics and evaluation outputs (``metrics.json``, ``scores.csv``, ROC curve, histogram, ``errors.csv``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import numpy as np
import torch
from ignite.engine import Engine, Events

from monai_scrd.engines.utils import is_rank0
from monai_scrd.scoring import ScoreWriter, detection_metrics, read_threshold, threshold_metrics, write_json

__all__ = ["ScoreCollector"]

logger = logging.getLogger("monai_scrd.engines")


class ScoreCollector:
    """Collects the :class:`~monai_scrd.scoring.ScoreResult` of an evaluator's :class:`SCRDEvalStep` over one run.

    ``mode="validation"`` (held-out normals during training): puts ``val_mean_score``, ``val_std_score``,
    ``val_p99_score`` into ``engine.state.metrics`` (lower mean = student reproduces normal images better; used for
    monitoring only, never for model selection on test labels).

    ``mode="test"`` (labelled test list): computes AUROC / AP and, with a stored threshold (fitted on validation
    normals: the label-free operating point, which the log line leads with), F1 / recall / FPR at that threshold
    (``stored_threshold``); ``f1`` / ``accuracy`` / ``threshold`` at the best-F1 threshold (``detection_metrics``, the
    paper's protocol) are fitted on the test labels, for comparison with papers only (``threshold_source`` says so).
    Writes ``metrics.json``, ``scores.csv`` (the scorer's decision in ``is_anomaly``), ``roc_curve.png``,
    ``score_histogram.png`` and ``errors.csv`` into ``output_dir``, adds the unreadable files to ``errors`` and puts
    the metrics into ``engine.state.metrics`` (``stored_threshold_*``, and ``best_f1_on_test_labels_*`` for the
    figures fitted on the labels).

    Args:
        mode: ``"validation"`` or ``"test"``.
        output_dir: where the test outputs go.
        threshold: the stored threshold (number, file or record; see ``read_threshold``), for the metrics at it.
        errors: :class:`~monai_scrd.scoring.ErrorCollector` that also gets the failed files (for the exit status).
        extra_info: written into ``metrics.json``.
    """

    def __init__(
        self,
        mode: str = "test",
        output_dir: str | None = None,
        threshold=None,
        errors=None,
        extra_info: Mapping | None = None,
    ) -> None:
        if mode not in ("validation", "test"):
            raise ValueError(f"mode {mode!r} is not 'validation' or 'test'")
        self.mode = mode
        self.output_dir = output_dir
        self.threshold = threshold
        self.errors = errors
        self.extra_info = dict(extra_info or {})
        self.results: list = []
        self.files: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._compute)

    def _reset(self, engine: Engine) -> None:
        self.results = []
        self.files = []

    def _collect(self, engine: Engine) -> None:
        self.results.extend(engine.state.output["results"])

    def _gather(self) -> list:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, [r.row() for r in self.results])
            seen, rows = set(), []
            for part in gathered:
                for r in part:
                    if r["path"] not in seen:  # DistributedSampler may repeat items to even out the ranks
                        seen.add(r["path"])
                        rows.append(r)
            return rows
        return [r.row() for r in self.results]

    def _compute(self, engine: Engine) -> None:
        rows = self._gather()
        good = [r for r in rows if not r["error"]]
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
        from monai_scrd.scoring.plots import save_roc_curve, save_score_histogram  # matplotlib: only for the test list

        out_dir = self.output_dir or "."
        os.makedirs(out_dir, exist_ok=True)
        labels = np.array([r.get("label", -1) for r in good], dtype=int)
        stored = read_threshold(self.threshold, missing_ok=True)
        metrics: dict = {"n_images": len(rows), "n_scored": len(good), "n_errors": len(rows) - len(good), **self.extra_info}
        if good and set(np.unique(labels)) == {0, 1}:
            metrics.update(detection_metrics(labels, scores))
            metrics["threshold_source"] = "best F1 on the test labels (paper protocol)"
            self.files.append(save_roc_curve(labels, scores, os.path.join(out_dir, "roc_curve.png")))
            self.files.append(
                save_score_histogram(labels, scores, os.path.join(out_dir, "score_histogram.png"),
                                     threshold=stored["threshold"] if stored else metrics["threshold"])
            )
            if stored is not None:
                metrics["stored_threshold"] = {
                    **threshold_metrics(labels, scores, stored["threshold"]),
                    "source": f"{self.threshold} ({stored.get('method', 'stored')})",
                }
        else:
            logger.warning("the test list needs labels 0 and 1 for AUROC/AP/F1; writing scores only")
        with ScoreWriter(out_dir, columns=["path", "label", "score", "is_anomaly"]) as writer:
            for r in rows:
                if not r["error"]:
                    writer.add_row(r)
                    continue
                writer.errors.add(r["path"], r["error"])
                if self.errors is not None:
                    self.errors.add(r["path"], r["error"])
        if self.errors is not None:
            self.errors.written = len(good)
        self.files += [write_json(os.path.join(out_dir, "metrics.json"), metrics), writer.scores_csv, writer.errors.errors_csv]
        # what the console (StatsHandler) and MLflow show: the label-free operating point under its own name, the
        # best-F1 figures under a name that says they use the test labels
        label_free = {f"stored_threshold_{k}": v for k, v in (metrics.get("stored_threshold") or {}).items()}
        uses_labels = ("threshold", "f1", "accuracy", "precision", "recall", "false_positive_rate")
        engine.state.metrics.update(
            {(f"best_f1_on_test_labels_{k}" if k in uses_labels else k): v for k, v in {**metrics, **label_free}.items()
             if k not in self.extra_info and isinstance(v, (int, float)) and not isinstance(v, bool)}
        )
        engine.state.scrd_artifacts = list(self.files)
        stored = metrics.get("stored_threshold") or {}
        line = ", ".join(f"{k}={metrics[k]:.4f}" for k in ("auroc", "average_precision") if k in metrics)
        if stored:
            line += ("; at the stored label-free threshold: " + ", ".join(
                f"{k}={stored[k]:.4f}" for k in ("f1", "recall", "false_positive_rate") if k in stored))
        if "f1" in metrics:
            line += f"; F1 at the best threshold on the test labels (paper protocol, uses the labels)={metrics['f1']:.4f}"
        logger.info(f"evaluation: {line} -> {out_dir}")
