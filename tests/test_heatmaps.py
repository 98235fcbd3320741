"""Heatmap overlays a reader can compare: one colour scale per run, anchored to the decision threshold (blue below,
red above), and a volume overlay that names the slice it shows."""

import numpy as np
import pytest
from PIL import Image

from monai_scrd.data.readers import MedicalImage
from monai_scrd.scoring import plots
from monai_scrd.scoring.plots import overlay_color_range, overlay_title, save_heatmap_overlay
from monai_scrd.scoring.outputs import ScoreWriter, _overlay
from monai_scrd.scoring.scorer import ScoreResult

T = 0.12  # a typical uncalibrated image-score threshold (1 - cos distances)
H = W = 64


def _image_result(path: str, amap: np.ndarray, score: float) -> ScoreResult:
    src = MedicalImage(np.full((1, H, W), 0.5, np.float32), np.eye(4), False, "pil", path)
    return ScoreResult(path, {"image": path}, score=score, kind="image", anomaly_map=amap.astype(np.float32), source=src)


def _columns(png: str, warm: bool) -> int:
    """How many pixel columns of the right half of the PNG (the anomaly-map panel and its colour bar) hold a clearly
    warm (red > blue) or cool (blue > red) pixel."""
    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=int)
    right = rgb[:, rgb.shape[1] // 2:]
    diff = right[..., 0] - right[..., 2]
    mask = diff > 30 if warm else diff < -30
    return int(mask.any(axis=0).sum())


def _maps():
    ramp = np.linspace(0.0, 1.0, W)[None, :].repeat(H, 0)
    below = 0.9 * T * ramp  # every value under the threshold, but spread over a range (own scale: blue..red)
    above = T * (1.5 + 1.5 * ramp)  # every value over it
    return below, above


def test_overlay_color_range_centres_the_threshold():
    assert overlay_color_range(T) == pytest.approx((0.0, 2 * T))
    assert overlay_color_range(-0.5) == pytest.approx((-1.0, 0.0))
    assert overlay_color_range(0.0) == pytest.approx((-1.0, 1.0))
    for t in (T, -0.5, 0.0, 3.0):
        lo, hi = overlay_color_range(t)
        assert lo < t < hi and (lo + hi) / 2 == pytest.approx(t)
    assert overlay_color_range(None) is None
    assert overlay_color_range(float("nan")) is None


def test_writer_overlays_share_the_threshold_colour_scale(tmp_path, monkeypatch):
    below, above = _maps()
    writer = ScoreWriter(tmp_path / "out", overlays=True, threshold=T)
    assert writer.overlay_range == overlay_color_range(T)
    seen = []
    real = plots.save_heatmap_overlay

    def spy(*args, **kwargs):
        seen.append((kwargs.get("vmin"), kwargs.get("vmax")))
        return real(*args, **kwargs)

    monkeypatch.setattr(plots, "save_heatmap_overlay", spy)
    with writer:
        row_lo = writer.add(_image_result(str(tmp_path / "normal.png"), below, float(below.mean())))
        row_hi = writer.add(_image_result(str(tmp_path / "tumour.png"), above, float(above.mean())))
    assert len(writer.errors) == 0
    # the same range for both maps, although their own ranges (0..0.108, 0.18..0.36) do not even overlap
    assert seen == [pytest.approx(overlay_color_range(T))] * 2
    # below the threshold: blue across the panel, red only in the colour bar (a narrow strip)
    assert _columns(row_lo["heatmap"], warm=False) > 150
    assert _columns(row_lo["heatmap"], warm=True) < 40
    # above it: red across the panel
    assert _columns(row_hi["heatmap"], warm=True) > 150


def test_without_threshold_each_overlay_has_its_own_scale(tmp_path):
    """The control of the test above: on its own scale the below-threshold map turns red on its high side."""
    below, _ = _maps()
    with ScoreWriter(tmp_path / "out", overlays=True) as writer:
        assert writer.overlay_range is None
        row = writer.add(_image_result(str(tmp_path / "normal.png"), below, float(below.mean())))
    assert _columns(row["heatmap"], warm=True) > 60
    assert "own colour scale: no threshold" in overlay_title(0.05)
    assert "own colour scale" not in overlay_title(0.05, T)


def test_explicit_range_still_accepted(tmp_path):
    below, _ = _maps()
    path = str(tmp_path / "x.png")
    assert save_heatmap_overlay(np.zeros((H, W)), below, path, score=0.1, threshold=T, vmin=0.0, vmax=0.05) == path
    assert _columns(path, warm=True) > 60  # the caller's range wins over the threshold's


def test_overlay_title_names_the_slice():
    title = overlay_title(0.3, 0.2, slice_index=7, num_slices=20)
    assert "slice 7 of 20 (highest score)" in title
    assert "anomalous" in title and "threshold 0.2" in title
    assert "slice" not in overlay_title(0.3, 0.2)


def test_volume_overlay_shows_the_highest_scoring_slice(tmp_path, monkeypatch):
    vol = np.random.default_rng(0).random((32, 32, 12)).astype(np.float32)
    amap = np.zeros_like(vol)
    amap[..., 7] = 0.3
    src = MedicalImage(vol, np.eye(4), True, "nifti", "v.nii.gz", slice_axis=2)
    res = ScoreResult("v.nii.gz", score=0.3, kind="volume", slice_scores={3: 0.01, 7: 0.3, 9: 0.02},
                      anomaly_map=amap, source=src)
    seen = {}
    real = plots.save_heatmap_overlay

    def spy(image, anomaly_map, path, **kwargs):
        seen.update(kwargs, amap=np.asarray(anomaly_map))
        return real(image, anomaly_map, path, **kwargs)

    monkeypatch.setattr(plots, "save_heatmap_overlay", spy)
    out = _overlay(res, str(tmp_path / "v.png"), T)
    assert (seen["slice_index"], seen["num_slices"]) == (7, 12)
    assert np.all(seen["amap"] == 0.3)
    assert (seen["vmin"], seen["vmax"]) == pytest.approx(overlay_color_range(T))
    assert Image.open(out).size[0] > 0
