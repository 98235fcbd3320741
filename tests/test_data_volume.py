"""Slice-wise scoring of 3D volumes: slicing / reassembly, per-slice scores, volume score and the map's affine."""

import nibabel as nib
import numpy as np
import pytest
import torch
from test_data_utils import AFFINE, make_dicom, make_nifti, tiny_model

from monai_scrd.data import (
    FileErrors,
    aggregate_scores,
    array_transforms,
    assemble_volume,
    read_medical_image,
    save_map_nifti,
    score_files,
    score_volume,
    slice_volume,
)
from monai_scrd.scoring import image_score


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _volume(shape=(20, 24, 6), empty=(0, 5), axis=2):
    rng = np.random.default_rng(0)
    vol = rng.random(shape).astype(np.float32) * 400 + 100
    for i in empty:
        idx = [slice(None)] * 3
        idx[axis] = i
        vol[tuple(idx)] = 0.0
    return vol


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_slice_and_assemble_roundtrip(axis):
    vol = _volume(empty=(1,), axis=axis % 3)
    picked = slice_volume(vol, axis)
    n = vol.shape[axis]
    assert [i for i, _ in picked] == [i for i in range(n) if i != 1]
    back = assemble_volume([s for _, s in picked], [i for i, _ in picked], vol.shape, axis)
    np.testing.assert_array_equal(back, vol)  # same-size maps go back unchanged, the skipped slice stays 0
    assert len(slice_volume(vol, axis, skip_empty=False)) == n
    # maps at another resolution are resized back to each slice's size
    maps = [np.full((8, 8), float(i)) for i, _ in picked]
    back = assemble_volume(maps, [i for i, _ in picked], vol.shape, axis, fill=-1)
    for i in range(n):
        sl = np.take(back, i, axis=axis)
        np.testing.assert_allclose(sl, -1 if i == 1 else i, rtol=1e-5)


def test_aggregate_scores():
    assert aggregate_scores([0.1, 0.5, 0.3]) == 0.5
    assert aggregate_scores([0.1, 0.5, 0.3], "mean") == pytest.approx(0.3)
    with pytest.raises(ValueError):
        aggregate_scores([0.1], "median")


def test_score_volume_nifti(tmp_path, model):
    vol = _volume()
    path = make_nifti(tmp_path / "vol.nii.gz", vol, AFFINE)
    res = score_volume(model, path, image_size=64)
    assert sorted(res.slice_scores) == [1, 2, 3, 4]  # empty slices 0 and 5 skipped
    assert res.score == pytest.approx(max(res.slice_scores.values()))
    mean = score_volume(model, path, image_size=64, reduction="mean")
    assert mean.score == pytest.approx(np.mean(list(res.slice_scores.values())))
    m = res.map_image
    assert isinstance(m, nib.Nifti1Image) and m.shape == vol.shape
    np.testing.assert_allclose(m.affine, AFFINE)
    data = m.get_fdata()
    assert np.all(data[:, :, [0, 5]] == 0) and np.all(data[:, :, 1:5] > 0)
    # each slice is scored exactly like a 2D image with the same preprocessing
    tf = array_transforms("image", 64)
    x = torch.stack([torch.as_tensor(tf({"image": torch.as_tensor(vol[:, :, i])[None]})["image"]) for i in (1, 3)])
    with torch.no_grad():
        amap = model(x)
    expected = image_score(amap, "mean")
    assert res.slice_scores[1] == pytest.approx(float(expected[0]), rel=1e-4)
    assert res.slice_scores[3] == pytest.approx(float(expected[1]), rel=1e-4)
    # slice maps resized back to the slice size (20 x 24)
    back = torch.nn.functional.interpolate(amap[:1], size=(20, 24), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(data[:, :, 1], back.numpy(), rtol=1e-4, atol=1e-6)
    # saved map keeps the affine
    out = tmp_path / "maps" / "vol_map.nii.gz"
    save_map_nifti(m, None, out)
    again = nib.load(out)
    np.testing.assert_allclose(again.affine, AFFINE)
    np.testing.assert_allclose(again.get_fdata(), data, rtol=1e-6)
    arr_out = save_map_nifti(data[:, :, 1], AFFINE, tmp_path / "slice.nii")
    assert arr_out.shape == (20, 24)


def test_score_volume_axis_and_volume_scaling(tmp_path, model):
    vol = _volume(shape=(6, 20, 24), empty=(2,), axis=0)
    path = make_nifti(tmp_path / "vol0.nii.gz", vol, AFFINE)
    res = score_volume(model, path, image_size=64, axis=0, scale_per="volume", slice_reduction="max")
    assert sorted(res.slice_scores) == [0, 1, 3, 4, 5]
    assert res.map_image.shape == vol.shape
    assert np.all(res.map_image.get_fdata()[2] == 0)


def test_score_volume_multiframe_dicom_and_batch(tmp_path, model):
    frames = np.random.default_rng(3).integers(0, 4000, (3, 32, 32)).astype(np.uint16)
    frames[1] = 0  # empty frame
    dcm = make_dicom(tmp_path / "mf.dcm", frames, slope=1, intercept=-1024)
    res = score_volume(model, dcm, image_size=64)  # frames are the slices (axis 0)
    assert sorted(res.slice_scores) == [0, 2]
    img = read_medical_image(dcm, allow_volume=True)
    assert res.map_image.shape == img.array.shape
    # batch helper mixes 2D images and volumes
    nii = make_nifti(tmp_path / "v.nii.gz", _volume(), AFFINE)
    png_arr = (np.random.default_rng(4).random((40, 50)) * 255).astype(np.uint8)
    from PIL import Image

    Image.fromarray(png_arr).save(tmp_path / "a.png")
    errors = FileErrors()
    out = score_files(model, [str(tmp_path / "a.png"), {"image": nii, "label": 1}, dcm], image_size=64, errors=errors)
    assert len(errors) == 0 and errors.exit_code == 0
    assert [r["kind"] for r in out] == ["image", "volume", "volume"]
    assert out[1]["label"] == 1 and out[1]["score"] == pytest.approx(max(out[1]["slice_scores"].values()))
