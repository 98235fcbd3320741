"""Validating readers for DICOM (pydicom), NIfTI (nibabel) and PNG/JPEG/BMP/TIFF (PIL), as a function, MONAI transforms
and a MONAI ``ImageReader``.

Every failure is a :class:`~monai_scrd.data.errors.DataError` whose one-line message starts with the file path.

Array conventions (what the readers return, before any resizing or intensity scaling):

* 2D images: ``[C, H, W]`` float32 with ``C`` = 1 (grayscale), 3 (RGB) or 4 (RGBA), rows first (no transpose, unlike
  MONAI's ``PILReader``). DICOM values are *modality* values (RescaleSlope/Intercept applied, e.g. Hounsfield units),
  then the VOI LUT or window centre/width when the file has one, then MONOCHROME1 inverted so that bright = high.
  2D NIfTI keeps nibabel's axis order ``[1, X, Y]``.
* 3D volumes (NIfTI, multi-frame DICOM, DICOM series folders), only when ``allow_volume=True``: ``[X, Y, Z]`` float32
  in the file's own axis order (NIfTI: nibabel voxel order, affine from the file; multi-frame DICOM:
  ``[frame, row, column]``; DICOM series: ``[row, column, slice]``, slices ordered along the slice normal). DICOM
  volume affines are RAS, like NIfTI's (DICOM's LPS patient coordinates with x and y negated), so maps written as
  NIfTI lie over the study in viewers such as 3D Slicer.
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

from monai_scrd.data.errors import ConfigError, DataError, one_line
from monai_scrd.data.formats import IMAGE_EXTENSIONS, detect_format, is_image_file

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


@dataclass
class MedicalImage:
    """A loaded, validated image.

    Attributes:
        array: float32, ``[C, H, W]`` for a 2D image or ``[X, Y, Z]`` for a volume (see module docstring).
        affine: 4x4 voxel-to-world matrix (NIfTI: the file's; DICOM series and multi-frame DICOM with orientation:
            the patient geometry in RAS (:func:`dicom_affine`); other DICOM: pixel spacing on the diagonal;
            PNG/JPEG: identity).
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
# Slice positions count as evenly spaced when every gap is within 1 % (and at least 0.01 mm) of the nominal spacing:
# DICOM stores positions as decimal strings, often rounded to 0.01 mm or coarser.
SPACING_RTOL = 0.01
SPACING_ATOL = 0.01


MAX_PIXELS = 2**27  # pixels (voxels) of one file or series, checked from the header before decoding


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


def _check_pixels(path: str, shape: Sequence[int], what: str) -> None:
    """Refuse, before decoding, a file whose header announces more pixels than the budget."""
    n = int(np.prod([int(s) for s in shape], dtype=np.float64))
    budget = max_pixels()
    if budget and n > budget:
        raise DataError(f"{path}: {what} of {' x '.join(str(int(s)) for s in shape)} = {n:,} pixels is over the pixel "
                        f"budget of {budget:,} (set SCRD_MAX_PIXELS to allow more)")


def _dcmread(path: str, **kwargs):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError as e:
        raise DataError(f"{path}: not a DICOM file (missing preamble)") from e
    except Exception as e:  # truncated header, bad element lengths, ...
        raise DataError(f"{path}: unreadable DICOM header ({one_line(e)})") from e


def _sop_class(ds) -> str:
    uid = ds.get("SOPClassUID")
    return f"SOP class {getattr(uid, 'name', None) or uid}" if uid else "no SOP class"


def _pixel_array(ds, path: str) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(f"{path}: DICOM file has no pixel data (truncated, or not an image object; {_sop_class(ds)})")
    try:
        return ds.pixel_array
    except Exception as e:  # truncated pixel data, unsupported transfer syntax, missing decoder plugin
        raise DataError(f"{path}: unreadable DICOM pixel data ({one_line(e)})") from e


