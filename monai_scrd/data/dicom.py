"""DICOM reading: single- and multi-frame files and series folders, with what MONAI's ``PydicomReader`` lacks (pixel
budget before decoding, VOI LUT / window, MONOCHROME1, series and frame geometry checks, RAS affine, one-line errors).
Array conventions: :func:`monai_scrd.data.readers.read_medical_image`."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from monai.data import PydicomReader, orientation_ras_lps

from monai_scrd.data.errors import DataError, one_line
from monai_scrd.data.formats import detect_format
from monai_scrd.data.image import MedicalImage, check_2d, check_pixels, check_values, volume_refused

__all__ = ["read_dicom", "read_dicom_series", "dicom_affine", "is_dicom_series_folder"]

# Slice positions count as evenly spaced when every gap is within 1 % (and at least 0.01 mm) of the nominal spacing:
# DICOM stores positions as decimal strings, often rounded to 0.01 mm or coarser.
SPACING_RTOL = 0.01
SPACING_ATOL = 0.01


def _dcmread(path: str, **kwargs):
    """Open one DICOM file with MONAI's ``PydicomReader`` (``pydicom.dcmread``; ``kwargs`` such as
    ``stop_before_pixels`` go to it); its exceptions become one-line :class:`DataError` naming the file."""
    from pydicom.errors import InvalidDicomError

    try:
        return PydicomReader(**kwargs).read(path)
    except InvalidDicomError as e:
        raise DataError(f"{path}: not a DICOM file (missing preamble)") from e
    except Exception as e:  # truncated header, bad element lengths, ...
        raise DataError(f"{path}: unreadable DICOM header ({one_line(e)})") from e


def _sop_class(ds) -> str:
    uid = ds.get("SOPClassUID")
    return f"SOP class {getattr(uid, 'name', None) or uid}" if uid else "no SOP class"


def _pixel_array(ds, path: str) -> np.ndarray:
    """The stored values, decoded by pydicom. Not ``PydicomReader.get_data``: it swaps rows and columns, rescales by
    RescaleSlope/Intercept only (no Modality LUT Sequence), applies neither VOI LUT nor MONOCHROME1, and has no pixel
    budget; its errors do not name the file."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(f"{path}: DICOM file has no pixel data (truncated, or not an image object; {_sop_class(ds)})")
    try:
        return ds.pixel_array
    except Exception as e:  # truncated pixel data, unsupported transfer syntax, missing decoder plugin
        raise DataError(f"{path}: unreadable DICOM pixel data ({one_line(e)})") from e


def _grayscale_values(ds, arr: np.ndarray, path: str, apply_voi: bool, meta: dict) -> np.ndarray:
    """Modality values (RescaleSlope/Intercept or modality LUT), then the VOI LUT or window when asked and present
    (pydicom's LUT functions; MONAI's readers apply no VOI LUT). MONOCHROME1 is inverted by the caller (over the
    image's or the whole series' value range)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        arr = apply_modality_lut(arr, ds)
        if apply_voi and ("VOILUTSequence" in ds or "WindowCenter" in ds):
            arr = apply_voi_lut(arr, ds, index=0)
            meta["voi_applied"] = True
    except Exception as e:
        raise DataError(f"{path}: invalid DICOM rescale/VOI LUT/window attributes ({one_line(e)})") from e
    return check_values(path, arr)


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
    first slice's ImagePositionPatient. All inputs in DICOM patient space (LPS, mm). By hand rather than
    ``PydicomReader._get_affine`` (private): it works on MONAI's metadata dict (first and last position of a series
    sorted by InstanceNumber) and gives the identity for enhanced multi-frame files.
    """
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


def read_dicom(path: str, allow_volume: bool = False, apply_voi: bool = True) -> MedicalImage:
    """Read one DICOM file: grayscale or colour 2D image, or a multi-frame volume ``[frame, row, column]``.

    Grayscale values are modality values, then the VOI LUT or window when ``apply_voi``, then MONOCHROME1 inverted so
    that bright = high. The pixel budget is checked from the header, before the pixel data is decoded.

    Args:
        path: the file.
        allow_volume: return a multi-frame file as a volume instead of refusing it.
        apply_voi: apply the VOI LUT or window centre/width when the file has one.

    Raises:
        DataError: one line naming ``path`` (not DICOM, unreadable header or pixel data, no pixel data, unsupported
            samples per pixel, bad geometry, a volume when ``allow_volume`` is False...).
    """
    ds = _dcmread(path)
    if "Rows" in ds and "Columns" in ds:  # by hand: PydicomReader decodes whatever size the header announces
        check_pixels(path, (int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns)), "DICOM image")
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
        if photometric == "MONOCHROME1":  # bright = low values (MONAI leaves them): invert within the value range
            arr = (arr.max() + arr.min()) - arr
    elif spp in (3, 4):
        arr = check_values(path, arr)
        arr = np.moveaxis(arr, -1, -3)  # [..., R, C, S] -> [..., S, R, C]
    else:
        raise DataError(f"{path}: DICOM with SamplesPerPixel={spp} is not supported (expected 1 or 3)")
    pixel_spacing = _geometry_value(ds, "PixelMeasuresSequence", "PixelSpacing")
    spacing = _numbers(path, "PixelSpacing", pixel_spacing, 2) if pixel_spacing is not None else np.ones(2)
    if frames > 1:
        if spp != 1:
            raise DataError(f"{path}: multi-frame colour DICOM ({frames} frames of {spp} samples) is not supported")
        if not allow_volume:
            raise volume_refused(path, tuple(arr.shape), f"multi-frame DICOM ({frames} frames)")
        check_2d(path, arr, "DICOM frame")
        affine, meta["affine_from"] = _multiframe_affine(ds, path, frames, spacing)
        return MedicalImage(arr, affine, True, "dicom", path, slice_axis=0, meta=meta)
    if arr.ndim == 2:
        arr = arr[None]
    check_2d(path, arr, "DICOM image")
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
    spaced without gaps. Each slice then gets the values :func:`read_dicom` gives that file alone (modality
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
    check_pixels(folder, (len(headers), *sizes[0]), "DICOM series")

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
    check_2d(folder, volume[..., 0], "DICOM slice")
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
            ds = _dcmread(f, stop_before_pixels=True, specific_tags=tags)
        except Exception:  # noqa: BLE001 - unreadable files are reported when the folder is read
            continue
        if "ImagePositionPatient" not in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1:
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if uid in seen:
            return True
        seen.add(uid)
    return False

