"""Readers and preprocessing: DICOM (rescale, MONOCHROME1, window, multi-frame), NIfTI 2D/3D, PNG/JPEG modes,
intensity scaling; pixel values checked after loading."""

import numpy as np
import pytest
import torch
from monai.transforms import LoadImage
from PIL import Image
from test_data_utils import AFFINE, make_dicom, make_nifti, make_png

from monai_scrd.data.errors import DataError
from monai_scrd.data.readers import LoadMedicalImage, MedicalImageReader, read_medical_image
from monai_scrd.data.transforms import ScaleIntensityToUnit, preprocessing_transforms

STORED = np.arange(0, 160, 10, dtype=np.uint16).reshape(4, 4)  # 0..150
HU = -1024.0 + 2.0 * STORED  # slope 2, intercept -1024


def _minmax(x):
    x = np.asarray(x, dtype=np.float64)
    return (x - x.min()) / (x.max() - x.min())


def test_dicom_monochrome2_rescale(tmp_path):
    p = make_dicom(tmp_path / "m2.dcm", STORED, "MONOCHROME2", slope=2, intercept=-1024, pixel_spacing=(0.5, 0.7))
    img = read_medical_image(p)
    assert not img.is_volume and img.format == "dicom"
    assert img.array.shape == (1, 4, 4) and img.array.dtype == np.float32
    np.testing.assert_allclose(img.array[0], HU)  # modality values (HU), rows first
    np.testing.assert_allclose(np.diag(img.affine)[:2], [0.5, 0.7])
    out = preprocessing_transforms(image_size=4)({"image": p})["image"]
    assert tuple(out.shape) == (3, 4, 4) and out.dtype == torch.float32
    for c in range(3):
        np.testing.assert_allclose(out[c].numpy(), _minmax(HU), atol=1e-6)
    assert out.meta["filename_or_obj"] == p


def test_dicom_monochrome1_inverted(tmp_path):
    p = make_dicom(tmp_path / "m1.dcm", STORED, "MONOCHROME1", slope=2, intercept=-1024)
    img = read_medical_image(p)
    np.testing.assert_allclose(img.array[0], HU.max() + HU.min() - HU)  # high stored value = dark
    out = preprocessing_transforms(image_size=4)({"image": p})["image"]
    np.testing.assert_allclose(out[0].numpy(), 1.0 - _minmax(HU), atol=1e-6)
    assert out[0, 0, 0] == 1.0 and out[0, -1, -1] == 0.0


