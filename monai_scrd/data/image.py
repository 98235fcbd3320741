"""The loaded image (:class:`MedicalImage`) and the checks every format's reader applies: pixel budget before decoding,
finite values, minimum size. Shared by :mod:`~monai_scrd.data.readers` and :mod:`~monai_scrd.data.dicom`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from monai_scrd.data.errors import ConfigError, DataError

__all__ = ["MedicalImage", "MAX_PIXELS", "max_pixels"]

MAX_PIXELS = 2**27  # pixels (voxels) of one file or series, checked from the header before decoding


@dataclass
class MedicalImage:
    """A loaded, validated image.

    Attributes:
        array: float32, ``[C, H, W]`` for a 2D image or ``[X, Y, Z]`` for a volume (see
            :func:`~monai_scrd.data.readers.read_medical_image`).
        affine: 4x4 voxel-to-world matrix (NIfTI: the file's; DICOM series and multi-frame DICOM with orientation:
            the patient geometry in RAS (:func:`~monai_scrd.data.dicom.dicom_affine`); other DICOM: pixel spacing on
            the diagonal; PNG/JPEG: identity).
        is_volume: whether ``array`` is a 3D volume without channel axis.
        format: ``"dicom"``, ``"nifti"`` or ``"pil"``.
        path: the file read.
        slice_axis: the natural axis to slice a volume along (NIfTI and DICOM series: 2, multi-frame DICOM: 0 = frames).
        meta: extra information (photometric interpretation, original dtype/mode, header of a NIfTI file, ...).
    """

    array: np.ndarray
    affine: np.ndarray
    is_volume: bool
    format: str
    path: str
    slice_axis: int = 2
    meta: dict = field(default_factory=dict)


def max_pixels(environ: Mapping[str, str] | None = None) -> int:
    """The pixel budget: ``$SCRD_MAX_PIXELS`` when set (0: none), else :data:`MAX_PIXELS` (134 million).

    Raises:
        ConfigError: the variable is not a whole number >= 0 (one line naming it: the setting is at fault, not the
            image being read).
    """
    value = (os.environ if environ is None else environ).get("SCRD_MAX_PIXELS", "").strip()
    if not value:
        return MAX_PIXELS
    try:
        budget = int(value.replace("_", ""))
    except ValueError:
        budget = -1
    if budget < 0:
        raise ConfigError(f"environment variable SCRD_MAX_PIXELS {value!r}: must be a whole number of pixels >= 0 "
                          f"(0: no limit; unset: {MAX_PIXELS:,})")
    return budget


def check_pixels(path: str, shape: Sequence[int], what: str) -> None:
    """Refuse, before decoding, a file whose header announces more pixels than the budget (MONAI's readers decode
    whatever size the header announces)."""
    n = int(np.prod([int(s) for s in shape], dtype=np.float64))
    budget = max_pixels()
    if budget and n > budget:
        raise DataError(f"{path}: {what} of {' x '.join(str(int(s)) for s in shape)} = {n:,} pixels is over the pixel "
                        f"budget of {budget:,} (set SCRD_MAX_PIXELS to allow more)")


def check_values(path: str, arr: np.ndarray) -> np.ndarray:
    """``arr`` as float32; a one-line :class:`DataError` naming ``path`` when it is empty or holds NaN/Inf."""
    if arr.size == 0:
        raise DataError(f"{path}: image is empty (shape {tuple(arr.shape)})")
    arr = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(arr.size - finite.sum() - n_nan)
        raise DataError(f"{path}: {n_nan} NaN and {n_inf} Inf pixel values; images must hold finite numbers")
    return arr


def check_2d(path: str, arr: np.ndarray, what: str) -> None:
    """A one-line :class:`DataError` when the last two axes of ``arr`` are not at least 2x2."""
    h, w = arr.shape[-2:]
    if h < 2 or w < 2:
        raise DataError(f"{path}: {what} of size {h}x{w} is too small (need at least 2x2 pixels)")


def volume_refused(path: str, shape: tuple, what: str) -> DataError:
    """The error for a 3D volume read where a 2D image is expected."""
    return DataError(
        f"{path}: {what} of shape {shape} is a 3D volume, not a 2D image; score it slice by slice "
        "(monai_scrd.scoring.Scorer) or read it with allow_volume=True"
    )
