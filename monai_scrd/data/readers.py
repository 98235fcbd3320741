"""Validating readers for DICOM (pydicom), NIfTI (nibabel) and PNG/JPEG/BMP/TIFF (PIL), as a function, MONAI transforms
and a MONAI ``ImageReader``.

Every failure is a :class:`~monai_scrd.data.errors.DataError` whose one-line message starts with the file path.

Array conventions (what the readers return, before any resizing or intensity scaling):

* 2D images: ``[C, H, W]`` float32 with ``C`` = 1 (grayscale), 3 (RGB) or 4 (RGBA), rows first (no transpose, unlike
  MONAI's ``PILReader``). DICOM values are *modality* values (RescaleSlope/Intercept applied, e.g. Hounsfield units),
  then the VOI LUT or window centre/width when the file has one, then MONOCHROME1 inverted so that bright = high.
  2D NIfTI keeps nibabel's axis order ``[1, X, Y]``.
* 3D volumes (NIfTI, multi-frame DICOM), only when ``allow_volume=True``: ``[X, Y, Z]`` float32 in the file's own
  axis order (NIfTI: nibabel voxel order, affine from the file; multi-frame DICOM: ``[frame, row, column]``).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data.image_reader import ImageReader
from monai.transforms import MapTransform, Transform

from monai_scrd.data.errors import DataError, one_line
from monai_scrd.data.formats import IMAGE_EXTENSIONS, detect_format, is_image_file

__all__ = ["MedicalImage", "read_medical_image", "LoadMedicalImage", "LoadMedicalImaged", "MedicalImageReader"]


@dataclass
class MedicalImage:
    """A loaded, validated image.

    Attributes:
        array: float32, ``[C, H, W]`` for a 2D image or ``[X, Y, Z]`` for a volume (see module docstring).
        affine: 4x4 voxel-to-world matrix (NIfTI: the file's; DICOM: pixel spacing on the diagonal; PNG/JPEG: identity).
        is_volume: whether ``array`` is a 3D volume without channel axis.
        format: ``"dicom"``, ``"nifti"`` or ``"pil"``.
        path: the file read.
        slice_axis: the natural axis to slice a volume along (NIfTI: 2, multi-frame DICOM: 0 = frames).
        meta: extra information (photometric interpretation, original dtype/mode, header of a NIfTI file, ...).
    """

    array: np.ndarray
    affine: np.ndarray
    is_volume: bool
    format: str
    path: str
    slice_axis: int = 2
    meta: dict = field(default_factory=dict)


def _check_values(path: str, arr: np.ndarray) -> np.ndarray:
    if arr.size == 0:
        raise DataError(f"{path}: image is empty (shape {tuple(arr.shape)})")
    arr = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(arr.size - finite.sum() - n_nan)
        raise DataError(f"{path}: {n_nan} NaN and {n_inf} Inf pixel values; images must hold finite numbers")
    return arr


def _check_2d(path: str, arr: np.ndarray, what: str) -> None:
    h, w = arr.shape[-2:]
    if h < 2 or w < 2:
        raise DataError(f"{path}: {what} of size {h}x{w} is too small (need at least 2x2 pixels)")


def _volume_refused(path: str, shape: tuple, what: str) -> DataError:
    return DataError(
        f"{path}: {what} of shape {shape} is a 3D volume, not a 2D image; score it slice by slice "
        "(monai_scrd.scoring.Scorer) or read it with allow_volume=True"
    )


# ----------------------------------------------------------------------------------------------------------- DICOM
def _read_dicom(path: str, allow_volume: bool, apply_voi: bool) -> MedicalImage:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as e:
        raise DataError(f"{path}: not a DICOM file (missing preamble)") from e
    except Exception as e:  # truncated header, bad element lengths, ...
        raise DataError(f"{path}: unreadable DICOM header ({one_line(e)})") from e
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(
            f"{path}: DICOM file has no pixel data (truncated, or not an image object; SOP class {ds.get('SOPClassUID', 'unknown')})"
        )
    try:
        arr = ds.pixel_array
    except Exception as e:  # truncated pixel data, unsupported transfer syntax, missing decoder plugin
        raise DataError(f"{path}: unreadable DICOM pixel data ({one_line(e)})") from e
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    meta = {"photometric": photometric, "frames": frames, "samples_per_pixel": spp, "dtype": str(arr.dtype)}
    expected_ndim = 2 + (frames > 1) + (spp > 1)
    if arr.ndim != expected_ndim:
        raise DataError(
            f"{path}: DICOM pixel array of shape {tuple(arr.shape)} does not fit NumberOfFrames={frames}, SamplesPerPixel={spp}"
        )
    if spp == 1:
        try:
            arr = apply_modality_lut(arr, ds)
            if apply_voi and ("VOILUTSequence" in ds or "WindowCenter" in ds):
                arr = apply_voi_lut(arr, ds, index=0)
                meta["voi_applied"] = True
        except Exception as e:
            raise DataError(f"{path}: invalid DICOM rescale/VOI LUT/window attributes ({one_line(e)})") from e
        arr = _check_values(path, arr)
        if photometric == "MONOCHROME1":  # bright = low values: invert within the value range
            arr = (arr.max() + arr.min()) - arr
    elif spp in (3, 4):
        arr = _check_values(path, arr)
        arr = np.moveaxis(arr, -1, -3)  # [..., R, C, S] -> [..., S, R, C]
    else:
        raise DataError(f"{path}: DICOM with SamplesPerPixel={spp} is not supported (expected 1 or 3)")
    spacing = [float(v) for v in ds.get("PixelSpacing", [1.0, 1.0])] if "PixelSpacing" in ds else [1.0, 1.0]
    if frames > 1:
        if spp != 1:
            raise DataError(f"{path}: multi-frame colour DICOM ({frames} frames of {spp} samples) is not supported")
        if not allow_volume:
            raise _volume_refused(path, tuple(arr.shape), f"multi-frame DICOM ({frames} frames)")
        thickness = float(ds.get("SpacingBetweenSlices", ds.get("SliceThickness", 1.0)) or 1.0)
        affine = np.diag([thickness, spacing[0], spacing[1], 1.0])
        _check_2d(path, arr, "DICOM frame")
        return MedicalImage(arr, affine, True, "dicom", path, slice_axis=0, meta=meta)
    if arr.ndim == 2:
        arr = arr[None]
    _check_2d(path, arr, "DICOM image")
    affine = np.diag([spacing[0], spacing[1], 1.0, 1.0])
    return MedicalImage(arr, affine, False, "dicom", path, meta=meta)


# ----------------------------------------------------------------------------------------------------------- NIfTI
def _read_nifti(path: str, allow_volume: bool) -> MedicalImage:
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as e:  # ImageFileError, truncated gzip, wrong magic, ...
        raise DataError(f"{path}: not a readable NIfTI file, or truncated ({one_line(e)})") from e
    shape = tuple(int(s) for s in img.shape)
    if img.get_data_dtype().fields is not None:
        raise DataError(f"{path}: NIfTI with structured (e.g. RGB) voxels is not supported; store one channel")
    ndim = len(shape)
    while ndim > 3 and shape[ndim - 1] == 1:  # drop trailing singleton dimensions (e.g. X, Y, Z, 1)
        ndim -= 1
    if ndim == 3 and shape[2] == 1:
        ndim = 2
    if ndim not in (2, 3):
        raise DataError(f"{path}: NIfTI array of shape {shape} is {len(shape)}D; expected a 2D image or a 3D volume")
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # truncated data block
        raise DataError(f"{path}: unreadable NIfTI data ({one_line(e)})") from e
    data = _check_values(path, data.reshape(shape[:ndim]))
    affine = np.asarray(img.affine, dtype=np.float64)
    meta = {"header": img.header, "dtype": str(img.get_data_dtype())}
    if ndim == 3:
        if not allow_volume:
            raise _volume_refused(path, shape[:3], "NIfTI volume")
        return MedicalImage(data, affine, True, "nifti", path, slice_axis=2, meta=meta)
    _check_2d(path, data, "NIfTI image")
    return MedicalImage(data[None], affine, False, "nifti", path, meta=meta)


# ----------------------------------------------------------------------------------------------------------- PIL
def _read_pil(path: str) -> MedicalImage:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            n_frames = int(getattr(im, "n_frames", 1) or 1)
            if n_frames > 1:
                raise DataError(f"{path}: image file holds {n_frames} pages/frames; expected a single 2D image")
            im.load()
            mode = im.mode
            if mode in ("P", "PA"):
                im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
            elif mode == "1":
                im = im.convert("L")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif mode.startswith("I;16"):
                im = im.convert("I")  # 16-bit grayscale, any byte order, as int32
            arr = np.asarray(im)
    except DataError:
        raise
    except UnidentifiedImageError as e:
        raise DataError(f"{path}: not a readable image (cannot identify image file)") from e
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: image too large ({one_line(e)})") from e
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data
        raise DataError(f"{path}: truncated or corrupt image file ({one_line(e)})") from e
    arr = _check_values(path, arr)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3:
        arr = np.moveaxis(arr, -1, 0)
    else:
        raise DataError(f"{path}: image array of shape {tuple(arr.shape)} is not 2D")
    _check_2d(path, arr, "image")
    return MedicalImage(arr, np.eye(4), False, "pil", path, meta={"mode": mode})


def read_medical_image(path: str | os.PathLike, allow_volume: bool = False, apply_voi: bool = True) -> MedicalImage:
    """Read and validate one DICOM, NIfTI or PNG/JPEG/BMP/TIFF file.

    Args:
        path: the file; the format comes from the extension or, for other names, from the first bytes.
        allow_volume: return 3D volumes (3D NIfTI, multi-frame DICOM) instead of refusing them.
        apply_voi: apply a DICOM VOI LUT or window centre/width when the file has one.

    Raises:
        DataError: missing/empty/unreadable/truncated file, unknown format, NaN/Inf pixels, wrong dimensionality,
            or a volume when ``allow_volume`` is False. The message names ``path``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, not an image file")
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise DataError(f"{path}: cannot access file ({one_line(e)})") from e
    if size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    fmt = detect_format(path)
    try:
        if fmt == "dicom":
            return _read_dicom(path, allow_volume, apply_voi)
        if fmt == "nifti":
            return _read_nifti(path, allow_volume)
        if fmt == "pil":
            return _read_pil(path)
    except DataError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # anything a decoder throws that the format readers did not expect
        raise DataError(f"{path}: unreadable {fmt} file ({type(e).__name__}: {one_line(e)})") from e
    raise DataError(
        f"{path}: unknown image format (supported: {', '.join(IMAGE_EXTENSIONS)}; no DICOM/PNG/JPEG/NIfTI signature found)"
    )


# ----------------------------------------------------------------------------------------------------------- MONAI
def _to_metatensor(img: MedicalImage):
    import torch
    from monai.data import MetaTensor

    meta = {
        "filename_or_obj": img.path,
        "format": img.format,
        "is_volume": img.is_volume,
        "slice_axis": img.slice_axis,
        "original_affine": img.affine,
        "spatial_shape": np.asarray(img.array.shape if img.is_volume else img.array.shape[1:]),
    }
    meta.update({k: v for k, v in img.meta.items() if k != "header"})
    if img.is_volume:
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(img.array))[None], affine=torch.as_tensor(img.affine), meta=meta)
    aff2d = img.affine[np.ix_([0, 1, 3], [0, 1, 3])]
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(img.array)), affine=torch.as_tensor(aff2d), meta=meta)


