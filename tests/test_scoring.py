import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from monai_scrd.scoring import AnomalyMapGenerator, best_f1_threshold, detection_metrics, image_score, threshold_metrics


def test_anomaly_map_weights_scales_by_alpha_and_upsamples():
    torch.manual_seed(0)
    u = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)]
    v = [u[0].clone(), torch.randn(2, 6, 4, 4)]  # scale 0 perfect, scale 1 not
    alpha = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    amap = AnomalyMapGenerator(sigma=0)(u, v, alpha, (32, 32))
    assert amap.shape == (2, 1, 32, 32)
    assert amap[0].abs().max() < 1e-5  # only the perfect scale counts for sample 0
    assert amap[1].mean() > 0.5  # random features: 1 - cos ~ 1


def test_anomaly_map_smoothing_preserves_mean_and_reduces_peaks():
    u = [torch.zeros(1, 2, 16, 16)]
    u[0][:, 0] = 1.0
    v = [u[0].clone()]
    v[0][:, :, 8, 8] = torch.tensor([0.0, 1.0])  # one location orthogonal: distance 1
    raw = AnomalyMapGenerator(sigma=0)(u, v, torch.ones(1, 1), (64, 64))
    smooth = AnomalyMapGenerator(sigma=4)(u, v, torch.ones(1, 1), (64, 64))
    assert smooth.max() < raw.max()
    assert smooth.sum().item() == pytest.approx(raw.sum().item(), rel=0.05)


def test_image_score_mean_and_max():
    amap = torch.arange(8.0).view(2, 1, 2, 2)
    torch.testing.assert_close(image_score(amap), torch.tensor([1.5, 5.5]))
    torch.testing.assert_close(image_score(amap, "max"), torch.tensor([3.0, 7.0]))
    with pytest.raises(ValueError, match="'median'"):
        image_score(amap, "median")


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(50), np.ones(40)].astype(int)
    scores = np.r_[rng.normal(0, 1, 50), rng.normal(1, 1, 40)]
    m = detection_metrics(labels, scores)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert m["average_precision"] == pytest.approx(average_precision_score(labels, scores))
    # brute force the best F1 over all candidate thresholds
    best = max(f1_score(labels, scores >= t) for t in scores)
    assert m["f1"] == pytest.approx(best)
    pred = scores >= m["threshold"]
    assert m["accuracy"] == pytest.approx((pred == labels).mean())
    assert (m["n_normal"], m["n_anomalous"]) == (50, 40)
    assert best_f1_threshold(labels, scores) == m["threshold"]


def test_threshold_fitted_elsewhere():
    labels = [0, 0, 1, 1]
    scores = [0.1, 0.6, 0.5, 0.9]
    m = threshold_metrics(labels, scores, 0.55)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(f1_score(labels, [0, 1, 0, 1]))
    assert (m["precision"], m["recall"]) == (0.5, 0.5)


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="both normal"):
        detection_metrics([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        detection_metrics([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match=r"0 \(normal\) or 1"):
        detection_metrics([0, 2], [0.1, 0.2])


def test_smoothing_matches_scipy_gaussian_filter():
    from scipy.ndimage import gaussian_filter

    u = [torch.randn(1, 3, 16, 16)]
    v = [torch.randn(1, 3, 16, 16)]
    raw = AnomalyMapGenerator(sigma=0)(u, v, torch.ones(1, 1), (64, 64))
    smooth = AnomalyMapGenerator(sigma=4)(u, v, torch.ones(1, 1), (64, 64))
    expected = gaussian_filter(raw[0, 0].numpy(), sigma=4, mode="mirror")
    np.testing.assert_allclose(smooth[0, 0].numpy(), expected, atol=1e-5)
