"""Distillation losses: RD4AD (paper Eq. 1) and scale-aware contrastive reverse distillation (Eq. 2/4, Algorithm 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["ReverseDistillationLoss", "ContrastiveReverseDistillationLoss", "build_loss", "flat_cosine_distance", "alpha_entropy"]


def flat_cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - sim(a, b)`` per sample with each sample's feature map flattened to one vector: shape ``[B]``."""
    return 1.0 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


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
            if self.flatten:
                per_sample = flat_cosine_distance(u, v)
            else:
                per_sample = (1.0 - F.cosine_similarity(u, v, dim=1)).flatten(1).mean(dim=1)
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

    Args:
        eps: added to the denominator.
        ratio_of_sums: use Algorithm 2's ratio of alpha-weighted sums instead of Eq. 4's sum of ratios.
        alpha_entropy_weight: subtract this times the mean entropy of ``alpha`` (0 = the paper's loss). Minimising
            ``sum_k alpha_k r_k`` alone drives ``alpha`` towards the one-hot of the smallest ratio; a positive weight
            keeps the scale weights soft.
    """

    def __init__(self, eps: float = 1e-6, ratio_of_sums: bool = False, alpha_entropy_weight: float = 0.0) -> None:
        super().__init__()
        self.eps = float(eps)
        self.ratio_of_sums = ratio_of_sums
        self.alpha_entropy_weight = float(alpha_entropy_weight)

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
        pull = torch.stack([flat_cosine_distance(u, v) for u, v in zip(teacher_feats, student_feats)], dim=1)
        push = torch.stack([flat_cosine_distance(z, v) for z, v in zip(noisy_teacher_feats, student_feats)], dim=1)
        if self.ratio_of_sums:
            per_sample = (weights * pull).sum(1) / ((weights * push).sum(1) + self.eps)
        else:
            per_sample = (weights * pull / (push + self.eps)).sum(1)
        loss = per_sample.mean()
        if self.alpha_entropy_weight and alpha is not None:
            loss = loss - self.alpha_entropy_weight * alpha_entropy(alpha).mean()
        return loss


def alpha_entropy(alpha: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each sample's scale weights ``[B, K]`` -> ``[B]``; ``log K`` when uniform, 0 when one-hot."""
    return -(alpha * torch.log(alpha.clamp_min(1e-12))).sum(dim=1)


def build_loss(
    contrastive: bool, ratio_of_sums: bool = False, eps: float = 1e-6, alpha_entropy_weight: float = 0.0
) -> _Loss:
    """The training loss for a model's ``contrastive`` switch: Eq. 4 (or Algorithm 2) when on, Eq. 1 when off."""
    if contrastive:
        return ContrastiveReverseDistillationLoss(eps=eps, ratio_of_sums=ratio_of_sums, alpha_entropy_weight=alpha_entropy_weight)
    return ReverseDistillationLoss()
