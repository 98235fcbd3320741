"""What a score means, fitted once on the user's held-out normals at the end of training: the per-scale calibration
of the statistic that is scored, the scales and image reduction (``auto``), and the decision threshold for images and
for volumes. :class:`~monai_scrd.engines.ScoringFitter` calls :func:`fit_network_scoring` (or, keeping the paper's
scoring, :func:`threshold_record`); every scorer then applies what it recorded (the network's buffers and
``threshold.json``).

* **Calibration of the scored statistic.** For an image reduction ``r`` (mean, top P%), scale ``k``'s map is
  standardised with the mean and std over normals of ``r`` applied to that scale's own map, so the per-scale terms of
  the score are z-scores of exactly what is scored.
* **Choice without labels** (``auto``, opt-in in the bundle). Each candidate (a set of scales, an image reduction)
  is scored on the held-out normals and on synthetic anomalies made from them (foreign patches from other normals,
  :data:`~monai_scrd.transforms.validation_anomaly.SCORING_FAMILIES`); the candidate with the highest synthetic
  AUROC is kept (ties: the fixed default, all scales with the top 5%). On brain MRI this ranking follows the real
  tumours'; on chest X-ray pneumonia it does not (``benchmarks/RESULTS.md``), hence opt-in.
* **Disjoint fitting.** The normals are split into ``folds``; each fold's scores (and those of the anomalies made
  from it) use a calibration fitted on the other folds. The AUROCs and the threshold use these out-of-fold scores, so
  no normal is scored with a calibration fitted on itself; the saved calibration uses all normals.
* **Threshold.** The ``percentile`` of the out-of-fold normal scores, with the ``(n + 1) p`` order statistic
  (numpy's ``"weibull"`` method), whose expected false-positive rate on new normals is the nominal one; numpy's default
  interpolation sits below it and flags more new normals than nominal. A volume scored as the maximum of ``n`` slice
  scores gets the threshold that flags the nominal share of all-normal volumes when slices are independent
  (:func:`volume_threshold`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from monai_scrd.scoring.anomaly_map import calibration_statistics, check_scale_weighting, image_score, top_fraction
from monai_scrd.scoring.metrics import detection_metrics

__all__ = [
    "CANDIDATE_REDUCTIONS",
    "DEFAULT_SCORING",
    "ScoringFit",
    "calibration",
    "candidate_weightings",
    "combined_scores",
    "fit_network_scoring",
    "fit_scoring",
    "fit_threshold",
    "apply_fit",
    "network_scale_maps",
    "scale_statistics",
    "threshold_record",
    "volume_threshold",
]

CANDIDATE_REDUCTIONS = ("mean", "top20%", "top5%", "top1%")
DEFAULT_SCORING = ("all scales", "top5%")  # the bundle's default; wins auto's ties


def fit_threshold(scores: Sequence[float], percentile: float = 95.0) -> float:
    """Decision threshold from anomaly scores of held-out *normal* images: their ``percentile``-th percentile with the
    ``(n + 1) p`` order statistic, so about ``100 - percentile`` % of new normal images are flagged. Uses no anomalous
    image and no test label."""
    arr = np.asarray([s for s in scores if s is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        raise ValueError("no finite validation scores to fit a threshold on")
    if not 0.0 < float(percentile) < 100.0:
        raise ValueError(f"threshold percentile {percentile} is not between 0 and 100")
    return float(np.percentile(arr, percentile, method="weibull"))


def threshold_record(scores: Sequence[float], percentile: float, score_reduction: str) -> dict:
    """The entries of ``threshold.json`` for a scoring that is kept as it is (no calibration fitted): the threshold of
    :func:`fit_threshold` on the validation normals' ``scores`` under the image reduction ``score_reduction``."""
    scores = np.asarray(scores, dtype=float)
    if not scores.size:
        raise ValueError("no validation image could be scored; no threshold fitted")
    return {
        "threshold": fit_threshold(scores, percentile),
        "method": f"{percentile:g}th percentile ((n + 1) p order statistic) of the anomaly scores of the validation "
                  "(normal) images",
        "percentile": percentile,
        "score_reduction": score_reduction,
        "validation_scores": [round(float(s), 6) for s in scores],
    }


