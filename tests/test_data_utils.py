"""Helpers (no tests): builders of small real DICOM / NIfTI / PNG files for the data tests (nothing downloaded)."""

from __future__ import annotations

import numpy as np


def make_dicom(
    path,
    stored: np.ndarray,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    pixel_spacing: tuple[float, float] | None = None,
) -> str:
    """Write a minimal, valid DICOM (explicit VR little endian, 16-bit unsigned); ``stored`` is ``[R, C]`` or
    ``[F, R, C]`` (multi-frame)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    stored = np.asarray(stored, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientName = "Test^Synthetic"
    ds.Rows, ds.Columns = int(stored.shape[-2]), int(stored.shape[-1])
    if stored.ndim == 3:
        ds.NumberOfFrames = int(stored.shape[0])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept if intercept is not None else 0
        ds.RescaleType = "HU"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    ds.PixelData = stored.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def make_nifti(path, data: np.ndarray, affine: np.ndarray | None = None) -> str:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine)
    nib.save(img, str(path))
    return str(path)


def make_png(path, arr: np.ndarray, mode: str | None = None) -> str:
    from PIL import Image

    img = Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)
    img.save(str(path))
    return str(path)


AFFINE = np.array(
    [[0.0, -0.9, 0.0, 40.0], [1.2, 0.0, 0.0, -30.0], [0.0, 0.0, 2.5, 12.0], [0.0, 0.0, 0.0, 1.0]]
)  # rotated, anisotropic, shifted: a non-identity affine


def tiny_model():
    """A small random SCRD (no download); eval mode returns [B, 1, H, W] maps."""
    import torch

    from monai_scrd.networks import SCRD

    torch.manual_seed(0)
    return SCRD("resnet18", pretrained=False).eval()
