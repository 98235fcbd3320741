"""Slices of 3D volumes (NIfTI, multi-frame DICOM) for a 2D model, and 2D maps put back into a volume.

The scorer (:class:`monai_scrd.scoring.Scorer`) cuts a volume into its non-empty slices with :func:`slice_volume`,
scores them like 2D images and stacks their maps into a map volume with :func:`assemble_volume`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["is_empty", "check_not_constant", "slice_volume", "assemble_volume"]


def _axis(axis: int, ndim: int = 3) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"slice axis {axis} is out of range for a {ndim}D volume")
    return axis % ndim


def is_empty(array: np.ndarray | torch.Tensor, tolerance: float = 0.0, channel_axis: int | None = None) -> bool:
    """Whether ``array`` holds nothing to score: its value range (max - min) is at most ``tolerance`` (every pixel the
    same value: all background / zero padding). The one rule for empty volume slices (:func:`slice_volume`) and
    constant 2D images (``channel_axis``: each channel is checked on its own, so a flat colour is empty too)."""
    arr = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if arr.size == 0:
        return True
    if channel_axis is None:
        return float(arr.max() - arr.min()) <= tolerance
    flat = np.moveaxis(arr, channel_axis, 0).reshape(arr.shape[channel_axis], -1)
    return bool(np.all(flat.max(axis=1) - flat.min(axis=1) <= tolerance))


def check_not_constant(path: str, array: np.ndarray | torch.Tensor, channel_axis: int = 0) -> None:
    """Refuse a constant 2D image (``[C, H, W]``, see :func:`is_empty`): one line naming ``path`` and its value, the
    same for training's file check and for scoring.

    Raises:
        DataError: every pixel of every channel has the same value.
    """
    if not is_empty(array, channel_axis=channel_axis):
        return
    from monai_scrd.data.errors import DataError

    arr = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    values = [float(v) for v in np.moveaxis(arr, channel_axis, 0).reshape(arr.shape[channel_axis], -1)[:, 0]]
    value = f"{values[0]:g}" if len(set(values)) == 1 else "(" + ", ".join(f"{v:g}" for v in values) + ")"
    raise DataError(f"{path}: image is constant (every pixel {value}): nothing to score")


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
        if skip_empty and is_empty(sl, empty_tolerance):
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
