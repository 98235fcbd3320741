"""Slice-wise scoring of 3D volumes (NIfTI, multi-frame DICOM) with a 2D SCRD model.

A volume is cut into 2D slices along ``axis`` (empty slices skipped), each slice goes through the same preprocessing as
2D images, the model's anomaly maps are resized back to each slice's size and stacked into a map volume with the
input's affine, and the per-slice image scores are aggregated to a volume score (max by default).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from monai_scrd.data.errors import DataError
from monai_scrd.data.readers import MedicalImage, read_medical_image
from monai_scrd.data.transforms import array_transforms, intensity_bounds

__all__ = [
    "slice_volume",
    "assemble_volume",
    "aggregate_scores",
    "score_slices",
    "score_volume",
    "save_map_nifti",
    "VolumeScore",
]


def _axis(axis: int, ndim: int = 3) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"slice axis {axis} is out of range for a {ndim}D volume")
    return axis % ndim


def slice_volume(
    volume: np.ndarray | torch.Tensor, axis: int = 2, skip_empty: bool = True, empty_tolerance: float = 0.0
) -> list[tuple[int, np.ndarray]]:
    """Cut a 3D volume into 2D slices along ``axis``.

    Args:
        volume: ``[X, Y, Z]`` array.
        axis: axis to slice along (negative counts from the end).
        skip_empty: leave out empty slices: those whose value range (max - min) is at most ``empty_tolerance``
            (all background / zero padding).
        empty_tolerance: see ``skip_empty``.

    Returns:
        ``[(index, slice_2d), ...]`` in increasing index order; each slice is the volume with ``axis`` removed.
    """
    vol = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"slice_volume expects a 3D volume, got shape {tuple(vol.shape)}")
    axis = _axis(axis)
    out = []
    for i in range(vol.shape[axis]):
        sl = np.take(vol, i, axis=axis)
        if skip_empty and float(sl.max() - sl.min()) <= empty_tolerance:
            continue
        out.append((i, sl))
    return out


def assemble_volume(
    slice_maps: Sequence[np.ndarray | torch.Tensor],
    indices: Sequence[int],
    shape: Sequence[int],
    axis: int = 2,
    fill: float = 0.0,
) -> np.ndarray:
    """Put 2D maps back into a volume of ``shape`` (the input volume's shape), each at its slice ``index``
    along ``axis`` and resized (bilinear) to that slice's size; slices without a map get ``fill``.

    Args:
        slice_maps: 2D maps (``[h, w]``, or ``[1, h, w]`` / ``[1, 1, h, w]``), any size.
        indices: slice index of each map.
        shape: 3D output shape.
        axis: slicing axis used by :func:`slice_volume`.
        fill: value of slices that were skipped.

    Returns:
        float32 array of ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"assemble_volume expects a 3D shape, got {shape}")
    if len(slice_maps) != len(indices):
        raise ValueError(f"{len(slice_maps)} slice maps but {len(indices)} indices")
    axis = _axis(axis)
    plane = tuple(s for d, s in enumerate(shape) if d != axis)
    out = np.full(shape, fill, dtype=np.float32)
    for m, i in zip(slice_maps, indices):
        t = torch.as_tensor(m.detach().cpu() if isinstance(m, torch.Tensor) else np.asarray(m), dtype=torch.float32)
        t = t.reshape(t.shape[-2:])
        if tuple(t.shape) != plane:
            t = F.interpolate(t[None, None], size=plane, mode="bilinear", align_corners=False)[0, 0]
        index = [slice(None)] * 3
        index[axis] = int(i)
        out[tuple(index)] = t.numpy()
    return out


def aggregate_scores(scores: Sequence[float], reduction: str = "max") -> float:
    """Volume score from slice scores: their ``"max"`` (default) or ``"mean"``."""
    if len(scores) == 0:
        raise ValueError("no slice scores to aggregate")
    arr = np.asarray(scores, dtype=np.float64)
    if reduction == "max":
        return float(arr.max())
    if reduction == "mean":
        return float(arr.mean())
    raise ValueError(f"volume score reduction {reduction!r} is not 'max' or 'mean'")


class VolumeScore(NamedTuple):
    """Result of :func:`score_volume`."""

    score: float  #: volume score (aggregate of ``slice_scores``)
    slice_scores: dict  #: ``{slice index: image score}`` for the non-empty slices
    map_image: object  #: ``nibabel.Nifti1Image`` anomaly-map volume, input shape and affine (0 on skipped slices)