def volume_threshold(scores: Sequence[float], percentile: float, n_slices: int) -> float:
    """Threshold for the maximum of ``n_slices`` slice scores, from the normal slice scores of validation: the level
    ``p ** (1 / n)`` of their distribution (``p = percentile / 100``), so that an all-normal volume of independent
    slices is flagged with probability ``1 - p``. Beyond what the validation scores can resolve (``p ** (1 / n) >
    n_val / (n_val + 1)``) an exponential tail fitted to their top 20% extends the order statistic. Neighbouring slices are correlated
    in real series, which makes the rule conservative (fewer normal volumes flagged than nominal)."""
    arr = np.sort(np.asarray(scores, dtype=float)[np.isfinite(np.asarray(scores, dtype=float))])
    if arr.size < 2:
        raise ValueError("a volume threshold needs the scores of at least 2 validation images")
    level = (float(percentile) / 100.0) ** (1.0 / max(1, int(n_slices)))
    if level <= arr.size / (arr.size + 1.0):
        return float(np.quantile(arr, level, method="weibull"))
    # peaks over the 80th percentile: an exponential tail (a generalised Pareto of shape 0), which holds for the light
    # and moderately heavy tails of anomaly scores and errs towards fewer flags for a normal (Gaussian) tail
    base = float(np.quantile(arr, 0.8, method="weibull"))
    excess = arr[arr > base] - base
    scale = float(excess.mean()) if excess.size else float(arr.std(ddof=1))
    return float(max(arr[-1], base + scale * np.log(0.2 / (1.0 - level))))


def candidate_weightings(num_scales: int) -> dict[str, list[float]]:
    """The scale combinations ``auto`` chooses among: all scales averaged, each scale alone, each pair of neighbours."""
    eye = np.eye(num_scales)
    out = {"all scales": [1.0 / num_scales] * num_scales}
    out.update({f"scale {k + 1}": eye[k].tolist() for k in range(num_scales)})
    if num_scales > 2:
        out.update({f"scales {k + 1}+{k + 2}": ((eye[k] + eye[k + 1]) / 2).tolist() for k in range(num_scales - 1)})
    return out


def scale_statistics(maps: torch.Tensor, reduction: str) -> torch.Tensor:
    """``reduction`` (an :func:`~monai_scrd.scoring.image_score` reduction) of each scale's map: ``[N, K, H, W]`` ->
    ``[N, K]``."""
    n, k = maps.shape[:2]
    return image_score(maps.reshape(n * k, 1, -1).float(), reduction).view(n, k)