def _grayscale_values(ds, arr: np.ndarray, path: str, apply_voi: bool, meta: dict) -> np.ndarray:
    """Modality values (RescaleSlope/Intercept or modality LUT), then the VOI LUT or window when asked and present.
    MONOCHROME1 is inverted by the caller (over the image's or the whole series' value range)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        arr = apply_modality_lut(arr, ds)
        if apply_voi and ("VOILUTSequence" in ds or "WindowCenter" in ds):
            arr = apply_voi_lut(arr, ds, index=0)
            meta["voi_applied"] = True
    except Exception as e:
        raise DataError(f"{path}: invalid DICOM rescale/VOI LUT/window attributes ({one_line(e)})") from e
    return _check_values(path, arr)


def _numbers(where: str, name: str, value, count: int) -> np.ndarray:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: {name} is {value!r}; expected {count} numbers") from e
    if out.shape != (count,) or not np.isfinite(out).all():
        raise DataError(f"{where}: {name} is {list(value)}; expected {count} finite numbers")
    return out


def _group_value(group, sequence: str, name: str):
    """``name`` in the first item of ``sequence`` of one functional group (None when absent)."""
    items = group.get(sequence) or []
    return items[0].get(name) if items and name in items[0] else None


def _geometry_value(ds, sequence: str, name: str):
    """A geometry attribute at the top level of the file, else in the shared functional group, else in the first
    frame's group (enhanced multi-frame files keep PixelSpacing, ImageOrientationPatient... there); None when absent."""
    if name in ds:
        return ds.get(name)
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    groups = list(shared[:1]) + list(per_frame[:1])
    return next((v for v in (_group_value(g, sequence, name) for g in groups) if v is not None), None)


