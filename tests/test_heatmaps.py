"""Heatmap overlays a reader can compare: one colour scale per run, anchored to the decision threshold (blue below,
red above), and a volume overlay that names the slice it shows."""

import os

import numpy as np
import pytest
from PIL import Image

from monai_scrd.data.image import MedicalImage
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


def _map_panel(png: str) -> np.ndarray:
    """The anomaly-map panel of an overlay PNG (RGB, int): the widest run of columns holding coloured pixels (the
    input panel is gray, the colour bar a narrow run), cut to the rows holding them."""
    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=int)
    coloured = np.abs(rgb[..., 0] - rgb[..., 2]) > 30
    cols = np.flatnonzero(coloured.any(axis=0))
    runs = np.split(cols, np.flatnonzero(np.diff(cols) > 1) + 1)
    run = max(runs, key=len)
    rows = np.flatnonzero(coloured[:, run].any(axis=1))
    return rgb[rows[0]:rows[-1] + 1, run[0]:run[-1] + 1]


def _warm(panel: np.ndarray) -> np.ndarray:
    return panel[..., 0] - panel[..., 2] > 30


def test_overlay_panels_are_bounded_by_max_size(tmp_path):
    img = np.random.default_rng(0).random((2000, 3000), dtype=np.float32)  # H x W
    amap = np.full((256, 256), 3 * T, np.float32)  # all above the range: the whole panel warm
    for max_size in (512, 200):
        path = str(tmp_path / f"big{max_size}.png")
        save_heatmap_overlay(img, amap, path, score=0.3, threshold=T, max_size=max_size)
        w, h = Image.open(path).size
        assert w <= 2 * max_size + 250 and h <= max_size + 120, (max_size, w, h)
        panel = _map_panel(path)
        assert panel.shape[1] == max_size and abs(panel.shape[0] - round(max_size * 2 / 3)) <= 1  # aspect kept
        assert _warm(panel).mean() > 0.99
    # a small image is upscaled to a readable size, not shown at 16 px
    path = str(tmp_path / "small.png")
    save_heatmap_overlay(img[:16, :16], amap, path, threshold=T)
    assert _map_panel(path).shape[:2] == (256, 256)


