"""Anomaly maps and image scores from teacher/student features (paper Sec. 2.4; Gaussian smoothing from RD4AD)."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AnomalyMapGenerator", "calibration_statistics", "check_scale_weighting", "image_score", "top_fraction",
           "SCALE_WEIGHTINGS"]

SCALE_WEIGHTINGS = ("alpha", "uniform", "auto")
REMOVED_SCALE_WEIGHTINGS = ("max",)  # a finished experiment (its runs: benchmarks/results)


def check_scale_weighting(scale_weighting: str) -> str:
    """``scale_weighting`` if it is one of :data:`SCALE_WEIGHTINGS`.

    Raises:
        ValueError: any other value, in one line naming it (and saying so for a removed one).
    """
    if scale_weighting in REMOVED_SCALE_WEIGHTINGS:
        raise ValueError(f"scale_weighting={scale_weighting!r} was removed (now one of {SCALE_WEIGHTINGS}); a model "
                         "scored with it needs another threshold: retrain it")
    if scale_weighting not in SCALE_WEIGHTINGS:
        raise ValueError(f"scale_weighting={scale_weighting!r} is not one of {SCALE_WEIGHTINGS}")
    return scale_weighting


class AnomalyMapGenerator(nn.Module):
    """Per-scale ``1 - cos(u_k, v_k)`` maps (cosine over channels at each location), weighted by ``alpha_k``,
    upsampled bilinearly to the image size, summed over scales and smoothed with a Gaussian (sigma 4: RD4AD's
    smoothing; SCRD's Sec. 2.4 names no smoothing).

    Per-scale calibration (not in the paper): the raw distance maps of different scales have different typical sizes
    and spreads, so an unweighted or alpha-weighted sum is dominated by whichever scale is largest, not by the one
    that separates anomalies. After :meth:`calibrate` with the per-scale image scores of held-out NORMAL images, each
    scale's map is standardised, ``(d_k - mean_k) / std_k``, before weighting; the image score (mean of the map) is then
    a weighted sum of per-scale z-scores. Uncalibrated (mean 0, std 1) the maps are the paper's.

    The smoothing is a Gaussian with a kernel radius of 4 sigma and mirrored borders, which equals
    ``scipy.ndimage.gaussian_filter(..., mode="mirror")`` (RD4AD's reference smoothing, up to the border mode) and
    torchvision's ``gaussian_blur``; it is applied as two 1D convolutions (rows, then columns) because the 2D kernel of
    sigma 4 (33 x 33) costs 16 times more and dominated CPU inference time. It traces and exports to ONNX, unlike
    MONAI's ``GaussianFilter`` whose padding is computed at run time.

    Args:
        sigma: Gaussian smoothing sigma in pixels; 0 disables smoothing.
        num_scales: number of feature scales (size of the calibration buffers).
        scale_weighting: ``"alpha"`` (the paper: weights from the scale head, all ones without a head),
            ``"uniform"`` (``1 / K`` per scale, ignoring alpha when scoring) or ``"auto"`` (the fixed per-scale weights
            of the ``scale_weights`` buffer, saved with the model: uniform until
            :func:`~monai_scrd.scoring.fitting.fit_scoring` chooses them on the user's held-out normals).
    """

    def __init__(self, sigma: float = 4.0, num_scales: int = 3, scale_weighting: str = "alpha") -> None:
        super().__init__()
        self.scale_weighting = check_scale_weighting(scale_weighting)
        self.sigma = float(sigma)
        self.kernel_size = 2 * int(round(4.0 * self.sigma)) + 1
        radius = self.kernel_size // 2
        taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / max(self.sigma, 1e-12)) ** 2)
        self.register_buffer("kernel_1d", taps / taps.sum(), persistent=False)
        # saved with the model, so every scorer applies the same calibration
        self.register_buffer("scale_mean", torch.zeros(num_scales))
        self.register_buffer("scale_std", torch.ones(num_scales))
        self.register_buffer("scale_weights", torch.full((num_scales,), 1.0 / num_scales))
        self._register_load_state_dict_pre_hook(self._uniform_weights_when_missing)

    def _uniform_weights_when_missing(self, state_dict, prefix, *args) -> None:
        """Weights saved before ``scale_weights`` existed: the uniform weights those models were scored with."""
        state_dict.setdefault(prefix + "scale_weights", torch.full_like(self.scale_weights, 1.0 / self.scale_weights.numel()))

    @property
    def is_calibrated(self) -> bool:
        return bool(torch.any(self.scale_mean != 0) or torch.any(self.scale_std != 1))

    @staticmethod
    def scale_scores(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> torch.Tensor:
        """Per-scale image scores ``[B, K]``: the mean over locations of each raw ``1 - cos`` map (uncalibrated,
        unweighted; the mean of a bilinearly upsampled map equals it up to border effects)."""
        return torch.stack([(1.0 - F.cosine_similarity(u, v, dim=1)).flatten(1).mean(1) for u, v in zip(teacher, student)], 1)

    def calibrate(self, normal_scale_scores: torch.Tensor) -> None:
        """Set the per-scale mean and std from :meth:`scale_scores` of held-out normal images ``[N, K]`` (N >= 2)."""
        mean, std = calibration_statistics(normal_scale_scores, self.scale_mean.numel())
        self.scale_mean.copy_(mean)
        self.scale_std.copy_(std)

    def smooth(self, amap: torch.Tensor) -> torch.Tensor:
        if self.sigma <= 0:
            return amap
        radius = self.kernel_size // 2
        k = self.kernel_1d.to(amap.dtype)
        amap = F.pad(amap, (radius, radius, radius, radius), mode="reflect")
        amap = F.conv2d(amap, k.view(1, 1, 1, -1))  # rows
        return F.conv2d(amap, k.view(1, 1, -1, 1))  # columns

    def scale_distances(self, teacher: list[torch.Tensor], student: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-scale distance maps ``[B, 1, h_k, w_k]`` at each feature resolution: ``1 - cos(u_k, v_k)``, calibrated
        (``(d_k - mean_k) / std_k``; unchanged before :meth:`calibrate`), not yet weighted, upsampled or smoothed."""
        return [
            (1.0 - F.cosine_similarity(u, v, dim=1).unsqueeze(1) - self.scale_mean[k]) / self.scale_std[k]
            for k, (u, v) in enumerate(zip(teacher, student))
        ]

    def scale_maps(self, teacher: list[torch.Tensor], student: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """Per-scale maps ``[B, K, H, W]``: each scale's calibrated distance map upsampled to ``image_size`` and
        smoothed, not weighted. Upsampling and smoothing are linear and keep constants, so the anomaly map of any
        weights ``w`` is ``sum_k w_k * maps[:, k]``, and a calibration can be re-fitted on these maps without the network
        (:mod:`monai_scrd.scoring.fitting`)."""
        dists = [F.interpolate(d, size=image_size, mode="bilinear", align_corners=False) for d in self.scale_distances(teacher, student)]
        return self.smooth(torch.cat(dists, 1).flatten(0, 1).unsqueeze(1)).view(len(dists[0]), len(dists), *image_size)

    def forward(
        self, teacher: list[torch.Tensor], student: list[torch.Tensor], alpha: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Return the anomaly map ``[B, 1, H, W]`` for features of an image of ``image_size`` (H, W)."""
        dists = self.scale_distances(teacher, student)
        if self.scale_weighting == "uniform":
            alpha = torch.full_like(alpha, 1.0 / alpha.shape[1])
        elif self.scale_weighting == "auto":
            alpha = self.scale_weights.to(alpha.dtype).expand_as(alpha)
        amap = torch.zeros(teacher[0].shape[0], 1, image_size[0], image_size[1], device=teacher[0].device)
        for k, dist in enumerate(dists):
            dist = F.interpolate(dist, size=image_size, mode="bilinear", align_corners=False)
            amap = amap + alpha[:, k].view(-1, 1, 1, 1) * dist
        return self.smooth(amap)


def calibration_statistics(normal_scale_scores: torch.Tensor, num_scales: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-scale ``(mean, std)`` of per-scale image statistics of held-out normal images ``[N, K]`` (N >= 2), the
    calibration of :meth:`AnomalyMapGenerator.calibrate` and of :mod:`monai_scrd.scoring.fitting`.

    Raises:
        ValueError: fewer than 2 images, another number of scales than ``num_scales``, or statistics that are not
            finite or do not vary between images.
    """
    scores = torch.as_tensor(normal_scale_scores, dtype=torch.float32)
    k = scores.shape[-1] if num_scales is None else int(num_scales)
    if scores.ndim != 2 or scores.shape[1] != k or scores.shape[0] < 2:
        raise ValueError(f"need per-scale scores of at least 2 normal images, shape [N, {k}]; got {list(scores.shape)}")
    std = scores.std(0)
    if not bool(torch.all(torch.isfinite(scores))) or bool(torch.any(std <= 0)):
        raise ValueError("per-scale scores of the calibration images must be finite and vary between images")
    return scores.mean(0), std


def top_fraction(reduction: str) -> float | None:
    """The fraction of a ``"top<P>%"`` reduction (``"top5%"`` -> 0.05); None for ``"mean"`` and ``"max"``.

    Raises:
        ValueError: any other value, in one line naming it.
    """
    if reduction in ("mean", "max"):
        return None
    match = re.fullmatch(r"top(\d+(?:\.\d+)?)%", str(reduction))
    if match is None or not 0.0 < float(match.group(1)) <= 100.0:
        raise ValueError(f"image score reduction {reduction!r} is not 'mean', 'max' or 'top<P>%' (0 < P <= 100, e.g. 'top5%')")
    return float(match.group(1)) / 100.0


def image_score(anomaly_map: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Image-level score ``[B]`` from maps ``[B, 1, ...]``: their mean (paper), their maximum, or ``"top<P>%"``, the
    mean of the highest ``P`` percent of the map's values (at least one value).

    The mean dilutes a local anomaly with the rest of the image, and the maximum rests on a single, noisy pixel; the
    mean of the top few percent reads the most anomalous region without either (torch has no such reduction built in).
    """
    flat = anomaly_map.flatten(1)
    if reduction == "mean":
        return flat.mean(dim=1)
    if reduction == "max":
        return flat.amax(dim=1)
    k = max(1, int(round(top_fraction(reduction) * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(dim=1)
