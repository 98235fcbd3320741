"""Ignite handlers for the SCRD bundle: the iteration limit and progress line, score collection and evaluation
outputs, the final model with a fitted threshold, and the MLflow extras that MONAI's default tracking does not log."""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from monai_scrd.engines.utils import is_rank0, unwrap

__all__ = [
    "IterationLimit",
    "ProgressLog",
    "ValidationLog",
    "ScoreCollector",
    "TrainingFinalizer",
    "MLflowRunExtras",
    "find_mlflow_run",
]

logger = logging.getLogger("monai_scrd.engines")


class IterationLimit:
    """Trains for ``max_iterations`` iterations in total, counting those before a resume, with Ignite's own limit
    (``engine.state.max_iters``, which MONAI's workflows cannot pass to ``Engine.run``): set on the engine's state when
    attached, instead of ``max_epochs`` (give the trainer ``max_epochs=None``). The epochs are plain passes over the
    data loader."""

    def __init__(self, max_iterations: int) -> None:
        if int(max_iterations) < 1:
            raise ValueError(f"max_iterations must be at least 1, got {max_iterations}")
        self.max_iterations = int(max_iterations)

    def attach(self, engine: Engine) -> None:
        engine.state.max_epochs = None
        engine.state.max_iters = self.max_iterations


class ProgressLog:
    """The one training log line per log interval, as ``StatsHandler(iteration_print_logger=ProgressLog(...))``:
    iteration of total, the values of ``output_transform`` (loss and per-scale alpha) and the speed and time left.

    Args:
        max_iterations: the total (default: the engine's ``state.max_iters``).
        output_transform: engine output -> ``{name: float}`` (default: ``train_log_values``).
    """

    def __init__(self, max_iterations: int | None = None, output_transform: Callable | None = None) -> None:
        self.max_iterations = max_iterations
        self.output_transform = output_transform
        self._last: tuple[float, int] | None = None

    def __call__(self, engine: Engine) -> None:
        from monai_scrd.engines.training import train_log_values

        it = engine.state.iteration
        total = self.max_iterations or engine.state.max_iters
        values = (self.output_transform or train_log_values)(engine.state.output)
        line = f"iteration {it}/{total}: " + " ".join(f"{k} {v:.5g}" for k, v in values.items())
        now = time.perf_counter()
        if self._last is not None and it > self._last[1]:
            rate = (now - self._last[0]) / (it - self._last[1])
            line += f" ({rate:.2f} s/it" + (f", ~{rate * (total - it):.0f} s left)" if total else ")")
        self._last = (now, it)
        logger.info(line)


class ValidationLog:
    """The one log line of a validation run during training, as ``StatsHandler(epoch_print_logger=ValidationLog())``
    on the validation evaluator: ``validation normals: mean_score ... p99_score ... std_score ...`` instead of
    Ignite's ``Epoch[17] Metrics -- ...``, whose epoch (of an iteration-based run) does not match the
    ``iteration i/n`` progress lines around it. The metrics are the evaluator's (``ScoreCollector(mode="validation")``).
    """

    def __call__(self, engine: Engine) -> None:
        metrics = {k[4:] if k.startswith("val_") else k: v for k, v in engine.state.metrics.items()}
        values = " ".join(f"{k} {v:.5g}" for k, v in metrics.items() if isinstance(v, (int, float, np.number)))
        logger.info(f"validation normals: {values} (monitoring only)")


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
        from monai_scrd.scoring import ScoreWriter, read_threshold, write_json

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
        from monai_scrd.scoring import detection_metrics, threshold_metrics
        from monai_scrd.scoring.plots import save_roc_curve, save_score_histogram

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


