"""Student side of reverse distillation: one-class bottleneck embedding (OCBE), decoder and scale-adaptation head.

Written for any teacher with three feature maps at strides 4/8/16 (ResNets and EfficientNet-Lite0), reusing
torchvision's residual blocks rather than per-backbone hand-written copies. ``OneClassBottleneck`` and
``StudentDecoder`` follow RD4AD (Deng & Li, 2022: ``resnet.BN_layer`` and ``de_resnet``), which SCRD uses
unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = [
    "OneClassBottleneck",
    "StudentDecoder",
    "ScaleAdaptationHead",
    "residual_stage",
    "upsampling_block",
    "rd4ad_init_",
]


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _residual_block(cin: int, cout: int, stride: int, kind: str, width_factor: int) -> nn.Module:
    """A torchvision residual block from ``cin`` to ``cout`` channels, with a 1x1 convolution shortcut when needed."""
    down = None
    if stride != 1 or cin != cout:
        down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    if kind == "basic":
        return BasicBlock(cin, cout, stride, down)
    if kind == "bottleneck":
        return Bottleneck(cin, cout // Bottleneck.expansion, stride, down, base_width=64 * width_factor)
    raise ValueError(f"block kind {kind!r} is not 'basic' or 'bottleneck'")


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
    first = _residual_block(cin, cout, stride, kind, width_factor)
    return nn.Sequential(first, *[_residual_block(cout, cout, 1, kind, width_factor) for _ in range(blocks - 1)])


def upsampling_block(cin: int, cout: int, kind: str, width_factor: int = 1) -> nn.Module:
    """RD4AD's first block of a decoder stage: a residual block that doubles the resolution.

    It is torchvision's ``BasicBlock``/``Bottleneck`` with the (would-be strided) 3x3 convolution replaced by a 2x2
    stride-2 transposed convolution, and a transposed-convolution + batch-norm shortcut in the ``downsample`` slot
    (which the block's ``forward`` applies to the identity branch). torchvision has no upsampling residual block.

    Args:
        cin: input channels.
        cout: output channels (``4 * planes`` for bottlenecks).
        kind: ``"basic"`` or ``"bottleneck"``.
        width_factor: bottleneck width multiplier (2 for wide ResNets).
    """
    shortcut = nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, 2, bias=False), nn.BatchNorm2d(cout))
    if kind == "basic":
        block = BasicBlock(cin, cout, downsample=shortcut)
        block.conv1 = nn.ConvTranspose2d(cin, cout, 2, 2, bias=False)
    elif kind == "bottleneck":
        block = Bottleneck(cin, cout // Bottleneck.expansion, downsample=shortcut, base_width=64 * width_factor)
        width = block.conv2.in_channels
        block.conv2 = nn.ConvTranspose2d(width, width, 2, 2, bias=False)
    else:
        raise ValueError(f"block kind {kind!r} is not 'basic' or 'bottleneck'")
    return block


def rd4ad_init_(module: nn.Module) -> nn.Module:
    """RD4AD's initialisation (torchvision ResNet's): Kaiming-normal (fan-out) ``Conv2d`` weights, batch-norm
    weight 1 and bias 0; transposed convolutions keep PyTorch's default, as in RD4AD."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


class OneClassBottleneck(nn.Module):
    """Fuses the three teacher maps into one compact embedding ``phi`` at stride 32 (RD4AD's OCBE, ``BN_layer``).

    ``u1`` goes through two strided 3x3 conv-BN-ReLU (``c1 -> c2 -> c3``), ``u2`` through one (``c2 -> c3``); both are
    concatenated with ``u3`` (``3 * c3`` channels) and passed through one residual stage whose first block strides
    (1x1 convolution shortcut), to ``2 * c3`` channels: 3 bottleneck blocks (planes 512, 2048 channels) for
    ResNet-50/WRN50-2, 2 basic blocks (512 channels) for ResNet-18/34. RD4AD's unused ``conv4``/``bn4`` are left out.

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
    """RD4AD's decoder (``de_resnet``): from ``phi`` (stride 32) back up to student maps ``[v1, v2, v3]`` shaped like
    the teacher's.

    Three stages, deepest first, each doubling the resolution inside its first block (``upsampling_block``) and
    refining with plain residual blocks. For WRN50-2/ResNet-50: 3, 4 and 6 bottleneck blocks with planes 256, 128
    and 64 (1024, 512 and 256 channels); ResNet-18: 2, 2, 2 basic blocks; ResNet-34: 3, 4, 6. Initialised as
    RD4AD (``rd4ad_init_``).

    Args:
        in_channels: channels of ``phi``.
        channels: teacher channels ``(c1, c2, c3)`` to reproduce.
        blocks_per_stage: residual blocks per stage, deepest stage (producing ``v3``) first, as RD4AD's ``layers``.
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
        for cout, blocks in zip(reversed(channels), blocks_per_stage):
            rest = [_residual_block(cout, cout, 1, kind, width_factor) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(upsampling_block(cin, cout, kind, width_factor), *rest))
            cin = cout
        self.stages = nn.ModuleList(stages)
        rd4ad_init_(self)

    def forward(self, phi: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        x = phi
        for stage in self.stages:  # deepest first
            x = stage(x)
            outs.append(x)
        return outs[::-1]  # [v1, v2, v3], matching the teacher's order


class ScaleAdaptationHead(nn.Module):
    """Scale descriptor ``alpha = softmax(W . GMP(phi))`` with one weight per scale (paper Eq. 3).

    ``W`` starts at zero, so training starts from equal weights ``1 / num_scales``.

    Trained through Eq. 4 alone, the head minimises ``sum_k alpha_k r_k``, so it can drive ``alpha`` to the one-hot of
    the scale with the smallest ratio whatever the image (numbers: benchmarks/RESULTS.md); that scale then dominates
    the anomaly map and the other scales' decoder stages stop being trained. Two options bound this:
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
