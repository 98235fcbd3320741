"""Reading any supported input: ``read_medical_image`` (DICOM file or series folder, NIfTI, PNG/JPEG/BMP/TIFF), the
listing of inputs under a folder, and MONAI transforms and ``ImageReader`` over them. Every failure is a one-line
:class:`~monai_scrd.data.errors.DataError` that starts with the file path."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data.image_reader import ImageReader, PILReader
from monai.transforms import MapTransform, Transform

from monai_scrd.data.dicom import dicom_affine, is_dicom_series_folder, read_dicom, read_dicom_series
from monai_scrd.data.errors import ConfigError, DataError, one_line
from monai_scrd.data.formats import IMAGE_EXTENSIONS, detect_format, is_image_file
from monai_scrd.data.image import MedicalImage, check_2d, check_pixels, check_values, volume_refused

__all__ = [
    "MedicalImage",
    "read_medical_image",
    "read_dicom_series",
    "dicom_affine",
    "is_dicom_series_folder",
    "list_image_inputs",
    "LoadMedicalImage",
    "LoadMedicalImaged",
    "MedicalImageReader",
]


# ------------------------------------------------------------------------------------------------------------ inputs
def list_image_inputs(root: str | os.PathLike) -> list[str]:
    """Everything to score under ``root``, searched recursively (hidden files and folders left out): each DICOM series
    folder (:func:`is_dicom_series_folder`) as one entry, and every other file that has an image extension or none.

    A series folder that also holds other images (PNG, NIfTI...) gives those images as entries of their own, so they
    are scored; the folder entry itself then fails to read as a series (one error naming a file that is not part of
    it), since a series is read as a volume only from a folder of its own."""
    root = os.fspath(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files = [os.path.join(dirpath, n) for n in sorted(filenames)
                 if not n.startswith(".") and (is_image_file(n) or os.path.splitext(n)[1] == "")]
        if is_dicom_series_folder(dirpath):
            out.append(dirpath)
            out += [f for f in files if os.path.isfile(f) and detect_format(f) in ("nifti", "pil")]
            continue
        out += files
    return sorted(out)


# ----------------------------------------------------------------------------------------------------------- NIfTI
def _read_nifti(path: str, allow_volume: bool) -> MedicalImage:
    import nibabel as nib

    try:
        # nib.load, not MONAI's NibabelReader.read: that rewrites the sform/qform when pixdim disagrees with the affine
        # (correct_nifti_header_if_necessary), which would change the affine. The data stays a lazy proxy either way.
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
    check_pixels(path, shape[:ndim], "NIfTI image")  # from the header, before the data block is read
    try:  # float32 as nibabel scales it (NibabelReader.get_data returns the stored dtype)
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # truncated data block
        raise DataError(f"{path}: unreadable NIfTI data ({one_line(e)})") from e
    data = check_values(path, data.reshape(shape[:ndim]))
    affine = np.asarray(img.affine, dtype=np.float64)
    meta = {"header": img.header, "dtype": str(img.get_data_dtype())}
    if ndim == 3:
        if not allow_volume:
            raise volume_refused(path, shape[:3], "NIfTI volume")
        return MedicalImage(data, affine, True, "nifti", path, slice_axis=2, meta=meta)
    check_2d(path, data, "NIfTI image")
    return MedicalImage(data[None], affine, False, "nifti", path, meta=meta)


# ----------------------------------------------------------------------------------------------------------- PIL
# MONAI's PILReader opens lazily (Image.open), so the size is checked before the pixels are decoded; rows first
# (reverse_indexing=False). By hand, as PILReader has none of them: page count, pixel budget, mode normalisation.
_PIL_READER = PILReader(reverse_indexing=False)


def _read_pil(path: str) -> MedicalImage:
    from PIL import Image, UnidentifiedImageError

    try:
        with _PIL_READER.read(path) as im:
            n_frames = int(getattr(im, "n_frames", 1) or 1)
            if n_frames > 1:
                raise DataError(f"{path}: image file holds {n_frames} pages/frames; expected a single 2D image")
            check_pixels(path, (im.height, im.width), "image")
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
            arr = _PIL_READER.get_data(im)[0]
    except (DataError, ConfigError):
        raise
    except UnidentifiedImageError as e:
        raise DataError(f"{path}: not a readable image (cannot identify image file)") from e
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: image too large ({one_line(e)})") from e
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data
        raise DataError(f"{path}: truncated or corrupt image file ({one_line(e)})") from e
    arr = check_values(path, arr)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3:
        arr = np.moveaxis(arr, -1, 0)
    else:
        raise DataError(f"{path}: image array of shape {tuple(arr.shape)} is not 2D")
    check_2d(path, arr, "image")
    return MedicalImage(arr, np.eye(4), False, "pil", path, meta={"mode": mode})


def read_medical_image(path: str | os.PathLike, allow_volume: bool = False, apply_voi: bool = True) -> MedicalImage:
    """Read and validate one DICOM, NIfTI or PNG/JPEG/BMP/TIFF file, or a DICOM series folder.

    Args:
        path: the file; the format comes from the extension or, for other names, from the first bytes. A folder is
            read as one DICOM series (:func:`read_dicom_series`).
        allow_volume: return 3D volumes (3D NIfTI, multi-frame DICOM, DICOM series) instead of refusing them.
        apply_voi: apply a DICOM VOI LUT or window centre/width when the file has one.

    Returns:
        :class:`MedicalImage`; its array, before any resizing or intensity scaling:

        * 2D images: ``[C, H, W]`` float32 with ``C`` = 1 (grayscale), 3 (RGB) or 4 (RGBA), rows first (no transpose,
          unlike MONAI's default ``PILReader``). DICOM values are *modality* values (RescaleSlope/Intercept applied,
          e.g. Hounsfield units), then the VOI LUT or window centre/width when the file has one, then MONOCHROME1
          inverted so that bright = high. 2D NIfTI keeps nibabel's axis order ``[1, X, Y]``.
        * 3D volumes (NIfTI, multi-frame DICOM, DICOM series folders), only when ``allow_volume=True``: ``[X, Y, Z]``
          float32 in the file's own axis order (NIfTI: nibabel voxel order, affine from the file; multi-frame DICOM:
          ``[frame, row, column]``; DICOM series: ``[row, column, slice]``, slices ordered along the slice normal).
          DICOM volume affines are RAS, like NIfTI's (DICOM's LPS patient coordinates with x and y negated), so maps
          written as NIfTI lie over the study in viewers such as 3D Slicer.

    Raises:
        DataError: missing/empty/unreadable/truncated file, unknown format, NaN/Inf pixels, wrong dimensionality,
            a volume when ``allow_volume`` is False, or a folder that is not one clean DICOM series. The message
            names ``path``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if os.path.isdir(path):
        if not allow_volume:
            raise DataError(
                f"{path}: is a folder, not an image file (a DICOM series folder is a 3D volume: score it slice by "
                "slice, monai_scrd.scoring.Scorer, or read it with allow_volume=True)"
            )
        return read_dicom_series(path, apply_voi)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise DataError(f"{path}: cannot access file ({one_line(e)})") from e
    if size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    fmt = detect_format(path)
    try:
        if fmt == "dicom":
            return read_dicom(path, allow_volume, apply_voi)
        if fmt == "nifti":
            return _read_nifti(path, allow_volume)
        if fmt == "pil":
            return _read_pil(path)
    except (DataError, ConfigError):
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
    """MONAI ``ImageReader`` over :func:`read_medical_image`, for ``LoadImage(reader=MedicalImageReader())``; with
    ``allow_volume=True`` it also reads a DICOM series folder (:func:`read_dicom_series`).

    2D images come out channel-first (``original_channel_dim=0``); volumes without channel (``"no_channel"``).
    """

    def __init__(self, allow_volume: bool = False, apply_voi: bool = True) -> None:
        super().__init__()
        self.allow_volume = allow_volume
        self.apply_voi = apply_voi

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(is_image_file(n) or os.path.isdir(n) for n in names)

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