def _orientation(where: str, value) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row direction, column direction and slice normal (unit vectors, DICOM patient space LPS) from
    ImageOrientationPatient."""
    iop = _numbers(where, "ImageOrientationPatient", value, 6)
    row_dir, col_dir = iop[:3], iop[3:]
    unit = abs(np.linalg.norm(row_dir) - 1) <= 1e-3 and abs(np.linalg.norm(col_dir) - 1) <= 1e-3
    if not unit or abs(row_dir @ col_dir) > 1e-3:
        raise DataError(f"{where}: ImageOrientationPatient {iop.tolist()} is not two orthogonal unit vectors")
    normal = np.cross(row_dir, col_dir)
    return row_dir, col_dir, normal / np.linalg.norm(normal)


def _slice_thickness(ds) -> float:
    for name in ("SpacingBetweenSlices", "SliceThickness"):
        value = _geometry_value(ds, "PixelMeasuresSequence", name)
        try:
            if value is not None and float(value) > 0:
                return float(value)
        except (TypeError, ValueError):
            pass
    return 1.0


def _even_step(where: str, positions: np.ndarray, normal: np.ndarray, labels: Sequence[str], what: str) -> np.ndarray:
    """Step vector between consecutive slice positions (``[n, 3]``, n >= 2, in volume order, either direction along
    ``normal``). Raises a one-line :class:`DataError` for slices at the same position, missing slices, uneven spacing
    and positions off one line. ``labels`` name the slices in messages (file names, ``frame 3``)."""
    dist = positions @ normal
    gaps = np.diff(dist)
    if (gaps < -SPACING_ATOL).any() and (gaps > SPACING_ATOL).any():
        raise DataError(f"{where}: {what}s are not in slice order (positions along the slice normal go back and forth)")
    gaps = np.abs(gaps)
    same = np.flatnonzero(gaps <= SPACING_ATOL)
    if same.size:
        i = int(same[0])
        raise DataError(
            f"{where}: {labels[i]} and {labels[i + 1]} are at the same slice position ({dist[i]:.3f} mm along the slice "
            f"normal): duplicate {what}s, or two acquisitions in one series"
        )
    nominal = float(gaps.min())
    tol = max(SPACING_RTOL * nominal, SPACING_ATOL)
    for i, gap in enumerate(gaps):
        k = int(round(gap / nominal))
        if abs(gap - k * nominal) > tol:
            raise DataError(
                f"{where}: inconsistent slice spacing: {gap:.4g} mm between {labels[i]} and {labels[i + 1]}, "
                f"{nominal:.4g} mm elsewhere"
            )
        if k > 1:
            raise DataError(
                f"{where}: {k - 1} missing {what}(s) between {labels[i]} and {labels[i + 1]} "
                f"(gap {gap:.4g} mm, slice spacing {nominal:.4g} mm)"
            )
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    expected = positions[0] + np.arange(len(positions))[:, None] * step
    off = np.linalg.norm(positions - expected, axis=1)
    if off.max() > tol:
        i = int(off.argmax())
        raise DataError(f"{where}: slice positions are not on one line ({labels[i]} is {off[i]:.3g} mm off)")
    return step


def dicom_affine(
    orientation: Sequence[float], pixel_spacing: Sequence[float], origin: Sequence[float], slice_step: Sequence[float]
) -> np.ndarray:
    """RAS voxel-to-world affine of a DICOM volume indexed ``[row, column, slice]``.

    Same formula as MONAI's ``PydicomReader`` (https://nipy.org/nibabel/dicom/dicom_orientation.html), then LPS -> RAS
    with MONAI's ``orientation_ras_lps``, like NIfTI files and MONAI's readers: moving down one row goes along the
    column direction (``orientation[3:]``) by the row spacing ``pixel_spacing[0]``, one column along the row direction
    (``orientation[:3]``) by ``pixel_spacing[1]``, one slice by ``slice_step`` (the vector between consecutive
    ImagePositionPatient values; not necessarily along the slice normal, e.g. with gantry tilt); ``origin`` is the
    first slice's ImagePositionPatient. All inputs in DICOM patient space (LPS, mm).
    """
    from monai.data import orientation_ras_lps

    iop = np.asarray(orientation, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, 0] = iop[3:] * float(pixel_spacing[0])
    affine[:3, 1] = iop[:3] * float(pixel_spacing[1])
    affine[:3, 2] = np.asarray(slice_step, dtype=np.float64)
    affine[:3, 3] = np.asarray(origin, dtype=np.float64)
    return orientation_ras_lps(affine)


def _multiframe_affine(ds, path: str, frames: int, spacing: Sequence[float]) -> tuple[np.ndarray, str]:
    """Affine of a multi-frame volume ``[frame, row, column]`` and where it came from.

    With ImageOrientationPatient (top level, or in the functional groups of an enhanced multi-frame file): the patient
    geometry in RAS; the frame step is the vector between the per-frame positions (PlanePositionSequence) when they
    differ (they must be evenly spaced, in order), else the slice normal times SpacingBetweenSlices / SliceThickness
    (e.g. cine frames at one position). Without it: pixel spacing and frame spacing on the diagonal, no orientation.
    """
    iop = _geometry_value(ds, "PlaneOrientationSequence", "ImageOrientationPatient")
    thickness = _slice_thickness(ds)
    if iop is None:
        return np.diag([thickness, spacing[0], spacing[1], 1.0]), "spacing only (no ImageOrientationPatient)"
    row_dir, col_dir, normal = _orientation(path, iop)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    positions = []
    for f, group in enumerate(per_frame[:frames]):
        value = _group_value(group, "PlanePositionSequence", "ImagePositionPatient")
        if value is None:
            break
        positions.append(_numbers(path, f"ImagePositionPatient of frame {f + 1}", value, 3))
    if len(positions) == frames and np.ptp(np.asarray(positions) @ normal) > SPACING_ATOL:
        labels = [f"frame {f + 1}" for f in range(frames)]
        step, source = _even_step(path, np.asarray(positions), normal, labels, "frame"), "per-frame positions"
    else:
        step, source = normal * thickness, "orientation and slice thickness"
    if positions:
        origin = positions[0]
    elif "ImagePositionPatient" in ds:
        origin = _numbers(path, "ImagePositionPatient", ds.ImagePositionPatient, 3)
    else:
        origin = np.zeros(3)
    affine = dicom_affine(np.concatenate([row_dir, col_dir]), spacing, origin, step)
    return affine[:, [2, 0, 1, 3]], source  # voxel axes [row, column, slice] -> [frame, row, column]


def _read_dicom(path: str, allow_volume: bool, apply_voi: bool) -> MedicalImage:
    ds = _dcmread(path)
    if "Rows" in ds and "Columns" in ds:
        _check_pixels(path, (int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns)), "DICOM image")
    arr = _pixel_array(ds, path)
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
        arr = _grayscale_values(ds, arr, path, apply_voi, meta)
        if photometric == "MONOCHROME1":  # bright = low values: invert within the value range
            arr = (arr.max() + arr.min()) - arr
    elif spp in (3, 4):
        arr = _check_values(path, arr)
        arr = np.moveaxis(arr, -1, -3)  # [..., R, C, S] -> [..., S, R, C]
    else:
        raise DataError(f"{path}: DICOM with SamplesPerPixel={spp} is not supported (expected 1 or 3)")
    pixel_spacing = _geometry_value(ds, "PixelMeasuresSequence", "PixelSpacing")
    spacing = _numbers(path, "PixelSpacing", pixel_spacing, 2) if pixel_spacing is not None else np.ones(2)
    if frames > 1:
        if spp != 1:
            raise DataError(f"{path}: multi-frame colour DICOM ({frames} frames of {spp} samples) is not supported")
        if not allow_volume:
            raise _volume_refused(path, tuple(arr.shape), f"multi-frame DICOM ({frames} frames)")
        _check_2d(path, arr, "DICOM frame")
        affine, meta["affine_from"] = _multiframe_affine(ds, path, frames, spacing)
        return MedicalImage(arr, affine, True, "dicom", path, slice_axis=0, meta=meta)
    if arr.ndim == 2:
        arr = arr[None]
    _check_2d(path, arr, "DICOM image")
    affine = np.diag([spacing[0], spacing[1], 1.0, 1.0])
    return MedicalImage(arr, affine, False, "dicom", path, meta=meta)


# ----------------------------------------------------------------------------------------------------- DICOM series
def _folder_files(folder: str) -> list[str]:
    """Files directly in ``folder``, sorted, hidden ones (``.name``) left out."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        raise DataError(f"{folder}: cannot list the folder ({one_line(e)})") from e
    return [os.path.join(folder, n) for n in names if not n.startswith(".") and os.path.isfile(os.path.join(folder, n))]


