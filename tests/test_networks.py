import pytest
import torch

from monai_scrd.checkpoint import CheckpointError
from monai_scrd.losses import build_loss
from monai_scrd.networks import SCRD, TeacherEncoder, efficientnet_lite0_weights_path

SIZE = 64


@pytest.fixture(scope="module")
def lite0_model():
    torch.manual_seed(0)
    return SCRD("efficientnet_lite0", pretrained=True)


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_feature_shapes_match_between_teacher_and_student(backbone):
    model = SCRD(backbone, pretrained=False)
    u, v, alpha = model.features(torch.rand(2, 3, SIZE, SIZE))
    assert [t.shape for t in u] == [t.shape for t in v]
    assert [t.shape[-1] for t in u] == [SIZE // 4, SIZE // 8, SIZE // 16]
    assert alpha.shape == (2, 3)
    torch.testing.assert_close(alpha.sum(1), torch.ones(2))


def test_grayscale_input_is_replicated(lite0_model):
    x = torch.rand(1, 1, SIZE, SIZE)
    for a, b in zip(lite0_model.encode(x), lite0_model.encode(x.expand(-1, 3, -1, -1))):
        torch.testing.assert_close(a, b)


def test_scale_head_gets_gradient_and_teacher_none(lite0_model):
    model = lite0_model.train()
    model.zero_grad()
    x = torch.rand(2, 3, SIZE, SIZE)
    x_noisy = (x + 0.2 * torch.rand_like(x)).clamp(0, 1)
    u, v, alpha = model.features(x)
    z = model.encode(x_noisy)
    loss = build_loss(True)(u, v, z, alpha)
    loss.backward()
    head_grad = model.scale_head.linear.weight.grad
    assert head_grad is not None and head_grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert model.decoder.stages[0][0][0].weight.grad.abs().sum() > 0


def test_teacher_stays_in_eval_mode_and_frozen():
    teacher = TeacherEncoder("resnet18", pretrained=False)
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    model = SCRD("resnet18", pretrained=False).train()
    assert not model.teacher.training and model.decoder.training


def test_switches_build_rd4ad_and_crd():
    rd = SCRD("resnet18", pretrained=False, contrastive=False, scale_adaptive=False)
    assert rd.scale_head is None and not rd.contrastive
    _, _, alpha = rd.features(torch.rand(1, 3, SIZE, SIZE))
    torch.testing.assert_close(alpha, torch.ones(1, 3))


def test_eval_forward_returns_single_anomaly_map(lite0_model):
    model = lite0_model.eval()
    with torch.no_grad():
        amap = model(torch.rand(2, 3, SIZE, SIZE))
    assert isinstance(amap, torch.Tensor) and amap.shape == (2, 1, SIZE, SIZE)
    assert torch.all(amap >= 0)


def test_lite0_pretrained_weights_are_loaded():
    random = TeacherEncoder("efficientnet_lite0", pretrained=False)
    loaded = TeacherEncoder("efficientnet_lite0", pretrained=True)
    stem = "stem.0.weight"
    checkpoint = torch.load(efficientnet_lite0_weights_path(), weights_only=True)
    torch.testing.assert_close(loaded.state_dict()[stem], checkpoint["_conv_stem.weight"])
    assert not torch.equal(random.state_dict()[stem], loaded.state_dict()[stem])


def test_local_resnet_weights_file_loads(tmp_path):
    import torchvision

    net = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    teacher = TeacherEncoder("resnet18", pretrained=str(path))
    torch.testing.assert_close(teacher.stem[0].weight, net.conv1.weight)


def test_mismatched_teacher_checkpoint_fails_clearly(tmp_path):
    import torchvision

    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(CheckpointError, match=r"resnet34\.pth: checkpoint does not match ResNet"):
        TeacherEncoder("resnet18", pretrained=str(path))
    with pytest.raises(CheckpointError, match="efficientnet_lite0"):
        TeacherEncoder("efficientnet_lite0", pretrained=str(path))


def test_unknown_backbone_is_rejected():
    with pytest.raises(ValueError, match="backbone='vgg16' is not supported"):
        SCRD("vgg16", pretrained=False)


def test_torchscript_matches_eager(lite0_model):
    model = lite0_model.eval()
    x = torch.rand(1, 3, SIZE, SIZE)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
