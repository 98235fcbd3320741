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
    assert (m["precision"], m["recall"], m["false_positive_rate"]) == (0.5, 0.5, 0.5)
    assert threshold_metrics(labels, scores, 0.95)["false_positive_rate"] == 0.0


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


def test_scale_head_floor_and_temperature():
    from monai_scrd.networks import ScaleAdaptationHead

    phi = torch.randn(4, 8, 2, 2)
    bias = torch.tensor([20.0, 0.0, 0.0])  # a collapsed head: near one-hot softmax on scale 1
    heads = {}
    for name, kwargs in {"paper": {}, "floor": {"alpha_floor": 0.6}, "hot": {"temperature": 100.0}}.items():
        heads[name] = ScaleAdaptationHead(8, 3, **kwargs)
        with torch.no_grad():
            heads[name].linear.bias.copy_(bias)
    alpha = {name: head(phi) for name, head in heads.items()}
    for a in alpha.values():
        torch.testing.assert_close(a.sum(1), torch.ones(4))
    assert float(alpha["paper"].amax(1).min()) > 0.99
    assert float(alpha["floor"].min()) >= 0.6 / 3 - 1e-6
    assert float(alpha["hot"].amax(1).max()) < float(alpha["paper"].amax(1).min())
    with pytest.raises(ValueError):
        ScaleAdaptationHead(8, 3, alpha_floor=1.5)
    with pytest.raises(ValueError):
        ScaleAdaptationHead(8, 3, temperature=0.0)


def test_per_scale_calibration_standardises_each_scale():
    from monai_scrd.scoring import AnomalyMapGenerator

    torch.manual_seed(0)
    gen = AnomalyMapGenerator(sigma=0.0, num_scales=3)
    assert not gen.is_calibrated
    u = [torch.randn(6, 4, s, s) for s in (8, 4, 2)]
    v = [t + 0.3 * k * torch.randn_like(t) for k, t in enumerate(u, 1)]
    raw = gen.scale_scores(u, v)
    assert raw.shape == (6, 3)
    gen.calibrate(raw)
    assert gen.is_calibrated
    alpha = torch.ones(6, 3)
    score = image_score(gen(u, v, alpha, (16, 16)))
    # bilinear upsampling keeps a map's mean up to border effects; calibrated scores are sums of per-scale z-scores
    expected = ((raw - raw.mean(0)) / raw.std(0)).sum(1)
    torch.testing.assert_close(score, expected, atol=0.15, rtol=0.0)
    uniform = AnomalyMapGenerator(sigma=0.0, num_scales=3, scale_weighting="uniform")
    uniform.load_state_dict(gen.state_dict())
    one_hot = torch.tensor([[1.0, 0.0, 0.0]]).expand(6, 3)
    torch.testing.assert_close(image_score(uniform(u, v, one_hot, (16, 16))), score / 3)
    with pytest.raises(ValueError, match="at least 2 normal images"):
        gen.calibrate(raw[:1])
    with pytest.raises(ValueError, match="vary between images"):
        gen.calibrate(torch.ones(4, 3))
    with pytest.raises(ValueError, match="scale_weighting"):
        AnomalyMapGenerator(scale_weighting="median")
    with pytest.raises(ValueError, match="scale_weighting='max' was removed"):  # a finished experiment
        AnomalyMapGenerator(scale_weighting="max")


def test_image_score_top_fraction():
    amap = torch.arange(100, dtype=torch.float32).view(1, 1, 10, 10)  # values 0..99
    assert image_score(amap, "top5%").item() == pytest.approx((95 + 96 + 97 + 98 + 99) / 5)
    assert image_score(amap, "top0.1%").item() == 99.0  # at least one value
    assert image_score(amap, "top100%").item() == image_score(amap, "mean").item()
    assert image_score(amap, "max").item() == 99.0
    for bad in ("top0%", "top101%", "top5", "median"):
        with pytest.raises(ValueError, match="top<P>%"):
            image_score(amap, bad)
