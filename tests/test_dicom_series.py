"""DICOM series folders as volumes: synthetic series written with pydicom (oblique orientation, shuffled file names and
instance numbers, 16-bit stored values with a rescale), stacked volume and RAS affine against values computed here
from the geometry, a scoring round trip (the written map's affine is the series' affine), enhanced multi-frame
geometry, and a one-line error for each broken folder."""

from __future__ import annotations

import os
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
from test_data_utils import tiny_model

from monai_scrd.data.dicom import is_dicom_series_folder, read_dicom_series
from monai_scrd.data.errors import DataError
from monai_scrd.data.readers import MedicalImageReader, list_image_inputs, read_medical_image
from monai_scrd.engines import AnomalyInference, list_inputs
from monai_scrd.scoring import Scorer, ScoringDataset, save_map

ROWS, COLS, NSLICES = 12, 10, 5
PIXEL_SPACING = (0.8, 0.6)  # (row spacing, column spacing), DICOM order
SLICE_GAP = 2.5
SLOPE, INTERCEPT = 2.0, -1024.0


def _oblique_orientation() -> tuple[np.ndarray, np.ndarray]:
    """Row and column directions (LPS) rotated 30 degrees about x, then 20 degrees about z."""
    a, b = np.deg2rad(30), np.deg2rad(20)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    rot = rz @ rx
    return rot @ np.array([1.0, 0, 0]), rot @ np.array([0, 1.0, 0])


ROW_DIR, COL_DIR = _oblique_orientation()
NORMAL = np.cross(ROW_DIR, COL_DIR)
ORIGIN = np.array([-40.0, 25.0, 110.0])


def _stored_volume(seed: int = 0) -> np.ndarray:
    """``[row, column, slice]`` uint16 stored values, each slice distinct."""
    rng = np.random.default_rng(seed)
    vol = rng.integers(200, 3000, (ROWS, COLS, NSLICES)).astype(np.uint16)
    vol[2:5, 3:7, :] += np.arange(NSLICES, dtype=np.uint16) * 100  # a block whose brightness grows with the slice
    return vol


