"""Distillation losses: RD4AD (paper Eq. 1) and scale-aware contrastive reverse distillation (Eq. 2/4, Algorithm 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = [
    "ReverseDistillationLoss",
    "ContrastiveReverseDistillationLoss",
    "build_loss",
    "flat_cosine_distance",
    "location_cosine_distance",
    "CONTRAST_MODES",
]

CONTRAST_MODES = ("flatten", "location")


def flat_cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - sim(a, b)`` per sample with each sample's feature map flattened to one vector: shape ``[B]``."""
    return 1.0 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


def location_cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - cos(a, b)`` over channels at every location: maps ``[B, C, H, W]`` -> ``[B, H*W]`` (RD4AD's Eq. 1 terms)."""
    return (1.0 - F.cosine_similarity(a, b, dim=1)).flatten(1)


def _scale_weights(alpha: torch.Tensor | None, batch: int, scales: int, like: torch.Tensor) -> torch.Tensor:
    if alpha is None:
        return torch.ones(batch, scales, dtype=like.dtype, device=like.device)
    if alpha.shape != (batch, scales):
        raise ValueError(f"alpha must have shape [batch, scales] = {[batch, scales]}, got {list(alpha.shape)}")
    return alpha


class ReverseDistillationLoss(_Loss):
    """RD4AD loss (Eq. 1): for each scale, the mean over locations of ``1 - cos(u_k, v_k)`` taken over channels,
    summed over scales (optionally weighted by ``alpha``) and averaged over the batch.

    Args:
        flatten: use the flattened-per-sample cosine instead of the per-location one (what RD4AD's code does).
    """

    def __init__(self, flatten: bool = False) -> None:
        super().__init__()
        self.flatten = flatten

    def forward(
        self, teacher_feats: list[torch.Tensor], student_feats: list[torch.Tensor], alpha: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch = teacher_feats[0].shape[0]
        weights = _scale_weights(alpha, batch, len(teacher_feats), teacher_feats[0])
        total = 0.0
        for k, (u, v) in enumerate(zip(teacher_feats, student_feats)):
            per_sample = flat_cosine_distance(u, v) if self.flatten else location_cosine_distance(u, v).mean(dim=1)
            total = total + weights[:, k] * per_sample
        return total.mean()


class ContrastiveReverseDistillationLoss(_Loss):
    """Scale-aware contrastive reverse distillation loss.

    Default (``ratio_of_sums=False``), paper Eq. 4 (Eq. 2 when ``alpha`` is None), per sample ``b``::

        L_b = sum_k alpha_bk * (1 - sim(u_bk, v_bk)) / (1 - sim(z_bk, v_bk) + eps)

    with ``sim`` the cosine similarity of the flattened maps; the loss is the batch mean of ``L_b``.
    With ``ratio_of_sums=True``, Algorithm 2: ``L_b = sum_k alpha_bk (1 - sim(u, v)) / (sum_k alpha_bk (1 - sim(z, v)) + eps)``.

    ``alpha`` weighs the per-scale terms from outside the cosine, so its gradient is the per-scale term itself
    (multiplying both vectors inside the cosine, as the authors' code does, cancels it and the scale head never learns).

    Why the options below exist (numbers: benchmarks/RESULTS.md): the noisy teacher differs from the clean one only
    inside one small noise box, so ``z ~ u`` over most of the map. Then the ratio ``pull / push`` is close to 1 and its
    gradient ``(grad pull - r grad push) / push`` nearly cancels wherever ``z = u``: the student stops learning to
    reconstruct normal features outside the box, which is RD4AD's whole signal. ``distillation_weight`` adds that
    signal back (``+ w * sum_k alpha_k * mean_locations(1 - cos(u_k, v_k))``, Eq. 1 per location), and
    ``contrast="location"`` takes the ratio per location (cosine over channels) and averages it, so that the push acts
    where the noise is instead of being diluted by the whole map.

    Args:
        eps: added to the denominator.
        ratio_of_sums: use Algorithm 2's ratio of alpha-weighted sums instead of Eq. 4's sum of ratios.
        distillation_weight: weight of the added RD4AD distillation term (0 = the paper's loss).
        contrast: ``"flatten"`` (the paper: one cosine per flattened map) or ``"location"`` (per-location cosines,
            ratio averaged over locations).
    """

    def __init__(
        self,
        eps: float = 1e-6,
        ratio_of_sums: bool = False,
        distillation_weight: float = 0.0,
        contrast: str = "flatten",
    ) -> None:
        super().__init__()
        if contrast not in CONTRAST_MODES:
            raise ValueError(f"contrast={contrast!r} is not one of {CONTRAST_MODES}")
        self.eps = float(eps)
        self.ratio_of_sums = bool(ratio_of_sums)
        self.distillation_weight = float(distillation_weight)
        self.contrast = contrast

    def scale_terms(
        self, teacher_feats: list[torch.Tensor], student_feats: list[torch.Tensor], noisy_teacher_feats: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample, per-scale ``(pull, push, ratio)``, each ``[B, K]`` (the ratio as Eq. 4 takes it)."""
        if self.contrast == "flatten":
            pull = torch.stack([flat_cosine_distance(u, v) for u, v in zip(teacher_feats, student_feats)], dim=1)
            push = torch.stack([flat_cosine_distance(z, v) for z, v in zip(noisy_teacher_feats, student_feats)], dim=1)
            return pull, push, pull / (push + self.eps)
        pulls, pushes, ratios = [], [], []
        for u, v, z in zip(teacher_feats, student_feats, noisy_teacher_feats):
            pull_map, push_map = location_cosine_distance(u, v), location_cosine_distance(z, v)
            pulls.append(pull_map.mean(1))
            pushes.append(push_map.mean(1))
            ratios.append((pull_map / (push_map + self.eps)).mean(1))
        return torch.stack(pulls, 1), torch.stack(pushes, 1), torch.stack(ratios, 1)

    def forward(
        self,
        teacher_feats: list[torch.Tensor],
        student_feats: list[torch.Tensor],
        noisy_teacher_feats: list[torch.Tensor],
        alpha: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not len(teacher_feats) == len(student_feats) == len(noisy_teacher_feats):
            raise ValueError("teacher, student and noisy teacher must give the same number of feature maps")
        batch = teacher_feats[0].shape[0]
        weights = _scale_weights(alpha, batch, len(teacher_feats), teacher_feats[0])
        pull, push, ratio = self.scale_terms(teacher_feats, student_feats, noisy_teacher_feats)
        if self.ratio_of_sums:
            per_sample = (weights * pull).sum(1) / ((weights * push).sum(1) + self.eps)
        else:
            per_sample = (weights * ratio).sum(1)
        if self.distillation_weight:
            distill = torch.stack([location_cosine_distance(u, v).mean(1) for u, v in zip(teacher_feats, student_feats)], 1)
            per_sample = per_sample + self.distillation_weight * (weights * distill).sum(1)
        return per_sample.mean()


def build_loss(
    contrastive: bool,
    ratio_of_sums: bool = False,
    eps: float = 1e-6,
    distillation_weight: float = 0.0,
    contrast: str = "flatten",
) -> _Loss:
    """The training loss for a model's ``contrastive`` switch: Eq. 4 (or Algorithm 2) when on, Eq. 1 when off.
    The keyword options are those of :class:`ContrastiveReverseDistillationLoss` (ignored for Eq. 1)."""
    if contrastive:
        return ContrastiveReverseDistillationLoss(
            eps=eps,
            ratio_of_sums=ratio_of_sums,
            distillation_weight=distillation_weight,
            contrast=contrast,
        )
    return ReverseDistillationLoss()