@torch.no_grad()
def score_slices(
    model: torch.nn.Module,
    slices: Sequence[np.ndarray],
    image_size: int | Sequence[int] = 256,
    slice_reduction: str = "mean",
    intensity: str = "minmax",
    percentiles: Sequence[float] = (0.5, 99.5),
    bounds: tuple[float, float] | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> tuple[list[torch.Tensor], list[float]]:
    """Run ``model`` (eval mode, returning ``[B, 1, H, W]`` maps) on 2D slices preprocessed like 2D images.

    With ``bounds=(low, high)`` every slice is scaled with the same bounds (volume-wise scaling) instead of its own.
    Returns ``(maps [h, w] at model resolution, image scores)``.
    """
    from monai_scrd.scoring import image_score

    device = torch.device(device) if device is not None else next(model.parameters()).device
    if bounds is not None:
        lo, hi = bounds
        tf = array_transforms("image", image_size, intensity="none")
    else:
        tf = array_transforms("image", image_size, intensity=intensity, percentiles=percentiles)
    model.eval()
    maps: list[torch.Tensor] = []
    scores: list[float] = []
    for start in range(0, len(slices), batch_size):
        batch = []
        for sl in slices[start : start + batch_size]:
            x = torch.as_tensor(np.ascontiguousarray(sl), dtype=torch.float32)[None]
            if bounds is not None:
                x = ((x - lo) / (hi - lo)).clamp(0, 1) if hi > lo else torch.zeros_like(x)
            batch.append(torch.as_tensor(tf({"image": x})["image"]))
        amap = model(torch.stack(batch).to(device)).float()
        maps.extend(m[0].cpu() for m in amap)
        scores.extend(float(s) for s in image_score(amap, slice_reduction).cpu())
    return maps, scores


def score_volume(
    model: torch.nn.Module,
    volume: str | os.PathLike | MedicalImage,
    image_size: int | Sequence[int] = 256,
    axis: int | None = None,
    reduction: str = "max",
    slice_reduction: str = "mean",
    intensity: str = "minmax",
    percentiles: Sequence[float] = (0.5, 99.5),
    scale_per: str = "slice",
    empty_tolerance: float = 0.0,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> VolumeScore:
    """Score a 3D volume slice by slice with a 2D model.

    Args:
        model: SCRD (or any module returning ``[B, 1, H, W]`` anomaly maps in eval mode).
        volume: path of a 3D NIfTI / multi-frame DICOM (a 2D image is scored as a one-slice volume), or a
            :class:`MedicalImage` already read with ``allow_volume=True``.
        image_size: model input size.
        axis: slicing axis; default: the file's natural one (NIfTI: 2, multi-frame DICOM: 0 = frames).
        reduction: slice scores -> volume score: ``"max"`` (default) or ``"mean"``.
        slice_reduction: map -> slice score: ``"mean"`` (paper) or ``"max"``.
        intensity, percentiles: intensity scaling to [0, 1] (see ``preprocessing_transforms``).
        scale_per: ``"slice"`` (each slice scaled on its own, like 2D training images) or ``"volume"``.
        empty_tolerance: slices whose value range is at most this are skipped (map 0, no score).
        batch_size: slices per forward pass.
        device: where to run; default: the model's device.

    Returns:
        :class:`VolumeScore` ``(score, slice_scores, map_image)``; ``map_image`` has the input's shape and affine.

    Raises:
        DataError: unreadable file, or a volume whose slices are all empty.
    """
    import nibabel as nib

    img = volume if isinstance(volume, MedicalImage) else read_medical_image(volume, allow_volume=True)
    if img.is_volume:
        vol = img.array
    else:  # 2D image: grayscale, one slice along the last axis
        vol = img.array[:3].mean(axis=0)[..., None] if img.array.shape[0] > 1 else img.array[0][..., None]
    axis = (img.slice_axis if img.is_volume else 2) if axis is None else _axis(axis)
    if scale_per not in ("slice", "volume"):
        raise ValueError(f"scale_per {scale_per!r} is not 'slice' or 'volume'")
    picked = slice_volume(vol, axis, skip_empty=True, empty_tolerance=empty_tolerance)
    if not picked:
        raise DataError(f"{img.path}: all {vol.shape[axis]} slices along axis {axis} are empty (constant)")
    indices = [i for i, _ in picked]
    bounds = intensity_bounds(vol, intensity, percentiles) if scale_per == "volume" and intensity != "none" else None
    maps, scores = score_slices(
        model, [s for _, s in picked], image_size, slice_reduction, intensity, percentiles, bounds, batch_size, device
    )
    map_vol = assemble_volume(maps, indices, vol.shape, axis)
    header = img.meta.get("header") if img.format == "nifti" else None
    map_img = nib.Nifti1Image(map_vol, img.affine)
    if header is not None:  # keep the input's orientation codes and voxel units
        map_img.set_qform(img.affine, code=int(header["qform_code"]) or 1)
        map_img.set_sform(img.affine, code=int(header["sform_code"]) or 1)
        map_img.header.set_xyzt_units(*header.get_xyzt_units())
    return VolumeScore(aggregate_scores(scores, reduction), dict(zip(indices, scores)), map_img)


def save_map_nifti(anomaly_map, affine: np.ndarray | None, path: str | os.PathLike):
    """Write a 2D/3D anomaly map (float32) to ``path`` (``.nii`` or ``.nii.gz``) with ``affine``; returns the image.

    A ``nibabel`` image (e.g. ``VolumeScore.map_image``) may be passed as ``anomaly_map`` with ``affine=None``.
    """
    import nibabel as nib

    if isinstance(anomaly_map, nib.Nifti1Image):
        img = anomaly_map
    else:
        if affine is None:
            raise ValueError("save_map_nifti needs an affine for an array map")
        arr = anomaly_map.detach().cpu().numpy() if isinstance(anomaly_map, torch.Tensor) else np.asarray(anomaly_map)
        img = nib.Nifti1Image(arr.astype(np.float32), np.asarray(affine, dtype=np.float64))
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    nib.save(img, path)
    return img
