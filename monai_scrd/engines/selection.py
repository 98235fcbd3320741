"""Label-free validation and model selection: AUROCs on held-out normals plus synthetic anomalies.

No real anomaly is needed: the validation set is the held-out training normals (the datalist's ``validation`` list)
and anomalies of a family the training never sees (:class:`monai_scrd.transforms.RandValidationAnomaly`; by default
foreign patches from the other normals, the family that also chooses the scoring at the end of training), made from
those normals with a fixed seed, so it is the same set at every evaluation and in every run with that seed. Two
numbers come out:

- ``val_auroc_synthetic``: image-level AUROC, normals against synthetic anomalies, image score
  :func:`monai_scrd.scoring.image_score` of the model's anomaly map;
- ``val_pixel_auroc_synthetic``: pixel-level AUROC of the anomaly maps against the known anomaly masks, pooled over
  all validation images (normal images add negatives only).

:func:`synthetic_validation_metrics` computes them for any model; :class:`SyntheticValidation` computes them during
training every ``interval`` iterations, keeps the best weights, and picks the weights to ship (``model_selection``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines import Evaluator

from monai_scrd.engines.utils import is_rank0, unwrap
from monai_scrd.scoring import Scorer, detection_metrics, pixel_auroc
from monai_scrd.transforms.validation_anomaly import (
    SCORING_FAMILIES,
    SCORING_SIZES,
    SyntheticValidationSet,
    synthetic_validation_set,
)

__all__ = [
    "VAL_AUROC_KEY",
    "VAL_PIXEL_AUROC_KEY",
    "MODEL_SELECTIONS",
    "evaluate_synthetic_validation",
    "synthetic_validation_metrics",
    "SyntheticValidation",
]

logger = logging.getLogger("monai_scrd.engines")

VAL_AUROC_KEY = "val_auroc_synthetic"
VAL_PIXEL_AUROC_KEY = "val_pixel_auroc_synthetic"
MODEL_SELECTIONS = ("last", "best_synthetic")


def evaluate_synthetic_validation(
    model: torch.nn.Module,
    validation_set: SyntheticValidationSet,
    batch_size: int = 32,
    reduction: str = "mean",
    max_pixels: int | None = 1_000_000,
    device=None,
) -> dict:
    """Image- and pixel-level AUROC of ``model`` on a built :class:`SyntheticValidationSet` (see
    :func:`synthetic_validation_metrics` for the result's keys)."""
    vs = validation_set
    if vs.normals.shape[0] == 0 or vs.anomalies.shape[0] == 0:
        raise ValueError("the synthetic validation set needs normal images and anomalies")
    scorer = Scorer(model, score_reduction=reduction, batch_size=batch_size, device=device)  # the one scoring path
    normal_maps, normal_scores = scorer.forward(vs.normals, keep_maps=True)
    anomalous_maps, anomalous_scores = scorer.forward(vs.anomalies, keep_maps=True)
    normal_scores, anomalous_scores = normal_scores.numpy(), anomalous_scores.numpy()
    families = np.asarray(vs.families)
    sizes = np.asarray(vs.sizes)

    def auroc(selected: np.ndarray) -> float:
        labels = np.r_[np.zeros(normal_scores.size), np.ones(int(selected.sum()))]
        return detection_metrics(labels, np.r_[normal_scores, anomalous_scores[selected]])["auroc"]

    masks = torch.cat([torch.zeros_like(normal_maps, dtype=torch.bool), vs.masks])
    return {
        "image_auroc": auroc(np.ones(anomalous_scores.size, dtype=bool)),
        "pixel_auroc": pixel_auroc(masks.numpy(), torch.cat([normal_maps, anomalous_maps]).numpy(), max_pixels, vs.seed),
        "image_auroc_by_family": {f: auroc(families == f) for f in sorted(set(vs.families))},
        "image_auroc_by_size": {f"{s:g}": auroc(sizes == s) for s in sorted(set(vs.sizes))},
        "n_normal": int(normal_scores.size),
        "n_anomalous": int(anomalous_scores.size),
        "score_reduction": reduction,
        "seed": int(vs.seed),
        "fingerprint": vs.fingerprint(),
    }


def synthetic_validation_metrics(
    model: torch.nn.Module,
    normals,
    seed: int = 0,
    batch_size: int = 32,
    reduction: str = "mean",
    anomalies_per_normal: int = 3,
    max_pixels: int | None = 1_000_000,
    device=None,
    **anomaly_args,
) -> dict:
    """
    Label-free validation of ``model`` on held-out normal images: builds the synthetic validation set
    (:func:`monai_scrd.transforms.synthetic_validation_set`, identical for the same normals and seed) and scores it.

    Args:
        model: an SCRD model (or any module whose eval-mode forward returns anomaly maps ``[B, 1, H, W]``), possibly
            wrapped in DDP; its train/eval mode is restored afterwards.
        normals: ``[N, C, H, W]`` float array/tensor in [0, 1] (C = 1 or 3, H and W multiples of 32), or an already
            built :class:`~monai_scrd.transforms.SyntheticValidationSet` (then the set's own seed is used).
        seed: seed of the synthetic anomalies.
        batch_size: images per forward pass.
        reduction: image score from the anomaly map, ``"mean"``, ``"max"`` or ``"top<P>%"``
            (:func:`monai_scrd.scoring.image_score`).
        anomalies_per_normal: anomalies made from each normal image.
        max_pixels: pixel AUROC on a fixed random subset of at most this many pixels (None: all).
        device: where to run the model (default: where its parameters are).
        anomaly_args: further arguments of :class:`~monai_scrd.transforms.RandValidationAnomaly`.

    Returns:
        ``{"image_auroc", "pixel_auroc", "image_auroc_by_family": {family: auroc}, "image_auroc_by_size":
        {size: auroc}, "n_normal", "n_anomalous", "score_reduction", "seed", "fingerprint"}`` (the fingerprint
        identifies the validation set).
    """
    vs = normals if isinstance(normals, SyntheticValidationSet) else synthetic_validation_set(
        normals, seed=seed, anomalies_per_normal=anomalies_per_normal, **anomaly_args
    )
    return evaluate_synthetic_validation(model, vs, batch_size, reduction, max_pixels, device)


def _images_from(data, image_key: str) -> tuple[list[torch.Tensor], list[str]]:
    """Images ``[C, H, W]`` and error lines from items or batches: dicts with ``image_key`` and optional ``error``, or
    the scorer's prepared files (:class:`~monai_scrd.scoring.Prepared`: ``images`` ``[N, C, H, W]`` and ``error``)."""
    if hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(data, Mapping):
        items = (data[i] for i in range(len(data)))  # map-style dataset or list: by index
    else:
        items = iter(data)  # a data loader or any iterable
    images, errors = [], []
    for item in items:
        if hasattr(item, "images") and hasattr(item, "error"):  # a prepared file (2D: one image; volume: its slices)
            if item.error:
                errors.append(item.error)
            else:
                images.extend(item.images)
            continue
        image = torch.as_tensor(item[image_key])
        batched = image.ndim == 4
        errs = item.get("error", [""] * image.shape[0] if batched else "")
        for img, err in zip(image if batched else [image], errs if batched else [errs]):
            if err:
                errors.append(str(err))
            else:
                images.append(img.as_tensor() if hasattr(img, "as_tensor") else img)
    return images, errors


class SyntheticValidation:
    """Ignite handler: label-free validation during training (or once after an evaluation) and model selection.

    Every ``interval`` iterations (when ``interval > 0``) and once when the run completes, the network is evaluated
    (eval mode, no gradients) on the synthetic validation set built once from ``data`` with ``seed``;
    ``val_auroc_synthetic`` and ``val_pixel_auroc_synthetic`` go into ``engine.state.metrics`` (so MONAI's
    StatsHandler and MLFlowHandler log them) and into :attr:`history`. The weights of the best evaluation so far
    (highest image AUROC; a tie goes to the later one) are kept in memory (a CPU copy of the state dict), so that at
    the end both :attr:`best` and :attr:`last` (the network's own, final weights) are available. A record's
    ``iteration`` is the training iteration; None when the engine is an evaluator (one evaluation of given weights).

    Model selection (:meth:`select`, called by :class:`~monai_scrd.engines.TrainingFinalizer` before it saves
    ``model.pt`` and fits the threshold): ``"last"`` keeps the final weights; ``"best_synthetic"`` loads the best
    evaluation's weights when its image AUROC beats the last evaluation's by more than ``min_delta``, and keeps the
    final weights otherwise. Either way the iteration and AUROCs of the best and the last evaluations are returned
    for the threshold/metadata JSON. The choice uses only normal images and synthetic anomalies, no real label.

    Only rank 0 evaluates. The kept best weights live in memory: after a ``--resume``, the best is taken over the
    evaluations of the resumed run.

    Args:
        data: the held-out normal images: a ``[N, C, H, W]`` array/tensor in [0, 1], a built
            :class:`~monai_scrd.transforms.SyntheticValidationSet`, a dataset/list of the scorer's prepared files (the
            bundle passes the :class:`~monai_scrd.scoring.ScoringDataset` of the datalist's ``validation`` list), or a
            dataset/loader/list of dicts whose ``image_key`` holds preprocessed images ``[C, H, W]`` (or batches);
            items with a non-empty error are skipped with a warning. Read once, at the first evaluation. Empty or
            None: nothing is evaluated (a warning).
        network: the model; default: the engine's ``network``.
        interval: evaluate every ``interval`` iterations; 0 or less: only when the run completes.
        seed: seed of the synthetic anomalies (keep it fixed to compare evaluations and runs).
        anomalies_per_normal: anomalies made from each normal image.
        batch_size: images per forward pass.
        reduction: image score from the anomaly map (a :func:`~monai_scrd.scoring.image_score` reduction:
            ``"mean"``, ``"max"`` or ``"top<P>%"``).
        model_selection: ``"last"`` or ``"best_synthetic"``.
        min_delta: AUROC margin by which the best evaluation must beat the last one to be selected.
        max_pixels: pixel AUROC on a fixed subset of at most this many pixels.
        output_path: when set, the latest result is written there as JSON (and listed in
            ``engine.state.scrd_artifacts`` for MLflow).
        image_key: image key of the items in ``data``.
        anomaly_args: arguments of :func:`~monai_scrd.transforms.synthetic_validation_set` (default: the foreign-patch
            family and sizes that choose the scoring, ``SCORING_FAMILIES`` / ``SCORING_SIZES``).
    """

    def __init__(
        self,
        data=None,
        network: torch.nn.Module | None = None,
        interval: int = 100,
        seed: int = 0,
        anomalies_per_normal: int = 3,
        batch_size: int = 32,
        reduction: str = "mean",
        model_selection: str = "last",
        min_delta: float = 0.0,
        max_pixels: int | None = 1_000_000,
        output_path: str | None = None,
        image_key: str = "image",
        anomaly_args: Mapping | None = None,
    ) -> None:
        if model_selection not in MODEL_SELECTIONS:
            raise ValueError(f"model_selection={model_selection!r} is not one of {', '.join(map(repr, MODEL_SELECTIONS))}")
        self.data = data
        self.network = network
        self.interval = int(interval)
        self.seed = int(seed)
        self.anomalies_per_normal = int(anomalies_per_normal)
        self.batch_size = int(batch_size)
        self.reduction = reduction
        self.model_selection = model_selection
        self.min_delta = float(min_delta)
        self.max_pixels = max_pixels
        self.output_path = output_path
        self.image_key = image_key
        self.anomaly_args = {"families": SCORING_FAMILIES, "sizes": SCORING_SIZES, **dict(anomaly_args or {})}
        self.history: list[dict] = []
        self.best: dict | None = None
        self.result: dict | None = None
        self._best_state: dict | None = None
        self._set: SyntheticValidationSet | None = None
        self._loaded = False

    def attach(self, engine: Engine) -> None:
        if self.interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.evaluate(engine)

    @property
    def validation_set(self) -> SyntheticValidationSet | None:
        """The synthetic validation set (built at the first access; None without readable normal images)."""
        if not self._loaded:
            self._loaded = True
            data = self.data
            if isinstance(data, SyntheticValidationSet):
                self._set = data
            elif isinstance(data, (np.ndarray, torch.Tensor)):
                self._set = synthetic_validation_set(data, self.seed, self.anomalies_per_normal, **self.anomaly_args)
            elif data is not None:
                images, errors = _images_from(data, self.image_key)
                if errors:
                    logger.warning(f"synthetic validation: skipped {len(errors)} unreadable validation image(s), "
                                   f"e.g. {errors[0]}")
                if images:
                    self._set = synthetic_validation_set(images, self.seed, self.anomalies_per_normal, **self.anomaly_args)
            if self._set is None:
                logger.warning("synthetic validation: no readable validation (normal) images; no validation AUROC, "
                               "the last weights are kept")
        return self._set

    @property
    def last(self) -> dict | None:
        """The last evaluation: ``{"iteration", "val_auroc_synthetic", "val_pixel_auroc_synthetic"}``."""
        return self.history[-1] if self.history else None

    def best_state_dict(self) -> dict | None:
        """CPU copy of the network's state dict at the best evaluation (None before the first one)."""
        return self._best_state

    def evaluate(self, engine: Engine) -> dict | None:
        """Evaluate the network now (once per iteration: a second call at the same iteration returns the same
        record); returns the history record, or None without validation images or off rank 0."""
        if not is_rank0() or self.validation_set is None:
            return None
        # an evaluator's iteration counts its batches, not the weights' training: None there
        iteration = None if isinstance(engine, Evaluator) else int(engine.state.iteration)
        if self.last is not None and self.last["iteration"] == iteration:
            return self.last
        net = unwrap(self.network if self.network is not None else engine.network)
        start = time.perf_counter()
        result = evaluate_synthetic_validation(
            net, self.validation_set, self.batch_size, self.reduction, self.max_pixels, device=getattr(engine.state, "device", None)
        )
        record = {"iteration": iteration, VAL_AUROC_KEY: result["image_auroc"], VAL_PIXEL_AUROC_KEY: result["pixel_auroc"]}
        self.history.append(record)
        self.result = {"iteration": iteration, **result}
        engine.state.metrics[VAL_AUROC_KEY] = record[VAL_AUROC_KEY]
        engine.state.metrics[VAL_PIXEL_AUROC_KEY] = record[VAL_PIXEL_AUROC_KEY]
        if self.best is None or record[VAL_AUROC_KEY] >= self.best[VAL_AUROC_KEY]:
            self.best = record
            self._best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        when = "of the evaluated weights" if iteration is None else f"at iteration {iteration}"
        logger.info(
            f"synthetic validation {when}: image AUROC {record[VAL_AUROC_KEY]:.4f}, pixel AUROC "
            f"{record[VAL_PIXEL_AUROC_KEY]:.4f} ({result['n_normal']} held-out normals against {result['n_anomalous']} "
            f"synthetic anomalies made from them, seed {self.seed}; a label-free signal for comparing weights and "
            f"scorings, lower than a real-lesion AUROC by design; {time.perf_counter() - start:.1f} s)"
        )
        if self.output_path:
            from monai_scrd.scoring import write_json

            write_json(self.output_path, self.result)
            artifacts = list(getattr(engine.state, "scrd_artifacts", []))
            engine.state.scrd_artifacts = artifacts + ([self.output_path] if self.output_path not in artifacts else [])
        return record

    def select(self, engine: Engine) -> dict:
        """Evaluate the final weights (if not done at this iteration), load the selected weights into the network
        (``model_selection``, see the class) and return what to record next to the model::

            {"model_selection", "selected_iteration", "selected": record, "best_synthetic": record, "last": record,
             "synthetic_validation": {seed, counts, fingerprint, interval, evaluations, ...}}

        The selected record's AUROCs also go to ``engine.state.metrics`` as ``selected_val_auroc_synthetic`` and
        ``selected_val_pixel_auroc_synthetic``, with ``selected_iteration``."""
        self.evaluate(engine)
        if self.last is None:
            return {"model_selection": self.model_selection, "selected_iteration": int(engine.state.iteration),
                    "synthetic_validation": "not evaluated (no readable validation images)"}
        last, best = self.last, self.best
        use_best = (
            self.model_selection == "best_synthetic"
            and best["iteration"] != last["iteration"]
            and best[VAL_AUROC_KEY] > last[VAL_AUROC_KEY] + self.min_delta
        )
        if use_best:
            unwrap(self.network if self.network is not None else engine.network).load_state_dict(self._best_state)
            logger.info(f"model selection: best synthetic-validation weights of iteration {best['iteration']} "
                               f"(image AUROC {best[VAL_AUROC_KEY]:.4f}; last {last[VAL_AUROC_KEY]:.4f})")
        selected = best if use_best else last
        engine.state.metrics.update(
            selected_iteration=selected["iteration"],
            selected_val_auroc_synthetic=selected[VAL_AUROC_KEY],
            selected_val_pixel_auroc_synthetic=selected[VAL_PIXEL_AUROC_KEY],
        )
        return {
            "model_selection": self.model_selection,
            "selected_iteration": selected["iteration"],
            "selected": dict(selected),
            "best_synthetic": dict(best),
            "last": dict(last),
            "synthetic_validation": {
                **self.validation_set.summary(),
                "interval": self.interval,
                "score_reduction": self.reduction,
                "min_delta": self.min_delta,
                "evaluations": [dict(r) for r in self.history],
            },
        }
