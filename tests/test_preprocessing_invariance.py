"""Preprocessing invents no edges: one picture stored with an offset, a gain, as MONOCHROME1 instead of MONOCHROME2,
or in 16 instead of 8 bits is one model input and one score (1e-4 relative), through the one scorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_data_utils import make_dicom, make_png, tiny_model

from monai_scrd.data.transforms import ResizeToModel
from monai_scrd.scoring import Scorer

RTOL = 1e-4


def _picture(shape=(150, 170)) -> np.ndarray:
    """A smooth 8-bit picture that is bright up to its border (where a zero-padded resize would invent an edge)."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = 150 + 60 * np.sin(rows / 9.0) * np.cos(cols / 13.0) + 40 * (rows / shape[0])
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scorer():
    return Scorer(tiny_model(), image_size=64, score_reduction="top5%", batch_size=4)


def _scores(scorer, paths):
    results = list(scorer.score(paths))
    assert all(r.ok for r in results), [r.error for r in results]
    return np.array([r.score for r in results])


def test_resize_adds_no_border(tmp_path):
    constant = torch.full((3, 100, 90), 0.7)
    out = ResizeToModel(32)(constant)
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out, torch.full_like(out, 0.7))  # a zero-padded blur darkens the rim here


def test_offset_and_gain_give_the_same_score(scorer, tmp_path):
    pic = _picture()
    paths = [
        make_png(tmp_path / "plain.png", pic),
        make_png(tmp_path / "offset.png", (pic.astype(np.uint16) + 100).astype(np.uint16)),  # 16-bit PNG, +100
        make_png(tmp_path / "gain.png", (pic.astype(np.uint16) * 37).astype(np.uint16)),
        make_png(tmp_path / "sixteen_bit.png", (pic.astype(np.uint16) * 257).astype(np.uint16)),  # 8 -> 16 bit
    ]
    scores = _scores(scorer, paths)
    np.testing.assert_allclose(scores[1:], scores[0], rtol=RTOL)


def test_monochrome1_and_monochrome2_give_the_same_score(scorer, tmp_path):
    pic = _picture().astype(np.uint16) * 10 + 500
    m2 = make_dicom(tmp_path / "m2.dcm", pic, "MONOCHROME2")
    m1 = make_dicom(tmp_path / "m1.dcm", int(pic.max()) + int(pic.min()) - pic, "MONOCHROME1")  # the same picture
    png = make_png(tmp_path / "m.png", _picture())
    scores = _scores(scorer, [m2, m1, png])
    np.testing.assert_allclose(scores[1:], scores[0], rtol=RTOL)
