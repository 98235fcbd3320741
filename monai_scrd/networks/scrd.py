"""The SCRD model: frozen teacher, one-class bottleneck, student decoder and scale-adaptation head in one module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from monai_scrd.networks.student import OneClassBottleneck, ScaleAdaptationHead, StudentDecoder, rd4ad_init_
from monai_scrd.networks.teacher import TeacherEncoder
from monai_scrd.scoring.anomaly_map import AnomalyMapGenerator

__all__ = ["SCRD", "REMOVED_ARGUMENTS", "drop_removed_arguments"]

# SCRD arguments that no longer exist, each with the value that is the only behaviour: older model specs may still
# name them, and a spec that asks for another value cannot be rebuilt
REMOVED_ARGUMENTS = {"decoder": "rd4ad"}


def drop_removed_arguments(args: Mapping[str, Any], source: str) -> dict:
    """``args`` without the removed SCRD arguments (:data:`REMOVED_ARGUMENTS`) that name what is now the only
    behaviour.

    Raises:
        ValueError: another value of a removed argument, in one line naming ``source``, the argument and the value.
    """
    out = dict(args)
    for key, only in REMOVED_ARGUMENTS.items():
        if key in out and out.pop(key) != only:
            raise ValueError(f"{source}: {key}={args[key]!r} was removed (only {key}={only!r} remains): a model trained "
                             "with it cannot be rebuilt; retrain it")
    return out


class SCRD(nn.Module):
    """Scale-aware Contrastive Reverse Distillation (Li et al., ICLR 2025); RD4AD and CRD are the same class with
    switches off.

    Inputs are images in [0, 1] (``[B, 1 or 3, H, W]``, H and W multiples of 32). In training mode ``forward``
    returns ``features(x)``; in eval mode it returns the anomaly map ``[B, 1, H, W]``, a single tensor, so the
    model can be checked with ``verify_net_in_out`` and exported to TorchScript/ONNX.

    Args:
        backbone: teacher backbone (see ``monai_scrd.networks.BACKBONES``).
        pretrained: teacher weights: ``True`` (ImageNet), a local checkpoint path, or ``False`` (random; tests).
        contrastive: train with the noisy-teacher contrastive loss (CRD, Eq. 2); training code reads this switch.
        scale_adaptive: learn per-image scale weights ``alpha`` (Eq. 3); when off, ``alpha`` is all ones.
        sigma: Gaussian smoothing of the anomaly map (RD4AD's sigma 4).
        alpha_temperature: softmax temperature of the scale head (1 = paper).
        alpha_floor: uniform share mixed into alpha so that no scale falls below ``alpha_floor / K`` (0 = paper).
        scale_weighting: how the anomaly map weighs the scales: ``"alpha"`` (paper), ``"uniform"`` or ``"auto"``
            (see :class:`~monai_scrd.scoring.AnomalyMapGenerator`, also for the per-scale calibration).

    The bottleneck and decoder are RD4AD's (one-class bottleneck embedding and de-ResNet decoder, with RD4AD's
    initialisation), as the paper uses them.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        pretrained: bool | str = True,
        contrastive: bool = True,
        scale_adaptive: bool = True,
        sigma: float = 4.0,
        alpha_temperature: float = 1.0,
        alpha_floor: float = 0.0,
        scale_weighting: str = "alpha",
    ) -> None:
        super().__init__()
        self.contrastive = bool(contrastive)
        self.scale_adaptive = bool(scale_adaptive)
        self.teacher = TeacherEncoder(backbone, pretrained)
        spec = self.teacher.spec
        fusion_blocks = 3 if spec.block == "bottleneck" else 2
        self.bottleneck = rd4ad_init_(OneClassBottleneck(spec.channels, spec.block, fusion_blocks, spec.width_factor))
        self.decoder = StudentDecoder(
            self.bottleneck.out_channels, spec.channels, spec.blocks_per_stage, spec.block, spec.width_factor
        )
        num_scales = len(spec.channels)
        self.scale_head = (
            ScaleAdaptationHead(self.bottleneck.out_channels, num_scales, alpha_temperature, alpha_floor)
            if scale_adaptive
            else None
        )
        self.anomaly_map = AnomalyMapGenerator(sigma, num_scales, scale_weighting)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Teacher feature maps ``[u1, u2, u3]`` (no gradient); also the noisy teacher when given the noisy image."""
        return self.teacher(x)

    def features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Return ``(teacher_feats, student_feats, alpha)`` with ``alpha`` of shape ``[B, K]``."""
        u = self.encode(x)
        phi = self.bottleneck(u)
        v = self.decoder(phi)
        if self.scale_head is not None:
            alpha = self.scale_head(phi)
        else:
            alpha = torch.ones(x.shape[0], len(u), dtype=phi.dtype, device=phi.device)
        return u, v, alpha

    @torch.no_grad()
    def scale_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-scale raw image scores ``[B, K]`` (see ``AnomalyMapGenerator.scale_scores``) and alpha ``[B, K]``."""
        u, v, alpha = self.features(x)
        return self.anomaly_map.scale_scores(u, v), alpha

    @torch.no_grad()
    def scale_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-scale maps ``[B, K, H, W]`` (see ``AnomalyMapGenerator.scale_maps``) and alpha ``[B, K]``."""
        u, v, alpha = self.features(x)
        return self.anomaly_map.scale_maps(u, v, (x.shape[-2], x.shape[-1])), alpha

    def forward(self, x: torch.Tensor):
        if self.training and not torch.jit.is_scripting():  # the scripted model is the inference graph
            return self.features(x)
        u, v, alpha = self.features(x)
        return self.anomaly_map(u, v, alpha, (x.shape[-2], x.shape[-1]))
