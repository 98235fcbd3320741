import math

import pytest
import torch
import torch.nn.functional as F

from monai_scrd.losses import ContrastiveReverseDistillationLoss, ReverseDistillationLoss, build_loss


def _cos(a, b):
    a, b = a.flatten().tolist(), b.flatten().tolist()
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _feats(seed, batch=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, s, s, generator=g) for c, s in ((4, 4), (3, 2), (2, 1))]


def test_contrastive_loss_matches_hand_computation_of_eq4():
    u, v, z = _feats(0), _feats(1), _feats(2)
    alpha = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    eps = 1e-3
    expected = 0.0
    for b in range(2):
        for k in range(3):
            expected += alpha[b, k].item() * (1 - _cos(u[k][b], v[k][b])) / (1 - _cos(z[k][b], v[k][b]) + eps)
    expected /= 2
    got = ContrastiveReverseDistillationLoss(eps=eps)(u, v, z, alpha)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_ratio_of_sums_matches_algorithm_2():
    u, v, z = _feats(3), _feats(4), _feats(5)
    alpha = torch.tensor([[0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
    expected = 0.0
    for b in range(2):
        pull = sum(alpha[b, k].item() * (1 - _cos(u[k][b], v[k][b])) for k in range(3))
        push = sum(alpha[b, k].item() * (1 - _cos(z[k][b], v[k][b])) for k in range(3))
        expected += pull / (push + 1e-6)
    got = ContrastiveReverseDistillationLoss(ratio_of_sums=True)(u, v, z, alpha)
    assert got.item() == pytest.approx(expected / 2, rel=1e-5)


def test_eq2_without_alpha_is_unweighted_sum():
    u, v, z = _feats(6), _feats(7), _feats(8)
    loss = ContrastiveReverseDistillationLoss()
    ones = torch.ones(2, 3)
    assert loss(u, v, z).item() == pytest.approx(loss(u, v, z, ones).item())


def test_rd_loss_is_per_location_cosine_eq1():
    u, v = _feats(9), _feats(10)
    expected = sum((1 - F.cosine_similarity(a, b, dim=1)).mean().item() for a, b in zip(u, v))
    assert ReverseDistillationLoss()(u, v).item() == pytest.approx(expected, rel=1e-5)
    # identical features give zero loss
    assert ReverseDistillationLoss()(u, u).item() == pytest.approx(0.0, abs=1e-6)


def test_alpha_shape_is_checked():
    u, v, z = _feats(0), _feats(1), _feats(2)
    with pytest.raises(ValueError, match="alpha must have shape"):
        ContrastiveReverseDistillationLoss()(u, v, z, torch.ones(3, 2))


def test_build_loss_follows_contrastive_switch():
    assert isinstance(build_loss(True), ContrastiveReverseDistillationLoss)
    assert isinstance(build_loss(False), ReverseDistillationLoss)
    assert build_loss(True, ratio_of_sums=True).ratio_of_sums


def test_distillation_term_adds_eq1_weighted_by_alpha():
    u, v, z = _feats(11), _feats(12), _feats(13)
    alpha = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    plain = ContrastiveReverseDistillationLoss()(u, v, z, alpha)
    with_distill = ContrastiveReverseDistillationLoss(distillation_weight=0.5)(u, v, z, alpha)
    eq1 = ReverseDistillationLoss()(u, v, alpha)  # per-location cosine, alpha-weighted, batch mean
    assert with_distill.item() == pytest.approx(plain.item() + 0.5 * eq1.item(), rel=1e-5)


def test_location_contrast_matches_hand_computation():
    u, v, z = _feats(14), _feats(15), _feats(16)
    alpha = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    eps = 1e-3
    expected = 0.0
    for b in range(2):
        for k in range(3):
            pull = 1 - F.cosine_similarity(u[k][b], v[k][b], dim=0)
            push = 1 - F.cosine_similarity(z[k][b], v[k][b], dim=0)
            expected += alpha[b, k].item() * (pull / (push + eps)).mean().item()
    got = ContrastiveReverseDistillationLoss(eps=eps, contrast="location")(u, v, z, alpha)
    assert got.item() == pytest.approx(expected / 2, rel=1e-5)


def test_ratio_is_one_and_gradient_vanishes_where_noisy_equals_clean_teacher():
    """Why the distillation term exists: with z == u the Eq. 4 ratio is 1 and gives the student no gradient."""
    u, z = _feats(17), _feats(17)
    v = [t.clone().requires_grad_(True) for t in _feats(18)]
    loss = ContrastiveReverseDistillationLoss(eps=0.0)(u, v, z)
    loss.backward()
    assert loss.item() == pytest.approx(3.0, rel=1e-5)
    assert max(float(t.grad.abs().max()) for t in v) < 1e-5
    v2 = [t.detach().clone().requires_grad_(True) for t in v]
    ContrastiveReverseDistillationLoss(eps=0.0, distillation_weight=1.0)(u, v2, z).backward()
    assert max(float(t.grad.abs().max()) for t in v2) > 1e-3


def test_unknown_contrast_mode_is_refused():
    with pytest.raises(ValueError, match="contrast="):
        ContrastiveReverseDistillationLoss(contrast="pixel")
