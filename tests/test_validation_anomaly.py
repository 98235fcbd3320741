"""Synthetic validation anomalies (RandValidationAnomaly[d], synthetic_validation_set), the label-free validation
metrics and the SyntheticValidation handler with model selection (issue 10, items 3-4)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine
from monai.data import MetaTensor
from sklearn.metrics import roc_auc_score
from torch import nn

from monai_scrd.engines import ModelWriter, ScoringFitter, SyntheticValidation, synthetic_validation_metrics
from monai_scrd.engines.selection import VAL_AUROC_KEY, VAL_PIXEL_AUROC_KEY
from monai_scrd.scoring import pixel_auroc
from monai_scrd.transforms import (
    ANOMALY_FAMILIES,
    LOCAL_FAMILIES,
    ANOMALY_SIZES,
    RandValidationAnomaly,
    RandValidationAnomalyd,
    synthetic_validation_set,
)
from monai_scrd.transforms.validation_anomaly import _elliptical_radius


def _textured(n: int = 1, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth random 'tissue' in [0.2, 0.8], grey replicated on 3 channels: ``[n, 3, size, size]``."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 1, size // 4, size // 4, generator=g), size=(size, size), mode="bilinear")
    x = x + 0.15 * torch.rand(n, 1, size, size, generator=g)
    x = 0.2 + 0.6 * (x - x.amin()) / (x.amax() - x.amin())
    return x.repeat(1, 3, 1, 1)


def _support(t: RandValidationAnomaly, shape) -> torch.Tensor:
    p = t.params
    return _elliptical_radius(shape, p["center"], p["semi_axes"], p["angle"]) < 1.0


def test_same_seed_same_anomaly_other_seed_differs():
    img = _textured()[0]
    outs = []
    for seed in (3, 3, 4):
        t = RandValidationAnomaly()
        t.set_random_state(seed)
        outs.append([t(img) for _ in range(3)])
    for (a, ma), (b, mb) in zip(outs[0], outs[1]):
        assert torch.equal(a, b) and torch.equal(ma, mb)
    assert any(not torch.equal(a, c) for (a, _), (c, _) in zip(outs[0], outs[2]))
    d1 = RandValidationAnomalyd("image").set_random_state(5)({"image": img})
    d2 = RandValidationAnomalyd("image").set_random_state(5)({"image": img})
    assert torch.equal(d1["image_anomaly"], d2["image_anomaly"]) and torch.equal(d1["anomaly_mask"], d2["anomaly_mask"])


@pytest.mark.parametrize("family", ANOMALY_FAMILIES)
def test_mask_is_the_changed_pixels_inside_the_ellipse(family):
    img = _textured()[0]
    before = img.clone()
    t = RandValidationAnomaly(families=(family,), sizes=(1 / 4,), donors=_textured(3, seed=7))
    t.set_random_state(1)
    for _ in range(3):
        out, mask = t(img)
        assert torch.equal(img, before), "the input must not be modified"
        assert out.shape == img.shape and mask.shape == (1, 64, 64) and out.min() >= 0 and out.max() <= 1
        delta = (out - img).abs().amax(dim=0, keepdim=True)
        assert torch.equal(mask.bool(), delta > t.min_change)
        support = _support(t, img.shape[1:])
        assert not (delta[0][~support] > 0).any(), "pixels outside the ellipse changed"
        assert mask.sum() >= t.min_mask_fraction * support.sum() > 0


def test_each_family_does_what_it_says():
    img = _textured()[0]
    for family in LOCAL_FAMILIES:
        t = RandValidationAnomaly(families=(family,), sizes=(1 / 4,))
        t.set_random_state(2)
        out, mask = t(img)
        m = mask[0].bool()
        delta = (out - img)[0][m]
        if family == "blob":  # one sign, smooth Gaussian bump
            assert (delta > 0).all() or (delta < 0).all()
        elif family == "blur":  # less high-frequency energy in the region
            lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3)
            hf_in = F.conv2d(img[:1][None], lap, padding=1)[0, 0][m].abs().mean()
            hf_out = F.conv2d(out[:1][None], lap, padding=1)[0, 0][m].abs().mean()
            assert hf_out < 0.8 * hf_in
        else:  # contrast: intensities spread by a factor != 1 around the region's mean
            gain = t.params["gain"]
            ratio = out[0][m].std() / img[0][m].std()
            assert (ratio > 1.0) == (gain > 1.0) and abs(ratio - 1.0) > 0.1


def test_patch_blends_a_shifted_donor_in():
    img, donors = _textured()[0], _textured(2, seed=7)
    t = RandValidationAnomaly(families=("patch",), sizes=(1 / 4,), donors=donors)
    t.set_random_state(3)
    out, mask = t(img)
    p = t.params
    shifted = torch.roll(donors[p["donor"]], shifts=p["shift"], dims=(1, 2))
    r, c = (int(round(v)) for v in p["center"])  # the window is 1 at the centre
    assert torch.allclose(out[:, r, c], (img + p["blend"] * (shifted - img))[:, r, c].clamp(0, 1), atol=1e-6)
    assert 0.5 <= p["blend"] <= 1.0 and mask.sum() > 0
    vs = synthetic_validation_set(_textured(4, 64), seed=0, families=("patch",))
    assert vs.families == ["patch"] * 12 and all(m.any() for m in vs.masks)  # donors: the other normals of the set
    with pytest.raises(ValueError, match="donors"):
        RandValidationAnomaly(families=("patch",))


def test_sizes_and_types():
    img = _textured(size=128)[0]
    t = RandValidationAnomaly(families=("blob",))
    t.set_random_state(0)
    for _ in range(6):
        t(img)
        assert t.params["size"] in ANOMALY_SIZES
        assert math.isclose(t.params["semi_axes"][0], t.params["size"] * 128 / 2)
    out, mask = t(img.numpy().astype(np.float64))
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and isinstance(mask, np.ndarray)
    meta = MetaTensor(img, meta={"filename_or_obj": "a.png"})
    out, mask = t(meta)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "a.png"
    copy, empty = RandValidationAnomaly(prob=0.0)(img)
    assert torch.equal(copy, img) and empty.sum() == 0
    with pytest.raises(ValueError, match="families"):
        RandValidationAnomaly(families=("simplex",))


def test_dict_wrapper_keeps_input_and_shares_the_region():
    img = _textured()[0]
    d = RandValidationAnomalyd(["image", "other"]).set_random_state(0)({"image": img, "other": img.clone()})
    assert torch.equal(d["image"], img) and torch.equal(d["image_anomaly"], d["other_anomaly"])
    assert d["anomaly_mask"].shape == (1, 64, 64) and d["anomaly_mask"].sum() > 0
    d = RandValidationAnomalyd("image", prob=0.0)({"image": img})
    assert torch.equal(d["image_anomaly"], img) and d["anomaly_mask"].sum() == 0
    with pytest.raises(ValueError):
        RandValidationAnomalyd("image", mask_key="image")


def test_validation_set_balanced_and_fixed_by_seed():
    normals = _textured(6, 64)
    vs = synthetic_validation_set(normals, seed=0)
    assert vs.anomalies.shape == (18, 3, 64, 64) and vs.masks.shape == (18, 1, 64, 64)
    assert {f: vs.families.count(f) for f in LOCAL_FAMILIES} == {f: 6 for f in LOCAL_FAMILIES}
    assert {s: vs.sizes.count(s) for s in ANOMALY_SIZES} == {s: 6 for s in ANOMALY_SIZES}
    assert all(m.any() for m in vs.masks)
    assert synthetic_validation_set(normals.clone(), seed=0).fingerprint() == vs.fingerprint()
    assert synthetic_validation_set(normals, seed=1).fingerprint() != vs.fingerprint()
    assert vs.summary()["n_anomalous"] == 18
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        synthetic_validation_set(normals * 2)


# ----------------------------------------------------------------------------------------------- metrics / handler
class Oracle(nn.Module):
    """Eval forward returns ``w * truth + (1 - w) * (1 - truth)`` where ``truth`` is the anomaly mask of the input
    (looked up in the validation set; zeros for normals): ``w = 1`` is a perfect detector, ``w = 0`` a perverse one."""

    def __init__(self, vs, w: float = 1.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(w)))
        self.vs = vs

    def forward(self, x):
        truth = torch.zeros(x.shape[0], 1, *x.shape[2:])
        for i, img in enumerate(x):
            hits = [k for k in range(len(self.vs.anomalies)) if torch.equal(self.vs.anomalies[k], img)]
            if hits:
                truth[i] = self.vs.masks[hits[0]].float()
        return self.w * truth + (1 - self.w) * (1 - truth)


def test_metrics_orientation_with_an_oracle():
    vs = synthetic_validation_set(_textured(3, 32), seed=0)
    good = synthetic_validation_metrics(Oracle(vs, 1.0), vs, batch_size=4)
    bad = synthetic_validation_metrics(Oracle(vs, 0.0), vs, batch_size=4)
    assert good["image_auroc"] == 1.0 and good["pixel_auroc"] == 1.0
    assert bad["image_auroc"] == 0.0 and bad["pixel_auroc"] == 0.0
    assert set(good["image_auroc_by_family"]) == set(LOCAL_FAMILIES)
    assert good["n_normal"] == 3 and good["n_anomalous"] == 9 and good["fingerprint"] == vs.fingerprint()
    masks = np.zeros(10)
    masks[3] = 1
    assert pixel_auroc(masks, np.arange(10.0), max_pixels=None) == pytest.approx(3 / 9)  # beats 3 of the 9 negatives
    with pytest.raises(ValueError, match="both"):
        pixel_auroc(np.zeros(4), np.arange(4.0))


def test_tiny_scrd_metrics_repeatable_and_mode_restored():
    from monai_scrd.networks import SCRD

    torch.manual_seed(0)
    net = SCRD("efficientnet_lite0", pretrained=False)
    normals = _textured(2, 32)[:, :1]  # [N, 1, H, W], as benchmarks/quality.py holds them
    first = synthetic_validation_metrics(net, normals, seed=0, batch_size=8, anomalies_per_normal=1)
    assert net.training, "the model's train mode must be restored"
    again = synthetic_validation_metrics(net, normals, seed=0, batch_size=8, reduction="mean", anomalies_per_normal=1)
    assert first == again
    assert first["n_normal"] == 2 and first["n_anomalous"] == 2
    # the AUROCs are those of the model's own maps: recomputed with scikit-learn from its eval-mode maps of the same
    # set (image score: the map's mean; pixels: every pixel, normal images giving negatives only)
    vs = synthetic_validation_set(normals, seed=0, anomalies_per_normal=1)
    net.eval()
    with torch.no_grad():
        maps = torch.cat([net(vs.normals), net(vs.anomalies)])
    net.train()
    labels = np.r_[np.zeros(len(vs.normals)), np.ones(len(vs.anomalies))]
    assert first["image_auroc"] == pytest.approx(roc_auc_score(labels, maps.flatten(1).mean(1).numpy()))
    masks = torch.cat([torch.zeros(len(vs.normals), *maps.shape[1:], dtype=torch.bool), vs.masks.bool()])
    assert first["pixel_auroc"] == pytest.approx(roc_auc_score(masks.flatten().numpy(), maps.flatten().numpy()))


def _fake_training(net: Oracle, schedule: dict[int, float], handlers) -> Engine:
    """An engine whose iteration ``i`` sets the oracle's weight to ``schedule[i]`` (a stand-in for training)."""

    def step(engine, _):
        with torch.no_grad():
            net.w.fill_(schedule[engine.state.iteration])

    engine = Engine(step)
    engine.network = net
    for h in handlers:
        h.attach(engine)
    return engine