def test_dicom_window_center_width(tmp_path):
    c, w = -874.0, 101.0
    p = make_dicom(tmp_path / "win.dcm", STORED, slope=2, intercept=-1024, window=(c, w))
    # DICOM linear VOI window (PS3.3 C.11.2.1.2), normalised to [0, 1]
    expected = np.clip((HU - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    out = preprocessing_transforms(image_size=4)({"image": p})["image"]
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-3)
    assert (out[0].numpy() == 0).sum() == (HU <= c - 0.5 - (w - 1) / 2).sum()
    # the window can be switched off: then plain min-max of HU
    raw = preprocessing_transforms(image_size=4, apply_voi=False)({"image": p})["image"]
    np.testing.assert_allclose(raw[0].numpy(), _minmax(HU), atol=1e-6)


def test_dicom_multiframe(tmp_path):
    frames = np.stack([STORED, STORED + 5, STORED * 2])
    p = make_dicom(tmp_path / "mf.dcm", frames, slope=1, intercept=-10)
    img = read_medical_image(p, allow_volume=True)
    assert img.is_volume and img.slice_axis == 0 and img.array.shape == (3, 4, 4)
    np.testing.assert_allclose(img.array, frames.astype(np.float32) - 10)
    with pytest.raises(DataError, match=r"mf\.dcm: multi-frame DICOM \(3 frames\).*3D volume"):
        read_medical_image(p)
    # a single-frame "multi-frame" file is a 2D image
    p1 = make_dicom(tmp_path / "mf1.dcm", STORED[None])
    assert read_medical_image(p1).array.shape == (1, 4, 4)


def test_nifti_2d_and_3d(tmp_path):
    a2 = np.random.default_rng(0).random((6, 7)).astype(np.float32) * 100 - 50
    p2 = make_nifti(tmp_path / "a.nii.gz", a2, AFFINE)
    img = read_medical_image(p2)
    assert img.array.shape == (1, 6, 7) and not img.is_volume
    np.testing.assert_allclose(img.array[0], a2, rtol=1e-6)
    np.testing.assert_allclose(img.affine, AFFINE)
    p2b = make_nifti(tmp_path / "b.nii", a2[..., None])  # (X, Y, 1) is 2D too
    assert read_medical_image(p2b).array.shape == (1, 6, 7)
    a3 = np.random.default_rng(1).integers(0, 1000, (5, 6, 4)).astype(np.int16)
    p3 = make_nifti(tmp_path / "v.nii.gz", a3, AFFINE)
    vol = read_medical_image(p3, allow_volume=True)
    assert vol.is_volume and vol.slice_axis == 2 and vol.array.shape == (5, 6, 4)
    np.testing.assert_allclose(vol.array, a3)
    np.testing.assert_allclose(vol.affine, AFFINE)
    p4 = make_nifti(tmp_path / "v4.nii.gz", a3[..., None])  # (X, Y, Z, 1) squeezes to 3D
    assert read_medical_image(p4, allow_volume=True).array.shape == (5, 6, 4)
    with pytest.raises(DataError, match=r"v\.nii\.gz: NIfTI volume of shape \(5, 6, 4\) is a 3D volume"):
        preprocessing_transforms(image_size=32)({"image": p3})


def test_nifti_affine_as_stored_when_pixdim_disagrees(tmp_path):
    """The sform is kept even when pixdim disagrees with it (MONAI's NibabelReader would rewrite it from the qform)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.eye(4))
    img.set_sform(np.diag([2.0, 3.0, 4.0, 1.0]), code=1)
    img.set_qform(np.eye(4), code=1)
    nib.save(img, str(tmp_path / "s.nii"))
    vol = read_medical_image(tmp_path / "s.nii", allow_volume=True)
    np.testing.assert_array_equal(vol.affine, np.diag([2.0, 3.0, 4.0, 1.0]))


@pytest.mark.parametrize("kind", ["L", "RGB", "RGBA", "I;16", "JPEG"])
def test_png_jpeg_modes(tmp_path, kind):
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (5, 6), dtype=np.uint8)
    if kind == "L":
        p, expected = make_png(tmp_path / "l.png", gray), gray[None].astype(np.float32)
    elif kind == "RGB":
        rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
        p, expected = make_png(tmp_path / "rgb.png", rgb), np.moveaxis(rgb, -1, 0).astype(np.float32)
    elif kind == "RGBA":
        rgba = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
        p, expected = make_png(tmp_path / "rgba.png", rgba), np.moveaxis(rgba, -1, 0).astype(np.float32)
    elif kind == "I;16":
        g16 = rng.integers(0, 65536, (5, 6), dtype=np.uint16)
        g16[0, 0], g16[0, 1] = 0, 65535
        p, expected = make_png(tmp_path / "g16.png", g16), g16[None].astype(np.float32)
        assert Image.open(p).mode.startswith("I;16")
    else:
        p = tmp_path / "rgb.jpg"
        Image.fromarray(np.repeat(gray[..., None], 3, axis=2)).save(p, quality=95)
        p, expected = str(p), None
    img = read_medical_image(p)
    if expected is not None:
        np.testing.assert_array_equal(img.array, expected)  # rows first: [C, H, W], no transpose
    else:
        assert img.array.shape == (3, 5, 6)
    out = preprocessing_transforms(image_size=(5, 6))({"image": p})["image"]
    assert tuple(out.shape) == (3, 5, 6) and float(out.min()) == 0.0 and float(out.max()) == 1.0
    if kind in ("RGB", "RGBA"):  # grayscale = mean of RGB, alpha dropped
        np.testing.assert_allclose(out[1].numpy(), _minmax(expected[:3].mean(0)), atol=1e-5)


def test_percentile_scaling(tmp_path):
    arr = np.linspace(0, 100, 400, dtype=np.float32).reshape(20, 20)
    arr[0, 0] = 1e6  # outlier
    s = ScaleIntensityToUnit("percentile", (1, 99))(torch.as_tensor(arr[None]))
    lo, hi = np.percentile(arr, [1, 99])
    np.testing.assert_allclose(s[0].numpy(), np.clip((arr - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert float(ScaleIntensityToUnit("minmax")(torch.as_tensor(arr[None]))[0, 10, 10]) < 1e-3  # outlier squashes
    p = make_nifti(tmp_path / "o.nii.gz", arr)
    out = preprocessing_transforms(image_size=20, intensity="percentile", percentiles=(1, 99))({"image": p})["image"]
    np.testing.assert_allclose(out[0].numpy(), np.clip((arr - lo) / (hi - lo), 0, 1), atol=1e-5)
    assert torch.all(ScaleIntensityToUnit()(torch.full((1, 4, 4), 7.0)) == 0)  # constant image -> zeros
    with pytest.raises(ValueError, match="intensity"):
        ScaleIntensityToUnit("zscore")
    with pytest.raises(ValueError, match="percentiles"):
        ScaleIntensityToUnit("percentile", (99, 1))


@pytest.mark.filterwarnings("ignore:NvImgCodec")
def test_monai_reader_and_transform(tmp_path):
    p = make_dicom(tmp_path / "m2.dcm", STORED, slope=2, intercept=-1024)
    img = LoadImage(reader=MedicalImageReader(), image_only=True, ensure_channel_first=True)(p)
    assert tuple(img.shape) == (1, 4, 4)
    np.testing.assert_allclose(img[0].numpy(), HU)
    p3 = make_nifti(tmp_path / "v.nii.gz", np.ones((3, 4, 5), np.float32), AFFINE)
    vol = LoadImage(reader=MedicalImageReader(allow_volume=True), image_only=True, ensure_channel_first=True)(p3)
    assert tuple(vol.shape) == (1, 3, 4, 5)
    mt = LoadMedicalImage(allow_volume=True)(p3)
    assert tuple(mt.shape) == (1, 3, 4, 5)
    np.testing.assert_allclose(mt.affine.numpy(), AFFINE)
