"""File-format detection by extension and magic bytes (standard library only, so the datalist builder starts fast)."""

from __future__ import annotations

import os

__all__ = ["IMAGE_EXTENSIONS", "DICOM_EXTENSIONS", "NIFTI_EXTENSIONS", "PIL_EXTENSIONS", "detect_format", "is_image_file"]

DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
PIL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGE_EXTENSIONS = DICOM_EXTENSIONS + NIFTI_EXTENSIONS + PIL_EXTENSIONS


def _ext(path: str) -> str:
    low = path.lower()
    return ".nii.gz" if low.endswith(".nii.gz") else os.path.splitext(low)[1]


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has one of the supported image extensions (case-insensitive)."""
    return _ext(os.fspath(path)) in IMAGE_EXTENSIONS


def detect_format(path: str | os.PathLike) -> str:
    """``"dicom"``, ``"nifti"`` or ``"pil"`` from the extension; for other names, from the first bytes of the file.

    Returns ``"unknown"`` when neither tells (the caller reports the error). Does not check the file is valid.
    """
    path = os.fspath(path)
    ext = _ext(path)
    if ext in DICOM_EXTENSIONS:
        return "dicom"
    if ext in NIFTI_EXTENSIONS:
        return "nifti"
    if ext in PIL_EXTENSIONS:
        return "pil"
    try:
        with open(path, "rb") as f:
            head = f.read(352)
    except OSError:
        return "unknown"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff" or head[:2] == b"BM" or head[:4] in (b"II*\x00", b"MM\x00*"):
        return "pil"
    if len(head) >= 348 and (head[344:348] in (b"n+1\x00", b"ni1\x00", b"n+2\x00", b"ni2\x00")):
        return "nifti"
    return "unknown"
