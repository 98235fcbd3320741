"""The scoring lifecycle fitted on normals (monai_scrd.scoring.fitting): calibration of the scored statistic, the
label-free choice, the cross-fitted threshold and its false-positive rate, volume thresholds, and what is saved."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_scrd.networks import SCRD
from monai_scrd.scoring import Scorer, fit_scoring, fit_threshold, volume_threshold
from monai_scrd.scoring.fitting import apply_fit, scale_statistics


def test_fit_threshold_order_statistic():
    assert fit_threshold([1.0, 2.0, 3.0, np.nan], 50) == 2.0
    with pytest.raises(ValueError):
        fit_threshold([np.nan])


def test_threshold_flags_the_nominal_share_of_new_normals():
    """95th percentile of 100 validation normals: new normals are flagged at 5% on average; numpy's default
    interpolation flags more."""
    rng = np.random.default_rng(0)
    draws = [(rng.standard_normal(100), rng.standard_normal(2000)) for _ in range(400)]
    fpr = [float((new >= fit_threshold(val, 95)).mean()) for val, new in draws]
    assert abs(np.mean(fpr) - 0.05) < 0.003
    assert np.mean([float((new >= np.percentile(val, 95)).mean()) for val, new in draws]) > 0.055


@pytest.mark.parametrize("n_slices", [1, 6, 40])
def test_all_normal_series_flagged_at_the_nominal_rate(n_slices):
    """Volumes scored as the maximum of their slice scores, decided by the scorer with the threshold for that many
    slices, fitted on normal validation slices: all-normal series are flagged at about 5%."""
    rng = np.random.default_rng(n_slices)
    validation = rng.gamma(2.0, 1.0, 400)  # skewed, like top-percent scores
    record = {"threshold": fit_threshold(validation, 95), "percentile": 95, "validation_scores": validation.tolist()}
    scorer = Scorer(torch.nn.Identity(), threshold=record)
    series = rng.gamma(2.0, 1.0, (4000, n_slices)).max(1)
    flagged = np.mean([scorer.decide(float(s), n_slices) for s in series])
    assert abs(flagged - 0.05) < 0.015, flagged
    if n_slices > 1:  # the per-image threshold would flag far more
        assert np.mean(series >= record["threshold"]) > 0.2
        assert scorer.threshold_for(n_slices) == pytest.approx(volume_threshold(validation, 95, n_slices))


def _maps(n: int, rng, kind: str | None = None) -> torch.Tensor:
    """Per-scale maps [n, 3, 32, 32]: noise with another typical size per scale; anomalies either a small bright
    spot on scale 2 ("local") or a weak shift of all of scale 3 ("diffuse")."""
    maps = torch.from_numpy(rng.standard_normal((n, 3, 32, 32)).astype(np.float32))
    maps = maps * torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1) + torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)
    maps = maps + torch.from_numpy(rng.standard_normal((n, 3, 1, 1)).astype(np.float32)) * 0.05  # image-level spread
    if kind == "local":
        maps[:, 1, 10:13, 10:13] += 1.5
    elif kind == "diffuse":
        maps[:, 2] += 0.1
    return maps


@pytest.mark.parametrize("kind, scales, reductions", [("local", "scale 2", ("top1%", "top5%")), ("diffuse", "scale 3", ("mean", "top20%"))])
def test_auto_chooses_the_scale_and_reduction_that_separate_the_anomalies(kind, scales, reductions):
    rng = np.random.default_rng(1)
    normals, anomalies = _maps(60, rng), _maps(60, rng, kind)
    fit = fit_scoring(normals, anomalies, list(range(60)), "auto", "auto", percentile=95)
    assert (fit.scales, fit.reduction in reductions) == (scales, True), (fit.scales, fit.reduction)
    record = fit.record()
    assert len(record["scoring_choice"]["candidates"]) == 24 and record["scoring_choice"]["synthetic_auroc"] > 0.9
    assert fit.threshold == fit_threshold(fit.validation_scores, 95)  # the threshold of the out-of-fold scores


def test_calibration_standardises_the_scored_statistic():
    rng = np.random.default_rng(2)
    normals = _maps(40, rng)
    fit = fit_scoring(normals, None, (), "uniform", "top5%")
    stats = scale_statistics(normals, "top5%")
    z = (stats - torch.tensor(fit.scale_mean)) / torch.tensor(fit.scale_std)
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-4) and torch.allclose(z.std(0), torch.ones(3), atol=1e-4)
    assert (fit.scales, fit.reduction) == ("all scales", "top5%")  # no anomalies: the fixed default, no choice
    with pytest.raises(ValueError, match="scale_weighting='max' was removed"):
        fit_scoring(normals, None, (), "max", "mean")


def test_auto_weights_are_saved_with_the_model_and_old_weights_load():
    net = SCRD("resnet18", pretrained=False, scale_weighting="auto").eval()
    rng = np.random.default_rng(3)
    fit = fit_scoring(_maps(20, rng), _maps(20, rng, "local"), list(range(20)), "auto", "auto")
    apply_fit(net, fit)
    state = net.state_dict()
    assert torch.allclose(state["anomaly_map.scale_weights"], torch.tensor(fit.weights))
    again = SCRD("resnet18", pretrained=False, scale_weighting="auto")
    again.load_state_dict(state)
    assert torch.equal(again.anomaly_map.scale_weights, state["anomaly_map.scale_weights"])
    older = {k: v for k, v in state.items() if k != "anomaly_map.scale_weights"}  # weights saved before the buffer
    again.load_state_dict(older)
    assert torch.allclose(again.anomaly_map.scale_weights, torch.full((3,), 1 / 3))
    x = torch.rand(2, 3, 64, 64)
    u, v, alpha = net.features(x)
    maps = net.anomaly_map.scale_maps(u, v, (64, 64))
    expected = (maps * torch.tensor(fit.weights).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert torch.allclose(net(x), expected, atol=1e-5)  # forward = the weighted per-scale maps