def write_slice(
    path,
    stored: np.ndarray,
    position,
    series_uid: str,
    instance: int,
    orientation=None,
    pixel_spacing=PIXEL_SPACING,
    photometric: str = "MONOCHROME2",
    sop_class: str | None = None,
    pixels: bool = True,
) -> str:
    """One single-frame CT slice (explicit VR little endian, 16-bit, rescale slope/intercept)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class or CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientName = "Test^Series"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance
    if pixels:
        stored = np.asarray(stored, dtype=np.uint16)
        ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = SLOPE, INTERCEPT, "HU"
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
        ds.SliceThickness = SLICE_GAP
        orientation = np.concatenate([ROW_DIR, COL_DIR]) if orientation is None else orientation
        ds.ImageOrientationPatient = [round(float(v), 8) for v in orientation]
        ds.ImagePositionPatient = [round(float(v), 6) for v in position]
        ds.PixelData = stored.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def write_series(folder, stored: np.ndarray, seed: int = 0, series_uid: str = "1.2.826.0.1.3680043.8.498.2", **kw) -> str:
    """The volume ``stored [row, column, slice]`` as a series folder: file names and InstanceNumbers shuffled so that
    neither follows the slice order; slice k at ``ORIGIN + k * SLICE_GAP * NORMAL``."""
    os.makedirs(folder, exist_ok=True)
    n = stored.shape[-1]
    perm = np.random.default_rng(seed).permutation(n)
    for k in range(n):
        name = f"IM{perm[k]:04d}"  # no extension, like many PACS exports
        write_slice(os.path.join(folder, name), stored[..., k], ORIGIN + k * SLICE_GAP * NORMAL, series_uid,
                    instance=int(perm[(k + 2) % n]) + 1, **kw)
    return str(folder)


def expected_ras(row: float, col: float, k: float) -> np.ndarray:
    """World position (RAS, mm) of voxel [row, col, slice k], from the DICOM definition: a column step moves along
    the row direction by the column spacing, a row step along the column direction by the row spacing."""
    lps = ORIGIN + col * PIXEL_SPACING[1] * ROW_DIR + row * PIXEL_SPACING[0] * COL_DIR + k * SLICE_GAP * NORMAL
    return lps * np.array([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_series_volume_and_affine(tmp_path):
    stored = _stored_volume()
    folder = write_series(tmp_path / "ct", stored)
    img = read_medical_image(folder, allow_volume=True)
    assert img.is_volume and img.format == "dicom" and img.slice_axis == 2 and img.path == str(folder)
    assert img.array.shape == (ROWS, COLS, NSLICES) and img.array.dtype == np.float32
    np.testing.assert_allclose(img.array, stored.astype(np.float64) * SLOPE + INTERCEPT)  # Hounsfield units
    # the affine puts every voxel where the DICOM geometry says
    for r, c, k in [(0, 0, 0), (ROWS - 1, 0, 0), (0, COLS - 1, 0), (3, 7, NSLICES - 1), (ROWS - 1, COLS - 1, 2)]:
        np.testing.assert_allclose(img.affine @ [r, c, k, 1], np.append(expected_ras(r, c, k), 1), atol=1e-4)
    assert img.meta["slice_spacing"] == pytest.approx(SLICE_GAP, abs=1e-4)
    np.testing.assert_allclose(img.meta["positions"][0], ORIGIN, atol=1e-5)
    assert len(img.meta["files"]) == NSLICES and img.meta["series_instance_uid"].endswith(".2")
    # each slice holds what the 2D reader gives for its file
    for k, f in enumerate(img.meta["files"]):
        np.testing.assert_allclose(img.array[..., k], read_medical_image(f).array[0])
    assert read_dicom_series(folder).affine.tolist() == img.affine.tolist()


def test_series_matches_monai_pydicom_reader(tmp_path):
    """MONAI's PydicomReader orders by InstanceNumber; with instance numbers in slice order it must agree with us on
    the array (swap_ij=False: [row, column, slice]) and the RAS affine."""
    from monai.data import PydicomReader
    from monai.transforms import LoadImage

    stored = _stored_volume(1)
    folder = tmp_path / "ordered"
    folder.mkdir()
    for k in range(NSLICES):
        write_slice(folder / f"s{k}.dcm", stored[..., k], ORIGIN + k * SLICE_GAP * NORMAL, "1.2.3.4", instance=k + 1)
    ours = read_dicom_series(folder)
    theirs = LoadImage(reader=PydicomReader(swap_ij=False), image_only=True)(str(folder))
    np.testing.assert_allclose(theirs.numpy(), ours.array, atol=1e-3)
    np.testing.assert_allclose(theirs.affine.numpy(), ours.affine, atol=1e-4)
    # our reader through LoadImage reads the folder the same way
    loaded = LoadImage(reader=MedicalImageReader(allow_volume=True), image_only=True)(str(folder))
    np.testing.assert_allclose(loaded.numpy(), ours.array)
    np.testing.assert_allclose(loaded.affine.numpy(), ours.affine)


def test_series_monochrome1_and_window(tmp_path):
    stored = _stored_volume(2)
    folder = write_series(tmp_path / "m1", stored, photometric="MONOCHROME1")
    vol = read_dicom_series(folder).array
    hu = stored.astype(np.float64) * SLOPE + INTERCEPT
    np.testing.assert_allclose(vol, hu.max() + hu.min() - hu, atol=1e-3)  # one inversion for the whole volume
    # a window centre/width applies to each slice, as for a single file
    win = tmp_path / "win"
    shutil.copytree(folder, win)
    import pydicom

    for f in os.listdir(win):
        ds = pydicom.dcmread(win / f)
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.WindowCenter, ds.WindowWidth = 1500, 2000
        ds.save_as(win / f)
    img = read_dicom_series(win)
    assert img.meta.get("voi_applied")
    for k, f in enumerate(img.meta["files"]):
        np.testing.assert_allclose(img.array[..., k], read_medical_image(f).array[0])
    assert len(np.unique(img.array)) < len(np.unique(hu))  # the window saturates values outside it
    raw = read_dicom_series(win, apply_voi=False).array
    np.testing.assert_allclose(raw, hu, atol=1e-3)


def test_series_scoring_round_trip(tmp_path, model):
    stored = _stored_volume(3)
    folder = write_series(tmp_path / "study" / "series1", stored)
    series = read_medical_image(folder, allow_volume=True)
    scorer = Scorer(model, image_size=32)
    res = next(scorer.score([folder], return_maps=True))
    assert res.ok and res.kind == "volume" and res.path == folder
    assert sorted(res.slice_scores) == list(range(NSLICES))  # per-slice scores, slice k along the slice normal
    assert res.score == pytest.approx(max(res.slice_scores.values()))  # documented reduction: max of slice scores
    mean = next(Scorer(model, image_size=32, volume_reduction="mean").score([folder]))
    assert mean.score == pytest.approx(np.mean(list(res.slice_scores.values())))
    assert res.anomaly_map.shape == (ROWS, COLS, NSLICES)
    out = save_map(res.anomaly_map, tmp_path / "map.nii.gz", res.affine)
    again = nib.load(out)
    assert again.shape == (ROWS, COLS, NSLICES)
    np.testing.assert_allclose(again.affine, series.affine, atol=1e-4)
    assert np.isfinite(again.get_fdata()).all() and again.get_fdata().max() > 0
    # batch scoring: a datalist entry pointing at the folder is one volume, read as one item by the evaluator's dataset
    prepared = ScoringDataset([{"image": folder, "label": 0}], scorer)[0]
    assert not prepared.error and prepared.kind == "volume" and prepared.count == NSLICES
    (batch,) = scorer.score_prepared([prepared])
    assert batch.item["label"] == 0 and batch.score == pytest.approx(res.score, abs=1e-6)
    # folder discovery: the series folder is one input next to ordinary images
    (tmp_path / "study" / "notes.txt").write_text("x")
    shutil.copy(series.meta["files"][0], tmp_path / "study" / "single.dcm")
    assert list_image_inputs(tmp_path / "study") == [str(folder), str(tmp_path / "study" / "single.dcm")]
    assert list_inputs(tmp_path / "study") == [{"image": str(folder)}, {"image": str(tmp_path / "study" / "single.dcm")}]


def test_inference_writes_series_map(tmp_path, model):
    """The bundle's inference on a study folder: the series is one row of scores.csv, and its anomaly map NIfTI has
    the series' shape and RAS affine (what 3D Slicer needs to overlay it on the loaded DICOM series)."""
    import csv

    folder = write_series(tmp_path / "study" / "ct_head", _stored_volume(4))
    inference = AnomalyInference(Scorer(model, image_size=32), str(tmp_path / "out"), save_heatmaps=False)
    rows = inference(str(tmp_path / "study"))
    assert [r["path"] for r in rows] == [folder] and rows[0]["kind"] == "volume"
    with open(tmp_path / "out" / "scores.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == 1 and written[0]["anomaly_map"].endswith("ct_head_anomaly_map.nii.gz")
    assert float(written[0]["score"]) == pytest.approx(rows[0]["score"], rel=1e-5)
    amap = nib.load(written[0]["anomaly_map"])
    assert amap.shape == (ROWS, COLS, NSLICES)
    np.testing.assert_allclose(amap.affine, read_dicom_series(folder).affine, atol=1e-4)
    with open(tmp_path / "out" / "errors.csv", newline="") as f:
        assert list(csv.DictReader(f)) == []


def test_series_folder_refused_for_2d_use(tmp_path):
    folder = write_series(tmp_path / "s", _stored_volume())
    with pytest.raises(DataError, match=r"/s: is a folder.*DICOM series folder is a 3D volume"):
        read_medical_image(folder)


def test_series_detection(tmp_path):
    assert is_dicom_series_folder(write_series(tmp_path / "s", _stored_volume()))
    # unrelated 2D images (each its own series) are not a series
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        write_slice(flat / f"{i}.dcm", _stored_volume()[..., i], ORIGIN, f"1.2.3.{i}", instance=1)
    assert not is_dicom_series_folder(flat)
    assert list_image_inputs(flat) == [str(flat / f"{i}.dcm") for i in range(3)]
    assert not is_dicom_series_folder(tmp_path / "missing")


def _broken(tmp_path, kind: str) -> str:
    stored = _stored_volume()
    folder = tmp_path / kind
    if kind == "mixed":
        write_series(folder, stored, series_uid="1.2.3.100")
        write_slice(folder / "other.dcm", stored[..., 0], ORIGIN, "1.2.3.200", instance=1)
    elif kind == "missing":
        write_series(folder, stored)
        victim = read_dicom_series(folder).meta["files"][2]
        os.remove(victim)
    elif kind == "spacing":
        folder.mkdir()
        for k, z in enumerate([0.0, 2.5, 5.0, 8.5, 11.0]):
            write_slice(folder / f"{k}.dcm", stored[..., k], ORIGIN + z * NORMAL, "1.2.3.5", instance=k + 1)
    elif kind == "duplicate":
        folder.mkdir()
        for k, z in enumerate([0.0, 2.5, 2.5, 5.0]):
            write_slice(folder / f"{k}.dcm", stored[..., k], ORIGIN + z * NORMAL, "1.2.3.6", instance=k + 1)
    elif kind == "report":
        from pydicom.uid import BasicTextSRStorage

        write_series(folder, stored)
        write_slice(folder / "report.dcm", None, None, "1.2.826.0.1.3680043.8.498.2", instance=99,
                    sop_class=BasicTextSRStorage, pixels=False)
    elif kind == "not_dicom":
        write_series(folder, stored)
        (folder / "readme.txt").write_text("series exported from PACS")
    elif kind == "pixel_spacing":
        write_series(folder, stored)
        write_slice(folder / "z.dcm", stored[..., 0], ORIGIN + NSLICES * SLICE_GAP * NORMAL,
                    "1.2.826.0.1.3680043.8.498.2", instance=50, pixel_spacing=(0.8, 0.7))
    elif kind == "orientation":
        write_series(folder, stored)
        write_slice(folder / "z.dcm", stored[..., 0], ORIGIN + NSLICES * SLICE_GAP * NORMAL,
                    "1.2.826.0.1.3680043.8.498.2", instance=50, orientation=[1, 0, 0, 0, 1, 0])
    elif kind == "empty":
        folder.mkdir()
    return str(folder)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("mixed", r"2 series in one folder \(1\.2\.3\.100: 5 file\(s\).*1\.2\.3\.200: 1 file\(s\), e\.g\. other\.dcm\); put each series in its own folder"),
        ("missing", r"1 missing slice\(s\) between IM\d+ and IM\d+ \(gap 5 mm, slice spacing 2\.5 mm\)"),
        ("spacing", r"inconsistent slice spacing: 3\.5 mm between 2\.dcm and 3\.dcm, 2\.5 mm elsewhere"),
        ("duplicate", r"1\.dcm and 2\.dcm are at the same slice position"),
        ("report", r"report\.dcm is not an image \(SOP class Basic Text SR Storage\); move reports"),
        ("not_dicom", r"readme\.txt is not a DICOM file"),
        ("pixel_spacing", r"inconsistent pixel spacing \(IM\d+: \[0\.8, 0\.6\], z\.dcm: \[0\.8, 0\.7\]\)"),
        ("orientation", r"slices with different orientations"),
        ("empty", r"is a folder, not an image file, and holds no files"),
    ],
)
def test_series_errors(tmp_path, kind, message):
    folder = _broken(tmp_path, kind)
    with pytest.raises(DataError) as err:
        read_medical_image(folder, allow_volume=True)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{folder}: "), text
    assert re.search(message, text), text