def combined_scores(maps: torch.Tensor, weights: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                    reduction: str, chunk: int = 64) -> torch.Tensor:
    """Image scores of ``sum_k w_k (maps_k - mean_k) / std_k``; ``weights`` ``[K]`` or per image ``[N, K]``."""
    out = []
    for start in range(0, maps.shape[0], chunk):
        m = maps[start : start + chunk].float()
        z = (m - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        w = weights if weights.ndim == 1 else weights[start : start + chunk]
        w = w.view(-1, m.shape[1], 1, 1) if w.ndim == 2 else w.view(1, -1, 1, 1)
        out.append(image_score((z * w).sum(1, keepdim=True), reduction))
    return torch.cat(out) if out else torch.zeros(0)


def calibration(maps: torch.Tensor, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-scale ``(mean, std)`` over normals of ``reduction`` applied to each scale's map ``[N, K, H, W]``."""
    return calibration_statistics(scale_statistics(maps, reduction))


@dataclass
class ScoringFit:
    """The fitted scoring: what the network and ``threshold.json`` record.

    Attributes:
        scales: name of the chosen scale combination (``"all scales"``, ``"scale 2"``, ``"alpha"``, ...).
        weights: per-scale weights of that combination (None for the scale head's per-image alpha).
        reduction: the chosen image reduction.
        scale_mean, scale_std: per-scale calibration of the chosen reduction, fitted on all normals.
        threshold: the image threshold (``percentile`` of the out-of-fold normal scores).
        percentile: the threshold's percentile.
        validation_scores: the out-of-fold scores of the normals (for volume thresholds).
        candidates: ``[{"scales", "reduction", "synthetic_auroc"}]`` for every candidate, the evidence of the choice.
        n_normal, n_anomalous, folds: what the fit used.
    """

    scales: str
    weights: list[float] | None
    reduction: str
    scale_mean: list[float]
    scale_std: list[float]
    threshold: float
    percentile: float
    validation_scores: list[float]
    candidates: list[dict] = field(default_factory=list)
    n_normal: int = 0
    n_anomalous: int = 0
    folds: int = 2

    def record(self) -> dict:
        """The entries of ``threshold.json`` that describe the scoring."""
        chosen = next((c for c in self.candidates if (c["scales"], c["reduction"]) == (self.scales, self.reduction)), {})
        return {
            "threshold": self.threshold,
            "method": f"{self.percentile:g}th percentile ((n + 1) p order statistic) of the out-of-fold anomaly scores "
                      "of the validation (normal) images",
            "percentile": self.percentile,
            "score_reduction": self.reduction,
            "scales": self.scales,
            "scale_weights": self.weights,
            "scale_calibration": {"mean": self.scale_mean, "std": self.scale_std, "statistic": self.reduction,
                                  "n_images": self.n_normal},
            "validation_scores": [round(float(s), 6) for s in self.validation_scores],
            "scoring_choice": {
                "synthetic_auroc": chosen.get("synthetic_auroc"),
                "n_normal": self.n_normal,
                "n_anomalous": self.n_anomalous,
                "folds": self.folds,
                "candidates": self.candidates,
            },
        }


def fit_scoring(
    normal_maps: torch.Tensor,
    anomaly_maps: torch.Tensor | None = None,
    anomaly_sources: Sequence[int] = (),
    scale_weighting: str = "auto",
    score_reduction: str = "auto",
    percentile: float = 95.0,
    normal_alpha: torch.Tensor | None = None,
    anomaly_alpha: torch.Tensor | None = None,
    folds: int = 2,
    seed: int = 0,
) -> ScoringFit:
    """Fit the scoring on per-scale maps (``SCRD.scale_maps`` with an uncalibrated network) of held-out normals and
    of synthetic anomalies made from them (see the module docstring).

    Args:
        normal_maps: ``[N, K, H, W]`` maps of the normals.
        anomaly_maps: ``[M, K, H, W]`` maps of the synthetic anomalies (None: no choice, the default is kept).
        anomaly_sources: index of the normal each anomaly was made from (its fold).
        scale_weighting: ``"auto"`` (choose among :func:`candidate_weightings`), ``"uniform"`` or ``"alpha"``
            (fixed).
        score_reduction: ``"auto"`` (choose among :data:`CANDIDATE_REDUCTIONS`) or a fixed reduction.
        percentile: of the normals' scores, for the threshold.
        normal_alpha, anomaly_alpha: the scale head's ``[N, K]`` / ``[M, K]`` weights, for ``"alpha"``.
        folds: cross-fitting folds (fewer when there are not 2 normals per fold; with 1, fewer than 4 normals, the
            normals are scored with a calibration fitted on themselves).
        seed: of the fold assignment.
    """
    n, num_scales = normal_maps.shape[:2]
    if n < 2:
        raise ValueError(f"fitting the scoring needs at least 2 validation (normal) images, got {n}")
    folds = max(1, min(int(folds), n // 2))  # every fold's calibration needs 2 images; 1 fold: in-sample (tiny sets)
    if check_scale_weighting(scale_weighting) == "auto":
        weightings: Mapping[str, list[float] | None] = candidate_weightings(num_scales)
    elif scale_weighting == "uniform":
        weightings = {"all scales": [1.0 / num_scales] * num_scales}
    else:
        if normal_alpha is None:
            raise ValueError("scale_weighting 'alpha' needs the scale head's weights of the images")
        weightings = {"alpha": None}
    if score_reduction == "auto":
        reductions: Sequence[str] = CANDIDATE_REDUCTIONS
    else:
        top_fraction(score_reduction)  # raises on an unknown reduction
        reductions = (score_reduction,)
    has_anomalies = anomaly_maps is not None and anomaly_maps.shape[0] > 0
    sources = torch.as_tensor(list(anomaly_sources), dtype=torch.long)
    fold_of = torch.empty(n, dtype=torch.long)
    fold_of[torch.from_numpy(np.random.RandomState(seed).permutation(n))] = torch.arange(n) % folds

    def weights_of(name: str, alpha: torch.Tensor | None) -> torch.Tensor:
        fixed = weightings[name]
        return torch.tensor(fixed, dtype=torch.float32) if fixed is not None else alpha.float()  # "alpha": per image

    candidates, oof = [], {}
    for reduction in reductions:
        cal = [calibration(normal_maps[fold_of != f] if folds > 1 else normal_maps, reduction) for f in range(folds)]
        for name in weightings:
            normal_scores = torch.zeros(n)
            anomaly_scores = torch.zeros(anomaly_maps.shape[0]) if has_anomalies else None
            for f, (mean, std) in enumerate(cal):
                idx = torch.nonzero(fold_of == f).flatten()
                w = weights_of(name, None if normal_alpha is None else normal_alpha[idx])
                normal_scores[idx] = combined_scores(normal_maps[idx], w, mean, std, reduction)
                if has_anomalies:
                    aidx = torch.nonzero(fold_of[sources] == f).flatten()
                    w = weights_of(name, None if anomaly_alpha is None else anomaly_alpha[aidx])
                    anomaly_scores[aidx] = combined_scores(anomaly_maps[aidx], w, mean, std, reduction)
            auroc = None
            if has_anomalies:
                labels = np.r_[np.zeros(n), np.ones(anomaly_scores.numel())]
                auroc = float(detection_metrics(labels, np.r_[normal_scores.numpy(), anomaly_scores.numpy()])["auroc"])
            candidates.append({"scales": name, "reduction": reduction, "synthetic_auroc": auroc})
            oof[(name, reduction)] = normal_scores

    def rank(c: dict) -> tuple:
        return (c["synthetic_auroc"] if c["synthetic_auroc"] is not None else -1.0, (c["scales"], c["reduction"]) == DEFAULT_SCORING)

    default = next((c for c in candidates if (c["scales"], c["reduction"]) == DEFAULT_SCORING), candidates[0])
    best = max(candidates, key=rank) if has_anomalies else default
    scales, reduction = best["scales"], best["reduction"]
    mean, std = calibration(normal_maps, reduction)
    scores = oof[(scales, reduction)].numpy()
    return ScoringFit(
        scales=scales,
        weights=weightings[scales],
        reduction=reduction,
        scale_mean=mean.tolist(),
        scale_std=std.tolist(),
        threshold=fit_threshold(scores, percentile),
        percentile=float(percentile),
        validation_scores=scores.tolist(),
        candidates=candidates,
        n_normal=n,
        n_anomalous=int(anomaly_maps.shape[0]) if has_anomalies else 0,
        folds=folds,
    )


@torch.no_grad()
def network_scale_maps(network: torch.nn.Module, images: torch.Tensor, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Uncalibrated per-scale maps ``[N, K, H, W]`` and alpha ``[N, K]`` of preprocessed images ``[N, C, H, W]``
    (``SCRD.scale_maps``, eval mode, on the network's device; maps kept as float16 on the CPU)."""
    gen = network.anomaly_map
    device = next(network.parameters()).device
    saved = gen.scale_mean.clone(), gen.scale_std.clone(), network.training
    gen.scale_mean.zero_()
    gen.scale_std.fill_(1.0)
    network.eval()
    maps, alphas = [], []
    try:
        for chunk in images.split(batch_size):
            m, a = network.scale_maps(chunk.to(device))
            maps.append(m.half().cpu())
            alphas.append(a.float().cpu())
    finally:
        gen.scale_mean.copy_(saved[0])
        gen.scale_std.copy_(saved[1])
        network.train(saved[2])
    return torch.cat(maps), torch.cat(alphas)


def fit_network_scoring(
    network: torch.nn.Module,
    normals: torch.Tensor,
    score_reduction: str = "auto",
    percentile: float = 95.0,
    seed: int = 0,
    max_anomalies: int = 600,
    batch_size: int = 16,
) -> ScoringFit:
    """The end-of-training fit of a trained network's scoring on its held-out normals: synthetic anomalies (foreign
    patches, :data:`~monai_scrd.transforms.validation_anomaly.SCORING_FAMILIES`, 1 to 3 per normal and at most about
    ``max_anomalies``) are made from the normals, both are mapped by the uncalibrated network
    (:func:`network_scale_maps`), :func:`fit_scoring` fits calibration, choice and threshold with the network's
    ``scale_weighting``, and :func:`apply_fit` puts the result into the network's buffers.

    Args:
        network: the trained SCRD network (not wrapped in DDP).
        normals: preprocessed validation images ``[N, C, H, W]``.
        score_reduction: ``"auto"`` or a fixed image reduction.
        percentile: of the normals' out-of-fold scores, for the threshold.
        seed: of the synthetic anomalies and the cross-fitting folds.
        max_anomalies: synthetic anomalies at most (1 to 3 per normal).
        batch_size: images per forward pass.
    """
    from monai_scrd.transforms.validation_anomaly import SCORING_FAMILIES, SCORING_SIZES, synthetic_validation_set

    per_normal = max(1, min(3, int(max_anomalies) // max(1, len(normals))))
    synthetic = synthetic_validation_set(normals, seed=seed, anomalies_per_normal=per_normal,
                                         families=SCORING_FAMILIES, sizes=SCORING_SIZES)
    normal_maps, normal_alpha = network_scale_maps(network, normals, batch_size)
    anomaly_maps, anomaly_alpha = network_scale_maps(network, synthetic.anomalies, batch_size)
    fit = fit_scoring(normal_maps, anomaly_maps, synthetic.sources, network.anomaly_map.scale_weighting,
                      score_reduction, percentile, normal_alpha, anomaly_alpha, seed=seed)
    apply_fit(network, fit)
    return fit


def apply_fit(network: torch.nn.Module, fit: ScoringFit) -> None:
    """Put the fitted calibration (and, for ``scale_weighting="auto"``, the chosen weights) into the network's
    buffers, which are saved with its weights."""
    gen = network.anomaly_map
    gen.scale_mean.copy_(torch.tensor(fit.scale_mean))
    gen.scale_std.copy_(torch.tensor(fit.scale_std))
    if fit.weights is not None:
        gen.scale_weights.copy_(torch.tensor(fit.weights))
