"""Preprocessing for SCRD: load any medical/natural image, make it 3-channel grayscale or RGB (``color_mode``), resize,
scale to [0, 1]."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    Resize,
    Transform,
)
from monai.utils import TransformBackends, convert_to_dst_type

from monai_scrd.data.color import COLOR_MODES, check_color_mode, image_color_mode
from monai_scrd.data.errors import DataError
from monai_scrd.data.readers import LoadMedicalImaged

__all__ = [
    "ToGrayscaleChannels",
    "ToGrayscaleChannelsd",
    "ToColorMode",
    "ToColorModed",
    "ScaleIntensityToUnit",
    "ScaleIntensityToUnitd",
    "intensity_bounds",
    "preprocessing_transforms",
    "array_transforms",
    "ShrinkLargeImage",
    "ShrinkLargeImaged",
    "ResizeToModel",
    "ResizeToModeld",
    "DataCompose",
    "size_2d",
]

INTENSITY_MODES = ("minmax", "percentile", "none")


class ToGrayscaleChannels(Transform):
    """Channel-first image to grayscale replicated on ``channels`` channels (RGB averaged, alpha dropped).

    Args:
        channels: number of output channels (3 for ImageNet teachers).
        copy: replicate into new memory; False returns a broadcast view of the one gray channel (no copy: a large
            image is not held three times before it is shrunk; do not write into it in place).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, channels: int = 3, copy: bool = True) -> None:
        self.channels = channels
        self.copy = bool(copy)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[0] in (2, 4):  # gray+alpha or RGBA: drop alpha
            img = img[:-1]
        gray = img.float().mean(dim=0, keepdim=True) if img.shape[0] > 1 else img.float()
        if not self.copy:
            return gray.expand(self.channels, *gray.shape[1:])
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


class ToColorMode(Transform):
    """Channel-first image to the model's 3 input channels in the given colour mode (see :mod:`monai_scrd.data.color`).

    ``"grayscale"``: as :class:`ToGrayscaleChannels` (RGB averaged, replicated to ``channels``). ``"rgb"``: the first
    three channels (alpha dropped); a grayscale source (1 channel, or gray + alpha) is replicated to 3. ``"auto"``:
    ``"rgb"`` for a colour image (:func:`~monai_scrd.data.color.image_color_mode`), else ``"grayscale"``, decided per
    image; a training run resolves ``"auto"`` once for its whole datalist instead
    (:func:`~monai_scrd.data.color.resolve_color_mode`). The mode used is stored in a MetaTensor's ``meta["color_mode"]``.

    Args:
        color_mode: ``"grayscale"``, ``"rgb"`` or ``"auto"``.
        channels: output channels in grayscale mode (3 for ImageNet teachers); RGB output has 3.
        refuse_mismatch: scoring with a trained model: raise a :class:`DataError` naming the file (a MetaTensor's
            ``filename_or_obj``) for a colour image under ``"grayscale"`` instead of converting it (training); under
            ``"rgb"`` every image is converted (a grayscale one replicated).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, color_mode: str = "grayscale", channels: int = 3, refuse_mismatch: bool = False) -> None:
        if color_mode not in COLOR_MODES:
            raise ValueError(f"color_mode {color_mode!r} is not one of {COLOR_MODES}")
        self.color_mode = color_mode
        self.refuse_mismatch = bool(refuse_mismatch)
        self.to_gray = ToGrayscaleChannels(channels, copy=False)  # views: the resize at the end makes the copy

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.refuse_mismatch:  # a grayscale model refuses colour; an rgb model takes any image as rgb
            source = getattr(img, "meta", {}).get("filename_or_obj", "image")
            image_mode = check_color_mode(img, self.color_mode, source)
            mode = image_mode if self.color_mode == "auto" else self.color_mode
        else:
            mode = image_color_mode(img) if self.color_mode == "auto" else self.color_mode
        if mode == "grayscale":
            out = self.to_gray(img)
        elif img.shape[0] >= 3:
            out = img[:3].float()
        else:
            out = ToGrayscaleChannels(3, copy=False)(img)
        if hasattr(out, "meta"):
            out.meta["color_mode"] = mode
        return out


class ToColorModed(MapTransform):
    """Dictionary wrapper of :class:`ToColorMode`."""

    backend = ToColorMode.backend

    def __init__(
        self,
        keys: KeysCollection,
        color_mode: str = "grayscale",
        channels: int = 3,
        refuse_mismatch: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ToColorMode(color_mode, channels, refuse_mismatch)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


def intensity_bounds(
    values: np.ndarray | torch.Tensor, intensity: str = "minmax", percentiles: Sequence[float] = (0.5, 99.5)
) -> tuple[float, float]:
    """``(low, high)`` intensities mapped to 0 and 1: the minimum and maximum, or the given percentiles (in %)."""
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if intensity == "minmax":
        return float(arr.min()), float(arr.max())
    if intensity == "percentile":
        lo_p, hi_p = (float(p) for p in percentiles)
        if not 0.0 <= lo_p < hi_p <= 100.0:
            raise ValueError(f"percentiles {tuple(percentiles)} must satisfy 0 <= low < high <= 100")
        lo, hi = np.percentile(arr, [lo_p, hi_p])
        if hi <= lo:  # mostly constant image: fall back to the full range
            lo, hi = arr.min(), arr.max()
        return float(lo), float(hi)
    raise ValueError(f"intensity scaling {intensity!r} is not one of {INTENSITY_MODES}")


class ScaleIntensityToUnit(Transform):
    """Scale intensities to [0, 1]: ``(x - low) / (high - low)`` clipped to [0, 1], with ``low``/``high`` the
    image's minimum/maximum (``"minmax"``) or its ``percentiles`` (``"percentile"``, robust to outliers);
    ``"none"`` leaves values unchanged. A constant image becomes all zeros.

    Args:
        intensity: ``"minmax"``, ``"percentile"`` or ``"none"``.
        percentiles: low and high percentiles (in %) for ``"percentile"``.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, intensity: str = "minmax", percentiles: Sequence[float] = (0.5, 99.5)) -> None:
        if intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity scaling {intensity!r} is not one of {INTENSITY_MODES}")
        self.intensity = intensity
        self.percentiles = tuple(float(p) for p in percentiles)
        intensity_bounds(np.zeros(1), intensity if intensity != "none" else "minmax", self.percentiles)  # validate

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        img = img if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img))
        if self.intensity == "none":
            return img
        img = img.float()
        lo, hi = intensity_bounds(img, self.intensity, self.percentiles)
        if hi <= lo:
            return torch.zeros_like(img)
        return ((img - lo) / (hi - lo)).clamp(0.0, 1.0)


