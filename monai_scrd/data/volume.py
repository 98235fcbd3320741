"""Slices of 3D volumes (NIfTI, multi-frame DICOM) for a 2D model, and 2D maps put back into a volume.

The scorer (:class:`monai_scrd.scoring.Scorer`) cuts a volume into its non-empty slices with :func:`slice_volume`,
scores them like 2D images and stacks their maps into a map volume with :func:`assemble_volume`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["slice_volume", "assemble_volume"]


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