@pytest.mark.parametrize("model_selection", ["last", "best_synthetic"])
def test_handler_keeps_the_best_and_selects(model_selection, tmp_path):
    normals = _textured(2, 32)
    sv = SyntheticValidation(normals, interval=1, seed=0, model_selection=model_selection, batch_size=4)
    net = Oracle(sv.validation_set, 0.5)
    from monai_scrd.scoring import Scorer
    from monai_scrd.scoring.dataset import Prepared

    # the validation normals as the scorer's prepared files (what the bundle's ScoringDataset loader gives)
    prepared = [[Prepared(f"normal{i}", {"image": f"normal{i}"}, images=torch.as_tensor(normals[i : i + 1]))
                 for i in range(len(normals))]]
    fitter = ScoringFitter(net, scorer=Scorer(net, image_size=32, amp=False, channels_last=False), val_loader=prepared,
                           selection=sv)
    writer = ModelWriter(net, str(tmp_path / "model.pt"), str(tmp_path / "threshold.json"))
    engine = _fake_training(net, {1: 0.2, 2: 1.0, 3: 0.0}, [sv, fitter, writer])
    engine.run([0, 1, 2], max_epochs=1)
    assert [r["iteration"] for r in sv.history] == [1, 2, 3]
    assert sv.best["iteration"] == 2 and sv.best[VAL_AUROC_KEY] == 1.0 and sv.last[VAL_AUROC_KEY] == 0.0
    assert sv.best_state_dict()["w"].item() == 1.0
    assert engine.state.metrics[VAL_PIXEL_AUROC_KEY] == 0.0  # the last evaluation's
    info = json.loads((tmp_path / "threshold.json").read_text())
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["model"]["w"].item()
    assert info["best_synthetic"] == {"iteration": 2, VAL_AUROC_KEY: 1.0, VAL_PIXEL_AUROC_KEY: 1.0}
    assert info["last"]["iteration"] == 3 and len(info["synthetic_validation"]["evaluations"]) == 3
    if model_selection == "best_synthetic":
        assert saved == 1.0 and info["selected_iteration"] == 2
    else:
        assert saved == 0.0 and info["selected_iteration"] == 3
    assert info["model_selection"] == model_selection