class ScaleIntensityToUnitd(MapTransform):
    """Dictionary wrapper of :class:`ScaleIntensityToUnit`."""

    backend = ScaleIntensityToUnit.backend

    def __init__(
        self,
        keys: KeysCollection,
        intensity: str = "minmax",
        percentiles: Sequence[float] = (0.5, 99.5),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleIntensityToUnit(intensity, percentiles)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


class DataCompose(Compose):
    """``Compose`` that re-raises a :class:`~monai_scrd.data.errors.DataError` from any of its transforms as is,
    instead of MONAI's ``RuntimeError("applying transform ...")`` wrapper, so the one-line message reaches the user."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except RuntimeError as e:
            cause: BaseException | None = e
            while cause is not None and not isinstance(cause, DataError):
                cause = cause.__cause__
            if cause is None:
                raise
            raise cause from None


def size_2d(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` of an image size setting (an int is square)."""
    return (int(image_size), int(image_size)) if isinstance(image_size, (int, np.integer)) else tuple(int(s) for s in image_size)


class ShrinkLargeImage(Transform):
    """Averages blocks of ``factor x factor`` pixels of an image more than ``max_ratio`` times larger than
    ``spatial_size`` (integer factor per axis, leaving at least ``max_ratio`` times the target size); smaller images
    pass unchanged. MONAI's anti-aliased ``Resize`` smooths with a Gaussian whose width grows with the downscale
    factor, so on its own its cost grows faster than the pixel count (an 8000 x 8000 image took minutes); block
    averaging first (MONAI's ``Resize`` in ``area`` mode, which keeps the image's metadata and affine like any other
    image's, so shrunk and untouched images batch together) keeps the whole resize linear in pixels.

    Args:
        spatial_size: the size the image is resized to next.
        max_ratio: largest downscale factor left to the anti-aliased resize.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, spatial_size: int | Sequence[int], max_ratio: int = 4) -> None:
        self.spatial_size = size_2d(spatial_size)
        self.max_ratio = int(max_ratio)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        factors = [max(1, int(s) // (int(t) * self.max_ratio)) for s, t in zip(img.shape[-2:], self.spatial_size)]
        if factors == [1, 1]:
            return img
        size = [int(s) // f for s, f in zip(img.shape[-2:], factors)]
        if img.shape[0] > 1 and img.stride(0) == 0:  # one channel broadcast to all (ToColorMode): shrink it once
            return Resize(spatial_size=size, mode="area", anti_aliasing=False)(img[:1].float()).expand(img.shape[0], *size)
        return Resize(spatial_size=size, mode="area", anti_aliasing=False)(img.float())


class ShrinkLargeImaged(MapTransform):
    """Dictionary wrapper of :class:`ShrinkLargeImage`."""

    backend = ShrinkLargeImage.backend

    def __init__(self, keys: KeysCollection, spatial_size: int | Sequence[int], max_ratio: int = 4,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.shrinker = ShrinkLargeImage(spatial_size, max_ratio)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.shrinker(d[key])
        return d


class ResizeToModel(Transform):
    """Resizes a channel-first 2D image to ``spatial_size`` with bilinear interpolation, anti-aliased when shrinking,
    whose weights are renormalised at the image border: no value outside the image enters the result.

    MONAI's ``Resize(anti_aliasing=True)`` smooths with a Gaussian that pads with zeros first, which darkens a rim along
    the border whose depth depends on the image's brightness; a constant offset, a gain or an inverted (MONOCHROME1)
    copy of the same picture then gave other model inputs and other scores. PyTorch's own anti-aliased
    ``interpolate`` has no such rim, so this transform uses it (keeping a MetaTensor's metadata).

    Args:
        spatial_size: output size (int for square).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, spatial_size: int | Sequence[int]) -> None:
        self.spatial_size = size_2d(spatial_size)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(img).float()
        if tuple(x.shape[-2:]) == self.spatial_size:
            return img.contiguous()  # a broadcast view of one channel (ToColorMode) becomes an image of its own
        out = F.interpolate(x[None], size=self.spatial_size, mode="bilinear", align_corners=False, antialias=True)[0]
        return convert_to_dst_type(out, img, dtype=torch.float32)[0]


class ResizeToModeld(MapTransform):
    """Dictionary wrapper of :class:`ResizeToModel`."""

    backend = ResizeToModel.backend

    def __init__(self, keys: KeysCollection, spatial_size: int | Sequence[int], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.resizer = ResizeToModel(spatial_size)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizer(d[key])
        return d


def array_transforms(
    keys: KeysCollection = "image",
    image_size: int | Sequence[int] = 256,
    intensity: str = "minmax",
    percentiles: Sequence[float] = (0.5, 99.5),
    channels: int = 3,
    color_mode: str = "grayscale",
    refuse_mismatch: bool = False,
) -> Compose:
    """The steps of :func:`preprocessing_transforms` after loading, for images already in memory
    (``{"image": [C, H, W] tensor}``); used to score the slices of a volume.

    Intensities are scaled to [0, 1] on the image itself (after a large image's block averaging, which is linear),
    then the image is resized with border-normalised weights (:class:`ResizeToModel`): every step is linear or
    affine-invariant, so an offset, a gain, MONOCHROME1 vs MONOCHROME2 or 8- vs 16-bit storage of one picture give one
    model input."""
    return Compose(
        [
            ToColorModed(keys, color_mode=color_mode, channels=channels, refuse_mismatch=refuse_mismatch),
            ShrinkLargeImaged(keys, image_size),
            ScaleIntensityToUnitd(keys, intensity=intensity, percentiles=percentiles),
            ResizeToModeld(keys, image_size),
            EnsureTyped(keys, dtype=torch.float32),
        ]
    )


def preprocessing_transforms(
    keys: KeysCollection = "image",
    image_size: int | Sequence[int] = 256,
    intensity: str = "minmax",
    percentiles: Sequence[float] = (0.5, 99.5),
    apply_voi: bool = True,
    channels: int = 3,
    color_mode: str = "grayscale",
    refuse_mismatch: bool = False,
) -> Compose:
    """Load and validate (DICOM/NIfTI/PNG/JPEG, see :class:`LoadMedicalImaged`), convert to the model's 3 channels in
    ``color_mode`` (grayscale replicated, or RGB), resize to ``image_size`` and scale intensities to [0, 1]. For 2D
    images; a 3D volume raises a ``DataError`` (volumes are scored slice by slice by ``monai_scrd.scoring.Scorer``).

    Output: ``{"image": float32 MetaTensor [channels, H, W] in [0, 1]}`` with rows first (no transpose).

    Args:
        keys: keys holding image paths.
        image_size: output spatial size (int for square); keep it a multiple of 32.
        intensity: ``"minmax"`` (default), ``"percentile"`` (robust to outliers) or ``"none"``; RGB images are scaled
            with one range for all three channels, so hues are kept.
        percentiles: low/high percentiles (in %) mapped to 0 and 1 when ``intensity="percentile"``.
        apply_voi: apply a DICOM VOI LUT / window centre-width when the file has one.
        channels: output channels in grayscale mode (3 for ImageNet teachers).
        color_mode: ``"grayscale"``, ``"rgb"`` or ``"auto"`` (per image; see :class:`ToColorMode` and
            :mod:`monai_scrd.data.color`, which also resolves ``"auto"`` once for a whole datalist).
        refuse_mismatch: refuse (``DataError`` naming the file) a colour image under ``"grayscale"`` instead of
            converting it; for scoring with a trained model.
    """
    return DataCompose(
        [LoadMedicalImaged(keys, allow_volume=False, apply_voi=apply_voi)]
        + list(array_transforms(keys, image_size, intensity, percentiles, channels, color_mode, refuse_mismatch).transforms)
    )
