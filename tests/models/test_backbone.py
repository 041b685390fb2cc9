import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.models.resnet import Bottleneck as TorchvisionBottleneck

from iadet.convert import convert_torchvision_resnet
from iadet.models.backbone import RESNET_SPECS, ResNet, build_resnet
from iadet.models.norm import BatchNorm2dFrozenStats, FrozenBatchNorm2d

COCO128 = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "coco128"


def torchvision_resnet(name: str) -> nn.Module:
    """torchvision's model of that name; torchvision ships no resnext101_32x4d builder."""
    if name == "resnext101_32x4d":
        return torchvision.models.ResNet(TorchvisionBottleneck, [3, 4, 23, 3], groups=32, width_per_group=4)
    return getattr(torchvision.models, name)(weights=None)


def torchvision_features(model: nn.Module, x: torch.Tensor) -> list:
    """C3, C4, C5 of a torchvision classifier, through its own layers."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    c2 = model.layer1(x)
    c3 = model.layer2(c2)
    c4 = model.layer3(c3)
    return [c3, c4, model.layer4(c4)]


def coco_image(short_side: int = 320) -> torch.Tensor:
    """The first COCO128 val2017 image, short side resized, ImageNet-normalised: (1, 3, H, W)."""
    folder = COCO128 / "val2017"
    images = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not images:
        pytest.skip(f"COCO128 images not found under {folder.resolve()}")
    image = Image.open(images[0]).convert("RGB")
    scale = short_side / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
    return ((x - mean) / std)[None]


@functools.lru_cache(maxsize=1)
def torchvision_reference(name: str):
    """(state dict, C3-C5 on the COCO image) of a seeded random torchvision model whose
    BatchNorms are far from the identity."""
    x = coco_image()
    torch.manual_seed(0)
    model = torchvision_resnet(name).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    with torch.no_grad():
        features = torchvision_features(model, x)
    return model.state_dict(), features, x


@pytest.fixture(scope="module", autouse=True)
def _free_reference_cache():
    yield
    torchvision_reference.cache_clear()  # a ResNeXt-101 state dict is 350 MB


# The acceptance test: torchvision weights converted and loaded give torchvision's features.
# name varies slowest, so the one-entry cache of torchvision_reference serves both norms.
@pytest.mark.parametrize("norm", ["frozen", "frozen_stats"])
@pytest.mark.parametrize("name", ["resnet50", "resnet101", "resnext101_32x8d"])
def test_features_equal_torchvision_on_a_coco_image(name, norm):
    state_dict, expected, x = torchvision_reference(name)
    model = build_resnet(name, norm=norm)
    model.load_state_dict(convert_torchvision_resnet(state_dict), strict=True)
    model.train()  # frozen statistics must hold even in train mode
    with torch.no_grad():
        features = model(x)
    assert len(features) == 3
    for ours, theirs, channels in zip(features, expected, model.out_channels):
        assert ours.shape == theirs.shape and ours.shape[1] == channels
        tolerance = 1e-4 * theirs.abs().max().item()
        assert (ours - theirs).abs().max().item() <= tolerance


def test_torchvision_weight_file_loads_through_load_torchvision_weights(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save({"model": {"module." + k: v for k, v in reference.state_dict().items()}}, path)
    model = ResNet(depth=18, norm="frozen")
    model.load_torchvision_weights(path)
    ours = model.state_dict()
    for key, value in reference.state_dict().items():
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(ours[key], value, rtol=0, atol=0)


def test_wrong_checkpoint_names_the_file_and_the_keys(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError) as info:
        ResNet(depth=34).load_torchvision_weights(path)
    message = str(info.value)
    assert "resnet18.pth" in message and "missing" in message and "layer1.2.conv1.weight" in message
    with pytest.raises(ValueError, match="shape mismatch.*layer1.0.conv1.weight"):
        ResNet(depth=50).load_torchvision_weights(path)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        ResNet(depth=18).load_torchvision_weights(tmp_path / "nowhere.pth")


@pytest.mark.parametrize("name", list(RESNET_SPECS))
def test_names_and_shapes_equal_torchvision(name):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        theirs = torchvision_resnet(name).state_dict()
        ours = build_resnet(name).state_dict()
    expected = {k: v.shape for k, v in theirs.items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.items()} == expected


@pytest.mark.parametrize(
    "name, expected",
    # torchvision's documented totals minus the 2048 x 1000 + 1000 classifier
    [("resnet50", 25_557_032 - 2_049_000), ("resnext101_32x8d", 88_791_336 - 2_049_000)],
)
def test_parameter_count_equals_torchvision_without_fc(name, expected):
    with torch.device("meta"):
        theirs = torchvision_resnet(name)
        ours = build_resnet(name, frozen_stages=-1)
    fc = sum(p.numel() for p in theirs.fc.parameters())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters()) - fc
    assert sum(p.numel() for p in ours.parameters()) == expected


@pytest.mark.parametrize("name", list(RESNET_SPECS))
def test_output_channels_and_strides(name):
    depth, _, _ = RESNET_SPECS[name]
    expansion = 1 if depth in (18, 34) else 4
    model = build_resnet(name, norm="frozen", out_stages=(1, 2, 3, 4)).eval()
    assert model.out_channels == [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
    assert model.out_strides == [4, 8, 16, 32]
    with torch.no_grad():
        features = model(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in features] == [
        (1, c, 64 // s, 64 // s) for c, s in zip(model.out_channels, model.out_strides)
    ]


def test_default_outputs_are_c3_c4_c5():
    model = ResNet(depth=18).eval()
    assert model.out_channels == [128, 256, 512] and model.out_strides == [8, 16, 32]
    with torch.no_grad():
        features = model(torch.randn(2, 3, 96, 64))
    assert [tuple(f.shape) for f in features] == [(2, 128, 12, 8), (2, 256, 6, 4), (2, 512, 3, 2)]
    assert build_resnet("resnet50").out_channels == [512, 1024, 2048]


@pytest.mark.parametrize("frozen_stages", [-1, 0, 1, 2, 4])
def test_frozen_stages_set_requires_grad(frozen_stages):
    model = ResNet(depth=18, norm="bn", frozen_stages=frozen_stages)
    parts = {0: [model.conv1, model.bn1], 1: [model.layer1], 2: [model.layer2],
             3: [model.layer3], 4: [model.layer4]}
    for stage, modules in parts.items():
        for module in modules:
            for p in module.parameters():
                assert p.requires_grad == (stage > frozen_stages)


def _running_stats(modules):
    return [b.clone() for m in modules for b in (m.running_mean, m.running_var)]


def test_frozen_stages_stay_in_eval_mode_after_train():
    model = ResNet(depth=18, norm="bn", frozen_stages=1)
    model.eval()
    model.train()
    frozen_bns = [model.bn1] + [m for m in model.layer1.modules() if isinstance(m, nn.BatchNorm2d)]
    live_bns = [m for m in model.layer2.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not any(m.training for m in [model.conv1, model.bn1, model.layer1, *frozen_bns])
    assert all(m.training for m in [model.layer2, *live_bns])

    frozen_before, live_before = _running_stats(frozen_bns), _running_stats(live_bns)
    model(torch.randn(2, 3, 64, 64))
    for before, after in zip(frozen_before, _running_stats(frozen_bns)):
        torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert any(not torch.equal(a, b) for a, b in zip(live_before, _running_stats(live_bns)))


def test_frozen_stats_never_update_but_trainable_stages_get_gradients():
    model = ResNet(depth=18, norm="frozen_stats", frozen_stages=1)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, BatchNorm2dFrozenStats)]
    assert bns and not any(m.training for m in bns)
    before = _running_stats(bns)
    sum(f.sum() for f in model(torch.randn(2, 3, 64, 64))).backward()
    for a, b in zip(before, _running_stats(bns)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert model.layer2[0].bn1.weight.grad is not None
    assert not model.layer1[0].bn1.weight.requires_grad and model.layer1[0].bn1.weight.grad is None


def test_frozen_norm_trains_only_convs():
    model = ResNet(depth=18, norm="frozen", frozen_stages=-1)
    assert all(m.__class__ is not nn.BatchNorm2d for m in model.modules())
    assert all(p.dim() == 4 for p in model.parameters())  # conv kernels only
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())


def test_group_norm_mode_has_no_batchnorm():
    model = ResNet(depth=50, norm="gn", gn_groups=16, frozen_stages=-1)
    assert not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)) for m in model.modules())
    group_norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert group_norms and all(m.num_groups == 16 for m in group_norms)
    model.train()
    assert [f.shape[1] for f in model(torch.randn(2, 3, 64, 64))] == [512, 1024, 2048]


def test_random_init_is_kaiming_fan_out_and_unit_norm():
    torch.manual_seed(0)
    model = ResNet(depth=50, norm="bn")
    weight = model.layer3[0].conv2.weight  # 256 x 256 x 3 x 3, fan_out = 256 * 9
    assert abs(weight.std().item() - (2 / (256 * 9)) ** 0.5) < 0.05 * (2 / (256 * 9)) ** 0.5
    assert torch.equal(model.layer3[0].bn2.weight, torch.ones(256))
    assert torch.equal(model.layer3[0].bn2.bias, torch.zeros(256))


def test_invalid_arguments_are_explained():
    with pytest.raises(ValueError, match="depth"):
        ResNet(depth=42)
    with pytest.raises(ValueError, match="out_stages"):
        ResNet(depth=18, out_stages=(4, 3))
    with pytest.raises(ValueError, match="frozen_stages"):
        ResNet(depth=18, frozen_stages=5)
    with pytest.raises(ValueError, match="ResNeXt"):
        ResNet(depth=18, groups=32, width_per_group=4)
    with pytest.raises(ValueError, match="resnext101_32x8d"):
        build_resnet("resnet51")
    with pytest.raises(ValueError, match="from the name"):
        build_resnet("resnet50", depth=101)
