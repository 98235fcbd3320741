"""Anomaly maps and image scores from teacher/student features (paper Sec. 2.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import gaussian_blur

__all__ = ["AnomalyMapGenerator", "image_score"]


class AnomalyMapGenerator(nn.Module):
    """Per-scale ``1 - cos(u_k, v_k)`` maps (cosine over channels at each location), weighted by ``alpha_k``,
    upsampled bilinearly to the image size, summed over scales and smoothed with a Gaussian (sigma 4 in the paper).

    The smoothing is torchvision's ``gaussian_blur`` with a kernel radius of 4 sigma and mirrored borders, which
    equals ``scipy.ndimage.gaussian_filter(..., mode="mirror")`` (RD4AD's reference smoothing, up to the border mode),
    and it traces and exports to ONNX, unlike MONAI's ``GaussianFilter`` whose padding is computed at run time.

    Args:
        sigma: Gaussian smoothing sigma in pixels; 0 disables smoothing.
    """

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.kernel_size = 2 * int(round(4.0 * self.sigma)) + 1

    def smooth(self, amap: torch.Tensor) -> torch.Tensor:
        if self.sigma <= 0:
            return amap
        return gaussian_blur(amap, [self.kernel_size, self.kernel_size], [self.sigma, self.sigma])

    def forward(
        self, teacher: list[torch.Tensor], student: list[torch.Tensor], alpha: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Return the anomaly map ``[B, 1, H, W]`` for features of an image of ``image_size`` (H, W)."""
        amap = torch.zeros(teacher[0].shape[0], 1, image_size[0], image_size[1], device=teacher[0].device)
        for k, (u, v) in enumerate(zip(teacher, student)):
            dist = 1.0 - F.cosine_similarity(u, v, dim=1).unsqueeze(1)
            dist = F.interpolate(dist, size=image_size, mode="bilinear", align_corners=False)
            amap = amap + alpha[:, k].view(-1, 1, 1, 1) * dist
        return self.smooth(amap)


def image_score(anomaly_map: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Image-level score ``[B]`` from maps ``[B, 1, ...]``: their mean (paper) or maximum."""
    flat = anomaly_map.flatten(1)
    if reduction == "mean":
        return flat.mean(dim=1)
    if reduction == "max":
        return flat.amax(dim=1)
    raise ValueError(f"image score reduction {reduction!r} is not 'mean' or 'max'")