def test_validation_set_is_the_same_at_every_evaluation():
    """Evaluating a fixed model at two iterations must give the same AUROCs: fails if the set were redrawn."""

    class Brightness(nn.Module):  # a deterministic, input-dependent anomaly map
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.scale * F.avg_pool2d(x.mean(1, keepdim=True), 5, stride=1, padding=2)

    items = [{"image": img, "error": ""} for img in _textured(3, 32)]
    items.append({"image": torch.zeros(3, 32, 32), "error": "bad.png: cannot read"})  # skipped
    sv = SyntheticValidation(items, interval=1, seed=0)
    engine = Engine(lambda e, b: None)  # no training: the model stays fixed
    engine.network = Brightness()
    sv.attach(engine)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    engine.run([0, 1], max_epochs=1)
    assert torch.equal(torch.get_rng_state(), torch_state) and np.array_equal(np.random.get_state()[1], np_state)
    first, second = sv.history
    assert (first[VAL_AUROC_KEY], first[VAL_PIXEL_AUROC_KEY]) == (second[VAL_AUROC_KEY], second[VAL_PIXEL_AUROC_KEY])
    assert 0.0 < first[VAL_PIXEL_AUROC_KEY] < 1.0
    assert sv.validation_set.normals.shape[0] == 3
    rebuilt = SyntheticValidation(items[:3], seed=0).validation_set
    assert rebuilt.fingerprint() == sv.validation_set.fingerprint() == sv.result["fingerprint"]