def _enhanced_multiframe(path, stored: np.ndarray, positions, orientation) -> str:
    """Enhanced CT multi-frame: orientation and pixel spacing in the shared functional groups, one position per frame."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.NumberOfFrames = stored.shape[0]
    ds.Rows, ds.Columns = stored.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    measures, plane = Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = list(PIXEL_SPACING), SLICE_GAP
    plane.ImageOrientationPatient = [float(v) for v in orientation]
    shared = Dataset()
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Sequence([measures]), Sequence([plane])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for p in positions:
        pos, group = Dataset(), Dataset()
        pos.ImagePositionPatient = [float(v) for v in p]
        group.PlanePositionSequence = Sequence([pos])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.asarray(stored, dtype=np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def test_multiframe_affine_from_functional_groups(tmp_path):
    stored = np.moveaxis(_stored_volume(), -1, 0)  # [frame, row, column]
    positions = [ORIGIN + k * SLICE_GAP * NORMAL for k in range(NSLICES)]
    p = _enhanced_multiframe(tmp_path / "mf.dcm", stored, positions, np.concatenate([ROW_DIR, COL_DIR]))
    img = read_medical_image(p, allow_volume=True)
    assert img.array.shape == (NSLICES, ROWS, COLS) and img.slice_axis == 0
    for f, r, c in [(0, 0, 0), (NSLICES - 1, 2, 3), (1, ROWS - 1, COLS - 1)]:
        np.testing.assert_allclose(img.affine @ [f, r, c, 1], np.append(expected_ras(r, c, f), 1), atol=1e-4)
    # unevenly spaced frames: one-line error naming the file
    bad = [ORIGIN + z * NORMAL for z in (0.0, 2.5, 5.0, 9.0, 11.5)]
    q = _enhanced_multiframe(tmp_path / "uneven.dcm", stored, bad, np.concatenate([ROW_DIR, COL_DIR]))
    with pytest.raises(DataError, match=r"uneven\.dcm: inconsistent slice spacing: 4 mm between frame 3 and frame 4"):
        read_medical_image(q, allow_volume=True)
    # cine-like frames at one position: the slice normal times the slice thickness
    same = _enhanced_multiframe(tmp_path / "cine.dcm", stored, [ORIGIN] * NSLICES, np.concatenate([ROW_DIR, COL_DIR]))
    aff = read_medical_image(same, allow_volume=True).affine
    np.testing.assert_allclose(aff[:3, 0], SLICE_GAP * NORMAL * [-1, -1, 1], atol=1e-6)
