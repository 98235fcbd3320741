"""Student side of reverse distillation: one-class bottleneck embedding (OCBE), decoder and scale-adaptation head.

Written for any teacher with three feature maps at strides 4/8/16 (ResNets and EfficientNet-Lite0), reusing
torchvision's residual blocks rather than per-backbone hand-written copies.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = ["OneClassBottleneck", "StudentDecoder", "ScaleAdaptationHead", "residual_stage"]


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def residual_stage(cin: int, cout: int, blocks: int, kind: str, stride: int = 1, width_factor: int = 1) -> nn.Sequential:
    """``blocks`` torchvision residual blocks mapping ``cin`` to ``cout`` channels; the first one strides.

    Args:
        cin: input channels.
        cout: output channels.
        blocks: number of residual blocks (>= 1).
        kind: ``"basic"`` (ResNet-18/34 style) or ``"bottleneck"`` (ResNet-50 style, ``cout`` divisible by 4).
        stride: stride of the first block.
        width_factor: bottleneck width multiplier (2 for wide ResNets).
    """

    def block(i: int, o: int, s: int) -> nn.Module:
        down = None
        if s != 1 or i != o:
            down = nn.Sequential(nn.Conv2d(i, o, 1, s, bias=False), nn.BatchNorm2d(o))
        if kind == "basic":
            blk = BasicBlock(i, o, s, down)
        elif kind == "bottleneck":
            blk = Bottleneck(i, o // Bottleneck.expansion, s, down, base_width=64 * width_factor)
        else:
            raise ValueError(f"block kind {kind!r} is not 'basic' or 'bottleneck'")
        return blk

    return nn.Sequential(block(cin, cout, stride), *[block(cout, cout, 1) for _ in range(blocks - 1)])


class OneClassBottleneck(nn.Module):
    """Fuses the three teacher maps into one compact embedding ``phi`` at stride 32 (RD4AD's OCBE).

    The stride-4 and stride-8 maps are brought to stride 16 with strided 3x3 convolutions, concatenated with the
    stride-16 map, and passed through a strided residual stage to ``2 * channels[2]`` channels.

    Args:
        channels: channels of the teacher maps ``(c1, c2, c3)``.
        kind: residual block kind (see ``residual_stage``).
        blocks: residual blocks in the fusion stage.
        width_factor: bottleneck width multiplier.
    """

    def __init__(self, channels: tuple[int, int, int], kind: str = "basic", blocks: int = 2, width_factor: int = 1) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.down1 = nn.Sequential(_conv_bn_relu(c1, c2, 2), _conv_bn_relu(c2, c3, 2))
        self.down2 = _conv_bn_relu(c2, c3, 2)
        self.fuse = residual_stage(3 * c3, 2 * c3, blocks, kind, stride=2, width_factor=width_factor)
        self.out_channels = 2 * c3

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        u1, u2, u3 = feats
        return self.fuse(torch.cat([self.down1(u1), self.down2(u2), u3], dim=1))


class StudentDecoder(nn.Module):
    """Mirrors the encoder: from ``phi`` (stride 32) back up to student maps ``[v1, v2, v3]`` shaped like the teacher's.

    Each stage upsamples x2 with a transposed convolution, then refines with residual blocks.

    Args:
        in_channels: channels of ``phi``.
        channels: teacher channels ``(c1, c2, c3)`` to reproduce.
        blocks_per_stage: residual blocks for the stages producing ``v1, v2, v3``.
        kind: residual block kind.
        width_factor: bottleneck width multiplier.
    """

    def __init__(
        self,
        in_channels: int,
        channels: tuple[int, int, int],
        blocks_per_stage: tuple[int, int, int] = (2, 2, 2),
        kind: str = "basic",
        width_factor: int = 1,
    ) -> None:
        super().__init__()
        stages = []
        cin = in_channels
        for cout, blocks in zip(reversed(channels), reversed(blocks_per_stage)):  # deepest first
            up = nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
            stages.append(nn.Sequential(up, residual_stage(cout, cout, blocks, kind, width_factor=width_factor)))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, phi: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        x = phi
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[::-1]  # [v1, v2, v3], matching the teacher's order


class ScaleAdaptationHead(nn.Module):
    """Scale descriptor ``alpha = softmax(W . GMP(phi))`` with one weight per scale (paper Eq. 3).

    ``W`` starts at zero, so training starts from equal weights ``1 / num_scales``.

    Trained through Eq. 4 alone, the head minimises ``sum_k alpha_k r_k`` and drives ``alpha`` to the one-hot of the
    scale with the smallest ratio within tens of iterations, whatever the image (benchmarks/RESULTS.md); that scale then
    dominates the anomaly map and the other scales' decoder stages stop being trained. Two options bound this:
    ``temperature`` divides the logits (softer weights), ``alpha_floor`` mixes in a uniform share so that every scale
    keeps at least ``alpha_floor / num_scales`` of the weight (``alpha = floor / K + (1 - floor) * softmax``).
    Both at their defaults (1 and 0) give the paper's head.

    Args:
        in_channels: channels of ``phi``.
        num_scales: number of distillation scales ``K``.
        temperature: softmax temperature (> 0).
        alpha_floor: uniform share in [0, 1] mixed into ``alpha``.
    """

    def __init__(self, in_channels: int, num_scales: int = 3, temperature: float = 1.0, alpha_floor: float = 0.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha_floor <= 1.0:
            raise ValueError(f"alpha_floor must lie in [0, 1], got {alpha_floor}")
        self.temperature = float(temperature)
        self.alpha_floor = float(alpha_floor)
        self.linear = nn.Linear(in_channels, num_scales)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        pooled = torch.amax(phi, dim=(2, 3))  # global max pooling
        alpha = torch.softmax(self.linear(pooled) / self.temperature, dim=1)
        if self.alpha_floor > 0:
            alpha = self.alpha_floor / alpha.shape[1] + (1.0 - self.alpha_floor) * alpha
        return alpha
