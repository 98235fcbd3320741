"""Slice-wise scoring of 3D volumes: slicing / reassembly (data), per-slice scores, volume score and the map's affine
(the scorer)."""

import nibabel as nib
import numpy as np
import pytest
import torch
from test_data_utils import AFFINE, make_dicom, make_nifti, tiny_model

from monai_scrd.data.readers import read_medical_image
from monai_scrd.data.transforms import array_transforms
from monai_scrd.data.volume import assemble_volume, slice_volume
from monai_scrd.scoring import Scorer, image_score, save_map


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


def _score(model, path, **kw):
    return next(Scorer(model, image_size=64, **kw).score([path], return_maps=True))


def test_score_volume_nifti(tmp_path, model):
    vol = _volume()
    path = make_nifti(tmp_path / "vol.nii.gz", vol, AFFINE)
    res = _score(model, path)
    assert res.kind == "volume" and sorted(res.slice_scores) == [1, 2, 3, 4]  # empty slices 0 and 5 skipped
    assert res.score == pytest.approx(max(res.slice_scores.values()))
    mean = _score(model, path, volume_reduction="mean")
    assert mean.score == pytest.approx(np.mean(list(res.slice_scores.values())))
    data = res.anomaly_map
    assert data.shape == vol.shape and np.allclose(res.affine, AFFINE)
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
    # the saved map keeps the affine and the input's orientation codes
    out = save_map(data, tmp_path / "maps" / "vol_map.nii.gz", res.affine, res.source.meta["header"])
    again = nib.load(out)
    np.testing.assert_allclose(again.affine, AFFINE)
    np.testing.assert_allclose(again.get_fdata(), data, rtol=1e-6)
    assert nib.load(save_map(data[:, :, 1], tmp_path / "slice.nii", AFFINE)).shape == (20, 24)


def test_all_empty_volume_is_an_error(tmp_path, model):
    path = make_nifti(tmp_path / "zeros.nii.gz", np.zeros((8, 8, 3), np.float32), AFFINE)
    res = _score(model, path)
    assert res.score is None and res.error == f"{path}: all 3 slices along axis 2 are empty (constant)"


def test_score_volume_multiframe_dicom_and_batch(tmp_path, model):
    frames = np.random.default_rng(3).integers(0, 4000, (3, 32, 32)).astype(np.uint16)
    frames[1] = 0  # empty frame
    dcm = make_dicom(tmp_path / "mf.dcm", frames, slope=1, intercept=-1024)
    res = _score(model, dcm)  # frames are the slices (axis 0)
    assert sorted(res.slice_scores) == [0, 2]
    img = read_medical_image(dcm, allow_volume=True)
    assert res.anomaly_map.shape == img.array.shape
    # one batch mixes 2D images and volumes; results keep the input order and items
    nii = make_nifti(tmp_path / "v.nii.gz", _volume(), AFFINE)
    png_arr = (np.random.default_rng(4).random((40, 50)) * 255).astype(np.uint8)
    from PIL import Image

    Image.fromarray(png_arr).save(tmp_path / "a.png")
    out = list(Scorer(model, image_size=64, batch_size=3).score([str(tmp_path / "a.png"), {"image": nii, "label": 1}, dcm]))
    assert all(r.ok for r in out) and [r.kind for r in out] == ["image", "volume", "volume"]
    assert out[1].item["label"] == 1 and out[1].score == pytest.approx(max(out[1].slice_scores.values()))
    assert out[2].score == pytest.approx(res.score, abs=1e-6)  # batching does not change a score