class TrainingFinalizer:
    """At the end of training (rank 0): fits the scoring on the held-out normals and writes the final weights
    ``{"model": state_dict}`` to ``model_path`` and the threshold record to ``threshold_path``; both become MLflow
    artifacts when tracking is on. The fitting itself (calibration of the scored statistic, the ``auto`` choice of
    scales and image reduction on synthetic anomalies, the cross-fitted threshold) is
    :func:`monai_scrd.scoring.fitting.fit_scoring`; this handler only gathers the images and saves the result.

    Args:
        network: the trained network.
        model_path: where the final weights go.
        threshold_path: where the threshold record goes.
        scorer: the :class:`~monai_scrd.scoring.Scorer` of the validation (on ``network``): its preprocessing and
            settings are recorded, and without ``calibrate_scales`` its scores give the threshold.
        val_loader: loader of a :class:`~monai_scrd.scoring.ScoringDataset` of the validation normals.
        percentile: of the validation scores.
        extra_info: written into the threshold file.
        selection: :class:`~monai_scrd.engines.SyntheticValidation`; its ``select(engine)`` first loads the selected
            weights (best synthetic-validation or last, its ``model_selection``) into the network, and what it returns
            is added to the threshold file.
        calibrate_scales: fit the scoring (:func:`~monai_scrd.scoring.fitting.fit_scoring`) on the validation
            normals before the weights are saved; False keeps the network's scoring as it is (the paper's) and fits
            only the threshold.
        score_reduction: ``"auto"`` or a fixed image reduction (with ``calibrate_scales``).
        seed: of the synthetic anomalies and the cross-fitting folds.
        max_anomalies: synthetic anomalies at most (1 to 3 per normal).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        model_path: str,
        threshold_path: str | None = None,
        scorer=None,
        val_loader=None,
        percentile: float = 95.0,
        extra_info: Mapping | None = None,
        selection=None,
        calibrate_scales: bool = False,
        score_reduction: str = "auto",
        seed: int = 0,
        max_anomalies: int = 600,
    ) -> None:
        self.network = network
        self.selection = selection
        self.calibrate_scales = bool(calibrate_scales)
        self.model_path = model_path
        self.threshold_path = threshold_path
        self.scorer = scorer
        self.val_loader = val_loader
        self.percentile = float(percentile)
        self.extra_info = dict(extra_info or {})
        self.score_reduction = score_reduction
        self.seed = int(seed)
        self.max_anomalies = int(max_anomalies)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    @staticmethod
    def _refuse_failures(errors: list[str], total: int) -> None:
        """Nothing is fitted on part of the validation list: one line naming the first failure."""
        from monai_scrd.data.errors import DataError

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
        patches) made from them, applied to the network."""
        from monai_scrd.scoring.fitting import apply_fit, fit_scoring, network_scale_maps
        from monai_scrd.transforms.validation_anomaly import SCORING_FAMILIES, SCORING_SIZES, synthetic_validation_set

        net = unwrap(self.network)
        normals = self.validation_images()
        per_normal = max(1, min(3, self.max_anomalies // max(1, len(normals))))
        synthetic = synthetic_validation_set(normals, seed=self.seed, anomalies_per_normal=per_normal,
                                             families=SCORING_FAMILIES, sizes=SCORING_SIZES)
        batch = getattr(self.scorer, "batch_size", 16)
        normal_maps, normal_alpha = network_scale_maps(net, normals, batch)
        anomaly_maps, anomaly_alpha = network_scale_maps(net, synthetic.anomalies, batch)
        fit = fit_scoring(normal_maps, anomaly_maps, synthetic.sources, net.anomaly_map.scale_weighting, self.score_reduction,
                          self.percentile, normal_alpha, anomaly_alpha, seed=self.seed)
        apply_fit(net, fit)
        return fit

    def __call__(self, engine: Engine) -> None:
        from monai_scrd.scoring import write_json
        from monai_scrd.scoring.fitting import fit_threshold

        if not is_rank0():
            return
        net = unwrap(self.network)
        selection_info = self.selection.select(engine) if self.selection is not None else {}
        record = None
        if self.calibrate_scales and self.val_loader is not None:
            fit = self.fit()
            record = fit.record()
            choice = record["scoring_choice"]
            logger.info(f"scoring fitted on {fit.n_normal} validation normals and {fit.n_anomalous} synthetic anomalies "
                        f"(foreign patches): {fit.scales}, image score {fit.reduction} (synthetic AUROC "
                        f"{choice['synthetic_auroc'] if choice['synthetic_auroc'] is None else round(choice['synthetic_auroc'], 4)}"
                        f" among {len(fit.candidates)} candidates; a label-free ranking, not a test AUROC)")
        os.makedirs(os.path.dirname(os.path.abspath(self.model_path)), exist_ok=True)
        torch.save({"model": {k: v.detach().cpu() for k, v in net.state_dict().items()}}, self.model_path)
        files = [self.model_path]
        logger.info(f"saved final model weights to {self.model_path} (iteration {engine.state.iteration})")
        if self.threshold_path and self.val_loader is not None and self.scorer is not None:
            if record is None:
                scores = self.validation_scores()
                if not scores.size:
                    raise ValueError("no validation image could be scored; no threshold fitted")
                record = {
                    "threshold": fit_threshold(scores, self.percentile),
                    "method": f"{self.percentile:g}th percentile ((n + 1) p order statistic) of the anomaly scores of "
                              "the validation (normal) images",
                    "percentile": self.percentile,
                    "score_reduction": self.scorer.score_reduction,
                    "validation_scores": [round(float(s), 6) for s in scores],
                }
            info = {
                **record,
                "fitted_on": "validation",
                "n_images": len(record["validation_scores"]),
                "scale_weighting": self.scorer.scale_weighting,
                "preprocessing": self.scorer.preprocessing,
                "iteration": int(engine.state.iteration),
                **self.extra_info,
                **selection_info,
            }
            files.append(write_json(self.threshold_path, info))
            engine.state.metrics["threshold"] = info["threshold"]
            logger.info(f"decision threshold {info['threshold']:.5g} ({info['method']}) -> {self.threshold_path}")
        engine.state.scrd_artifacts = list(getattr(engine.state, "scrd_artifacts", [])) + files
        logger.info(self.next_step())

    def next_step(self) -> str:
        """The last line of a training log: the commands that use the model just saved (inference on new images,
        evaluation on the datalist's test list), with the settings they need to find and rebuild it."""
        from monai_scrd.engines.utils import find_bundle_root

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


def find_mlflow_run(tracking_uri: str | None, experiment_name: str, run_name: str):
    """``(MlflowClient, run_id)`` of the run named ``run_name`` in ``experiment_name`` (the run MONAI's MLFlowHandler
    opens with the bundle's ``run_name``), or None when there is none, i.e. when tracking is off. As MONAI's handler,
    ``$MLFLOW_TRACKING_URI`` wins over ``tracking_uri``; a local SQLite store that does not exist is not created."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
    if not uri or not run_name:
        return None
    if uri.startswith("sqlite:///") and not os.path.isfile(uri[len("sqlite:///"):]):
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'", max_results=1)
    return (client, runs[0].info.run_id) if runs else None


class MLflowRunExtras:
    """Logs what MONAI's ``--tracking mlflow`` handlers do not, into the same run (found by the bundle's ``run_name``
    with MLflow's public client; nothing happens when tracking is off): the run parameters (once), the per-scale alpha
    every ``log_interval`` iterations (``engine.state.metrics`` keys starting with ``metric_prefixes``), and at
    completion the final metrics and the files in ``engine.state.scrd_artifacts`` (final weights, threshold, ROC
    curve, histogram, metrics.json, scores.csv). In the handler list it comes before the MLflow handlers that
    ``--tracking`` appends, so its completion step runs before they close the run.

    Args:
        tracking_uri, experiment_name, run_name: as given to MONAI's MLFlowHandler (the bundle's top-level values).
        params: run parameters.
        metric_prefixes: ``engine.state.metrics`` logged per iteration.
        log_interval: iterations between those metrics.
        close_run: end the run at completion (the evaluator's MLflow handler does not).
    """

    def __init__(
        self,
        tracking_uri: str | None,
        experiment_name: str,
        run_name: str,
        params: Mapping | None = None,
        metric_prefixes: Sequence[str] = ("alpha_",),
        log_interval: int = 1,
        close_run: bool = False,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.params = {k: str(v) for k, v in dict(params or {}).items()}
        self.metric_prefixes = tuple(metric_prefixes)
        self.log_interval = max(1, int(log_interval))
        self.close_run = close_run
        self._run = None
        self._params_logged = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.log_interval), self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _client(self):
        if self._run is None and is_rank0():
            self._run = find_mlflow_run(self.tracking_uri, self.experiment_name, self.run_name)
        return self._run

    def _log(self, metrics: Mapping, step: int) -> None:
        from mlflow.entities import Metric, Param

        client, run_id = self._run
        now = int(time.time() * 1000)
        params = []
        if not self._params_logged:
            existing = client.get_run(run_id).data.params
            params = [Param(k, v) for k, v in self.params.items() if k not in existing]
            self._params_logged = True
        values = [Metric(k, float(v), now, step) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)]
        if params or values:
            client.log_batch(run_id, metrics=values, params=params)

    def _iteration(self, engine: Engine) -> None:
        if self._client() is None:
            return
        self._log({k: v for k, v in engine.state.metrics.items() if k.startswith(self.metric_prefixes)}, engine.state.iteration)

    def _completed(self, engine: Engine) -> None:
        if self._client() is None:
            return
        client, run_id = self._run
        self._log(dict(engine.state.metrics), engine.state.iteration)
        for path in getattr(engine.state, "scrd_artifacts", []):
            if path and os.path.isfile(path):
                client.log_artifact(run_id, path)
        if self.close_run:
            client.set_terminated(run_id)


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
    a bundle config). Everything else as MONAI's (``save_interval`` iterations with ``epoch_level=False``).

    SIGINT (Ctrl-C) and SIGTERM while the engine runs stop it at the end of the current iteration, after a resumable
    checkpoint of that iteration is saved, with one line (:class:`~monai_scrd.engines.TrainingInterrupted`) saying
    where it is and how to continue (``--resume true``); a second signal stops at once, saving nothing. The signal
    handlers are installed when the run starts (in the main thread of a process that is not part of a distributed
    group: there the ranks could stop at different iterations) and restored when it ends."""

    def attach(self, engine: Engine) -> None:
        self.save_dict.update(_engine_objects(engine))
        super().attach(engine)
        self._signal: int | None = None
        self._previous: dict = {}
        engine.add_event_handler(Events.STARTED, self._catch_signals)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._stop_if_signalled)
        engine.add_event_handler(Events.COMPLETED, self._release_signals)

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        if self._signal is not None:  # a second one: stop now
            self._release_signals()
            raise KeyboardInterrupt
        self._signal = signum  # nothing else here: logging from a signal handler can deadlock

    def _catch_signals(self, engine: Engine) -> None:  # noqa: ARG002
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread() or (
            torch.distributed.is_available() and torch.distributed.is_initialized()
        ):
            return
        self._signal = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _release_signals(self, engine: Engine | None = None) -> None:  # noqa: ARG002
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def save_now(self, engine: Engine) -> str:
        """Save a resumable checkpoint of the engine's current iteration (the interval checkpoint, else the final one)
        and return its path."""
        from ignite.handlers import Checkpoint, DiskSaver

        checkpoint = self._interval_checkpoint
        if checkpoint is None and self._final_checkpoint is not None:
            self._delete_previous_final_ckpt()
            checkpoint = self._final_checkpoint
        if checkpoint is None:
            checkpoint = Checkpoint(self.save_dict, DiskSaver(self.save_dir, require_empty=False, atomic=True),
                                    filename_prefix="scrd_interrupted", global_step_transform=lambda e, _: e.state.iteration)
        checkpoint(engine)
        if checkpoint is self._final_checkpoint and self._final_filename:
            return os.path.join(self.save_dir, self._final_filename)
        return os.fspath(checkpoint.last_checkpoint)

    def _stop_if_signalled(self, engine: Engine) -> None:
        import signal

        from monai_scrd.engines.utils import TrainingInterrupted

        if self._signal is None:
            return
        name = signal.Signals(self._signal).name
        self._release_signals()
        path = self.save_now(engine)
        total = engine.state.max_iters or "?"
        raise TrainingInterrupted(f"training stopped by {name} at iteration {engine.state.iteration} of {total}; "
                                  f"resumable checkpoint: {path} (continue with --resume true, and the same settings)")


class TrainerCheckpointLoader(_CheckpointLoader):
    """``CheckpointLoader`` that restores the engine it is attached to (``"trainer"``) and its AMP grad scaler along
    with the objects in ``load_dict`` (model, optimizer) when the run starts."""

    def attach(self, engine: Engine) -> None:
        self.load_dict.update(_engine_objects(engine))
        super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        from monai_scrd.checkpoint import CheckpointError, load_state_dict_checked, load_weights_file

        data = load_weights_file(self.load_path)  # one line naming the file when it is missing or unreadable
        missing = [k for k in self.load_dict if k not in data and k != "scaler"]
        if missing:
            raise CheckpointError(f"{self.load_path}: not a resumable training checkpoint (missing {missing}); "
                                  "use a file from ckpt_dir, not models/model.pt")
        if "scaler" in self.load_dict and "scaler" not in data:
            self.load_dict.pop("scaler")
        limit = engine.state.max_iters  # the configured limit wins over the checkpoint's, as MONAI does for max_epochs
        try:
            super().__call__(engine)
        except RuntimeError as e:  # e.g. weights of another backbone: size mismatches
            from monai_scrd.data.errors import one_line

            for key, obj in self.load_dict.items():  # a model that does not fit: say which weights differ
                if isinstance(obj, torch.nn.Module) and isinstance(data.get(key), Mapping):
                    load_state_dict_checked(unwrap(obj), data[key], self.load_path)
            raise CheckpointError(f"{self.load_path}: does not fit this model/optimizer ({one_line(e)})") from e
        if limit is not None:
            engine.state.max_epochs, engine.state.max_iters = None, limit
            if engine.state.iteration >= limit:
                logger.info(f"the checkpoint is already at iteration {engine.state.iteration} >= {limit}; nothing to train")
        logger.info(f"resumed training at iteration {engine.state.iteration} from {self.load_path}")


__all__ += ["TrainerCheckpointSaver", "TrainerCheckpointLoader"]