class LoadMedicalImage(Transform):
    """Load and validate a file into a channel-first ``MetaTensor`` (``[C, H, W]``; volumes ``[1, X, Y, Z]``).

    Args:
        allow_volume: accept 3D volumes (otherwise they raise :class:`DataError` pointing to the slice-wise scorer).
        apply_voi: apply DICOM VOI LUT / windowing when present.
    """

    def __init__(self, allow_volume: bool = False, apply_voi: bool = True) -> None:
        self.allow_volume = allow_volume
        self.apply_voi = apply_voi

    def __call__(self, path: str | os.PathLike):
        return _to_metatensor(read_medical_image(path, self.allow_volume, self.apply_voi))


class LoadMedicalImaged(MapTransform):
    """Dictionary version of :class:`LoadMedicalImage`: replaces each path under ``keys`` with the loaded image."""

    def __init__(
        self, keys: KeysCollection, allow_volume: bool = False, apply_voi: bool = True, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadMedicalImage(allow_volume, apply_voi)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


class MedicalImageReader(ImageReader):
    """MONAI ``ImageReader`` over :func:`read_medical_image`, for ``LoadImage(reader=MedicalImageReader())``.

    2D images come out channel-first (``original_channel_dim=0``); volumes without channel (``"no_channel"``).
    """

    def __init__(self, allow_volume: bool = False, apply_voi: bool = True) -> None:
        super().__init__()
        self.allow_volume = allow_volume
        self.apply_voi = apply_voi

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(is_image_file(n) for n in names)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs):
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        imgs = [read_medical_image(n, self.allow_volume, self.apply_voi) for n in names]
        return imgs if len(imgs) > 1 else imgs[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        imgs = img if isinstance(img, (list, tuple)) else [img]
        if len(imgs) > 1:
            raise DataError(f"{imgs[0].path}: MedicalImageReader reads one file at a time ({len(imgs)} given)")
        m = imgs[0]
        from monai.utils import MetaKeys

        if m.is_volume:
            affine, spatial = m.affine, m.array.shape
            channel_dim: Any = "no_channel"
        else:
            affine, spatial = m.affine[np.ix_([0, 1, 3], [0, 1, 3])], m.array.shape[1:]
            channel_dim = 0
        meta = {
            MetaKeys.AFFINE: affine.copy(),
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(spatial),
            MetaKeys.ORIGINAL_CHANNEL_DIM: channel_dim,
            "format": m.format,
        }
        return m.array, meta