def read_dicom_series(folder: str | os.PathLike, apply_voi: bool = True) -> MedicalImage:
    """Read a folder holding one DICOM series (one single-frame file per slice) as a 3D volume.

    MONAI's ``PydicomReader`` also reads a folder as a series, but orders the slices by InstanceNumber, stacks every
    DICOM file of the folder whatever its series, only warns about slices of different sizes or spacings, and applies
    neither VOI LUT/window nor MONOCHROME1. Here the headers are checked first (before any pixel data is decoded): one
    series (SeriesInstanceUID), image objects only, one size, orientation and pixel spacing; the slices are ordered by
    ImagePositionPatient along the slice normal (file names and InstanceNumber do not matter) and must be evenly
    spaced without gaps. Each slice then gets the values :func:`read_medical_image` gives that file alone (modality
    rescale, then the VOI LUT / window when ``apply_voi``), so a model trained on 2D DICOM slices sees the same
    values; MONOCHROME1 slices are inverted over the whole volume's value range. The affine is
    :func:`dicom_affine` (MONAI's formula and LPS -> RAS conversion).

    Args:
        folder: the series folder (files directly inside it; hidden files are ignored).
        apply_voi: apply each slice's VOI LUT or window centre/width when present.

    Returns:
        :class:`MedicalImage` with ``array`` ``[row, column, slice]`` float32 (each ``array[..., k]`` is a slice as the
        2D reader returns it), the RAS ``affine``, ``is_volume=True``, ``slice_axis=2``, ``path=folder`` and ``meta``:
        ``series_instance_uid``, ``files`` / ``sop_instance_uids`` / ``positions`` (ImagePositionPatient, LPS mm) per
        slice in volume order, ``slice_spacing`` (mm), ``photometric``, ``voi_applied``.

    Raises:
        DataError: one line naming the folder: no files, a non-DICOM file, a non-image object (report, presentation
            state...), several series, a multi-frame or colour file, slices of different sizes / orientations / pixel
            spacings, missing ImagePositionPatient / ImageOrientationPatient, two slices at one position, missing
            slices, uneven spacing, or an unreadable slice.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: DICOM series folder not found")
    files = _folder_files(folder)
    if not files:
        raise DataError(
            f"{folder}: is a folder, not an image file, and holds no files (a DICOM series folder holds one file per slice)"
        )
    names = [os.path.basename(f) for f in files]
    headers = []
    for f, name in zip(files, names):
        if detect_format(f) != "dicom":
            raise DataError(f"{folder}: {name} is not a DICOM file; a series folder holds only the series' DICOM slices "
                            "(move the slices into a folder of their own to read them as one volume)")
        ds = _dcmread(f, stop_before_pixels=True)
        if "Rows" not in ds or "Columns" not in ds:  # no Image Pixel module
            raise DataError(
                f"{folder}: {name} is not an image ({_sop_class(ds)}); move reports, presentation states and other "
                "non-image objects out of the series folder"
            )
        headers.append(ds)
    series: dict[str, list[str]] = {}
    for ds, name in zip(headers, names):
        series.setdefault(str(ds.get("SeriesInstanceUID", "") or "(no SeriesInstanceUID)"), []).append(name)
    if len(series) > 1:
        listed = "; ".join(f"{uid}: {len(v)} file(s), e.g. {v[0]}" for uid, v in list(series.items())[:3])
        raise DataError(f"{folder}: {len(series)} series in one folder ({listed}); put each series in its own folder")
    for ds, name in zip(headers, names):
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise DataError(f"{folder}: {name} is a multi-frame file ({frames} frames); read it on its own, not in a series")
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise DataError(f"{folder}: {name} is a colour image; only grayscale DICOM series are read as volumes")
        for tag in ("ImageOrientationPatient", "ImagePositionPatient"):
            if tag not in ds:
                raise DataError(f"{folder}: {name} has no {tag}; the slices cannot be placed in a volume")
    sizes = sorted({(int(ds.Rows), int(ds.Columns)) for ds in headers})
    if len(sizes) > 1:
        raise DataError(f"{folder}: slices of different sizes ({', '.join(f'{r}x{c}' for r, c in sizes)})")
    _check_pixels(folder, (len(headers), *sizes[0]), "DICOM series")

    def per_slice(tag: str, count: int) -> np.ndarray:
        default = np.ones(count)  # only PixelSpacing may be absent (then 1 mm)
        return np.stack([_numbers(f"{folder}: {n}", tag, ds.get(tag), count) if tag in ds else default
                         for ds, n in zip(headers, names)])

    def check_same(values: np.ndarray, tol: float, what: str) -> None:
        bad = np.flatnonzero(np.abs(values - values[0]).max(axis=1) > tol)
        if bad.size:
            k = int(bad[0])
            raise DataError(f"{folder}: {what} ({names[0]}: {values[0].tolist()}, {names[k]}: {values[k].tolist()})")

    iops, spacings = per_slice("ImageOrientationPatient", 6), per_slice("PixelSpacing", 2)
    check_same(iops, 1e-4, "slices with different orientations")
    check_same(spacings, SPACING_RTOL * spacings[0].min(), "inconsistent pixel spacing")
    row_dir, col_dir, normal = _orientation(f"{folder}: {names[0]}", iops[0])
    positions = per_slice("ImagePositionPatient", 3)
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    ordered = [names[i] for i in order]
    if len(files) > 1:
        step = _even_step(folder, positions, normal, ordered, "slice")
    else:
        step = normal * _slice_thickness(headers[0])

    meta: dict = {}
    slices, inverted = [], []
    for i in order:
        ds = _dcmread(files[i])
        raw = _pixel_array(ds, files[i])
        meta["dtype"] = str(raw.dtype)
        arr = _grayscale_values(ds, raw, files[i], apply_voi, meta)
        if arr.shape != sizes[0]:
            raise DataError(f"{files[i]}: pixel array of shape {tuple(arr.shape)} does not fit Rows, Columns {sizes[0]}")
        slices.append(arr)
        inverted.append(str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1")
    volume = np.stack(slices, axis=-1)
    if any(inverted):  # bright = low values: invert within the whole volume's range, the same for every slice
        lo_hi = float(volume.max() + volume.min())
        flip = np.asarray(inverted)
        volume[..., flip] = lo_hi - volume[..., flip]
    _check_2d(folder, volume[..., 0], "DICOM slice")
    meta.update(
        series_instance_uid=next(iter(series)),
        files=[files[i] for i in order],
        sop_instance_uids=[str(headers[i].get("SOPInstanceUID", "")) for i in order],
        positions=positions,
        slice_spacing=float(np.linalg.norm(step)),
        photometric="MONOCHROME1" if all(inverted) else "MONOCHROME2" if not any(inverted) else "mixed",
    )
    affine = dicom_affine(np.concatenate([row_dir, col_dir]), spacings[0], positions[0], step)
    return MedicalImage(volume, affine, True, "dicom", folder, slice_axis=2, meta=meta)


def is_dicom_series_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a DICOM series to read as one volume: at least two of its single-frame DICOM files
    with ImagePositionPatient share a SeriesInstanceUID. Reads headers only and never raises; folders of unrelated 2D
    DICOM images (each its own series, or without patient position) are not series folders."""
    import pydicom

    tags = ["SeriesInstanceUID", "ImagePositionPatient", "NumberOfFrames"]
    seen: set[str] = set()
    try:
        files = _folder_files(os.fspath(folder))
    except DataError:
        return False
    for f in files:
        if detect_format(f) != "dicom":
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=tags)
        except Exception:  # noqa: BLE001 - unreadable files are reported when the folder is read
            continue
        if "ImagePositionPatient" not in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1:
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if uid in seen:
            return True
        seen.add(uid)
    return False


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
    _check_pixels(path, shape[:ndim], "NIfTI image")
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
            _check_pixels(path, (im.height, im.width), "image")
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
    except (DataError, ConfigError):
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
    """Read and validate one DICOM, NIfTI or PNG/JPEG/BMP/TIFF file, or a DICOM series folder.

    Args:
        path: the file; the format comes from the extension or, for other names, from the first bytes. A folder is
            read as one DICOM series (:func:`read_dicom_series`).
        allow_volume: return 3D volumes (3D NIfTI, multi-frame DICOM, DICOM series) instead of refusing them.
        apply_voi: apply a DICOM VOI LUT or window centre/width when the file has one.

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
            return _read_dicom(path, allow_volume, apply_voi)
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