def _hot_top_left(n: int) -> np.ndarray:
    amap = np.zeros((n, n), np.float32)  # 0: the deepest blue of the 0 .. 2T range
    amap[: n // 2, : n // 2] = 3 * T  # above it: the deepest red
    return amap


def _check_hot_top_left(png: str) -> None:
    warm = _warm(_map_panel(png))
    h, w = warm.shape
    assert warm[: int(0.4 * h), : int(0.4 * w)].all()
    assert not warm[int(0.6 * h):].any() and not warm[:, int(0.6 * w):].any()


def test_model_size_map_is_resampled_onto_a_larger_image(tmp_path):
    img = np.random.default_rng(1).random((900, 1200), dtype=np.float32)
    path = str(tmp_path / "m.png")
    save_heatmap_overlay(img, _hot_top_left(64), path, score=0.3, threshold=T)
    assert _map_panel(path).shape[:2] == (384, 512)
    _check_hot_top_left(path)


def test_image_overlay_uses_the_model_size_map(tmp_path, monkeypatch):
    """``_overlay`` draws ``model_map`` (the model's [h, w]) as it is: not reshaped to, nor read from, the file-size
    map (here deliberately different: hot at the bottom right)."""
    src = MedicalImage(np.random.default_rng(2).random((1, 600, 800), dtype=np.float32), np.eye(4), False, "pil",
                       "big.png")
    full = np.zeros((600, 800), np.float32)
    full[300:, 400:] = 3 * T
    res = ScoreResult("big.png", {"image": "big.png"}, score=0.3, kind="image", anomaly_map=full,
                      model_map=_hot_top_left(32), source=src)
    seen = {}
    real = plots.save_heatmap_overlay

    def spy(image, anomaly_map, path, **kwargs):
        seen["amap"] = np.asarray(anomaly_map).shape
        return real(image, anomaly_map, path, **kwargs)

    monkeypatch.setattr(plots, "save_heatmap_overlay", spy)
    out = _overlay(res, str(tmp_path / "o.png"), T)
    assert seen["amap"] == (32, 32)
    _check_hot_top_left(out)
    # without a model map: the file-size map, as before
    res.model_map = None
    out = _overlay(res, str(tmp_path / "o2.png"), T)
    assert seen["amap"] == (600, 800)
    warm = _warm(_map_panel(out))
    assert warm[-10:, -10:].all() and not warm[:10, :10].any()


def test_writer_writes_in_the_background_and_records_its_failures(tmp_path, monkeypatch):
    """Files are written on one background thread, in input order; a failed write ends in errors.csv, not in
    scores.csv nor in ``rows``; a result with an error is recorded at once."""
    import csv
    import threading
    import time

    threads, order = set(), []
    real = plots.save_heatmap_overlay

    def spy(image, anomaly_map, path, **kwargs):
        threads.add(threading.current_thread().name)
        order.append(path)
        time.sleep(0.02)  # slower than add(): results queue up
        if "bad" in path:
            raise OSError("disk full")
        return real(image, anomaly_map, path, **kwargs)

    monkeypatch.setattr(plots, "save_heatmap_overlay", spy)
    above = _maps()[1]
    names = ["a", "bad", "c", "d", "e", "f"]
    out = tmp_path / "out"
    with ScoreWriter(out, overlays=True, threshold=T, max_pending=2) as writer:
        returned = []
        for n in names:
            returned.append(writer.add(_image_result(str(tmp_path / f"{n}.png"), above, 0.3)))
            assert len(writer._pending) <= 2  # bounded: add waited for the oldest
        failed = ScoreResult(str(tmp_path / "broken.png"), error=f"{tmp_path / 'broken.png'}: not an image")
        assert writer.add(failed) is None
        assert writer.errors.rows[-1][1].endswith("not an image")  # at once, as the inference log reads it
    assert all(r is not None and r["heatmap"].endswith(f"{n}.png") for r, n in zip(returned, names))
    assert threading.current_thread().name not in threads and len(threads) == 1
    assert [os.path.basename(p) for p in order] == [f"{n}.png" for n in names]
    good = [str(tmp_path / f"{n}.png") for n in names if n != "bad"]
    with open(out / "scores.csv", newline="") as f:
        assert [r["path"] for r in csv.DictReader(f)] == good
    assert [r["path"] for r in writer.rows] == good
    with open(out / "errors.csv", newline="") as f:
        errors = [(r["path"], r["error"]) for r in csv.DictReader(f)]
    assert [p for p, _ in errors] == [str(tmp_path / "bad.png"), str(tmp_path / "broken.png")]  # input order
    assert "could not write its outputs (OSError: disk full)" in errors[0][1]
    assert all(os.path.exists(out / "heatmaps" / f"{n}.png") for n in names if n != "bad")


def test_writer_without_files_writes_rows_at_once(tmp_path):
    writer = ScoreWriter(tmp_path / "out")
    writer.add(_image_result(str(tmp_path / "a.png"), _maps()[0], 0.1))
    assert len((tmp_path / "out" / "scores.csv").read_text().strip().splitlines()) == 2  # header + the row
    writer.close()


def test_writer_does_not_make_the_file_size_map_of_a_png(tmp_path):
    """A PNG's map at its own size is not written (maps="nifti"), so it is never made: the overlay uses the model-size
    map, and a large image is not followed by a map of as many pixels."""
    path = str(tmp_path / "big.png")
    src = MedicalImage(np.full((1, 2000, 1500), 0.5, np.float32), np.eye(4), False, "pil", path)
    res = ScoreResult(path, {"image": path}, score=0.3, kind="image", source=src)
    res.model_map = np.linspace(0, 2 * T, 64 * 64, dtype=np.float32).reshape(64, 64)
    res.resample_map_on_read((2000, 1500), (2000, 1500))
    with ScoreWriter(tmp_path / "out", maps="nifti", overlays=True, threshold=T) as writer:
        row = writer.add(res)
    assert row["heatmap"] and os.path.isfile(row["heatmap"]) and row["anomaly_map"] == ""
    assert res.__dict__.get("_anomaly_map") is None and "_resample_to" in res.__dict__  # never resampled to 2000 x 1500
    assert res.anomaly_map.shape == (2000, 1500)  # ... though it still can be, when read
