"""Preprocessing for SCRD: load any medical/natural image, make it 3-channel grayscale, resize, scale to [0, 1]."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Resized,
    ScaleIntensityd,
    Transform,
)
from monai.utils import TransformBackends

__all__ = ["ToGrayscaleChannels", "ToGrayscaleChannelsd", "preprocessing_transforms"]


class ToGrayscaleChannels(Transform):
    """Channel-first image to grayscale replicated on ``channels`` channels (RGB averaged, alpha dropped).

    Args:
        channels: number of output channels (3 for ImageNet teachers).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, channels: int = 3) -> None:
        self.channels = channels

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[0] in (2, 4):  # gray+alpha or RGBA: drop alpha
            img = img[:-1]
        gray = img.float().mean(dim=0, keepdim=True) if img.shape[0] > 1 else img.float()
        return gray.repeat(self.channels, *([1] * (gray.ndim - 1)))


class ToGrayscaleChannelsd(MapTransform):
    """Dictionary wrapper of ``ToGrayscaleChannels``."""

    backend = ToGrayscaleChannels.backend

    def __init__(self, keys: KeysCollection, channels: int = 3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ToGrayscaleChannels(channels)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


def preprocessing_transforms(keys: KeysCollection = "image", image_size: int | Sequence[int] = 256) -> Compose:
    """Load, grayscale to 3 channels, resize to ``image_size`` and min-max scale to [0, 1] (2D images).

    Args:
        keys: keys holding image paths.
        image_size: output spatial size (int for square); keep it a multiple of 32.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return Compose(
        [
            LoadImaged(keys, image_only=True, ensure_channel_first=True),
            ToGrayscaleChannelsd(keys),
            Resized(keys, spatial_size=size, mode="bilinear", anti_aliasing=True),
            ScaleIntensityd(keys, minv=0.0, maxv=1.0),
            EnsureTyped(keys, dtype=torch.float32),
        ]
    )
