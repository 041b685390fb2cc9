import pytest
import torch
import torchvision
from torch import nn

from iadet.models.norm import BatchNorm2dFrozenStats, FrozenBatchNorm2d, build_norm


def _random_stats(num_features: int, generator: torch.Generator) -> dict:
    """BatchNorm2d buffers far from the identity, so a wrong formula shows."""
    return {
        "weight": torch.rand(num_features, generator=generator) + 0.5,
        "bias": torch.randn(num_features, generator=generator),
        "running_mean": torch.randn(num_features, generator=generator),
        "running_var": torch.rand(num_features, generator=generator) * 2 + 0.1,
    }


def test_frozen_batchnorm_equals_torchvision_and_batchnorm_eval():
    g = torch.Generator().manual_seed(0)
    stats = _random_stats(16, g)
    x = torch.randn(2, 16, 5, 7, generator=g) * 3

    ours = FrozenBatchNorm2d(16)
    ours.load_state_dict(stats)
    reference = torchvision.ops.FrozenBatchNorm2d(16)
    reference.load_state_dict(stats)
    bn = nn.BatchNorm2d(16).eval()
    bn.load_state_dict(stats, strict=False)  # keeps its own num_batches_tracked

    y = ours(x)
    torch.testing.assert_close(y, reference(x), rtol=0, atol=0)  # same arithmetic, bit for bit
    torch.testing.assert_close(y, bn(x), rtol=1e-5, atol=1e-5)


def test_frozen_batchnorm_loads_a_batchnorm_state_dict_strictly_and_has_no_parameters():
    bn = nn.BatchNorm2d(8)
    bn.num_batches_tracked += 7
    frozen = FrozenBatchNorm2d(8)
    frozen.load_state_dict(bn.state_dict(), strict=True)  # num_batches_tracked ignored
    assert list(frozen.parameters()) == []
    assert set(frozen.state_dict()) == {"weight", "bias", "running_mean", "running_var"}


@pytest.mark.parametrize(
    "kind, cls, trainable",
    [
        ("frozen_stats", BatchNorm2dFrozenStats, True),
        ("frozen", FrozenBatchNorm2d, False),
        ("bn", nn.BatchNorm2d, True),
        ("gn", nn.GroupNorm, True),
    ],
)
def test_build_norm_kinds(kind, cls, trainable):
    layer = build_norm(kind, 64)
    assert type(layer) is cls
    assert (sum(p.numel() for p in layer.parameters()) == 128) == trainable
    assert layer(torch.randn(2, 64, 3, 3)).shape == (2, 64, 3, 3)


def test_frozen_stats_keeps_its_statistics_in_train_mode_and_trains_its_affine():
    g = torch.Generator().manual_seed(1)
    stats = _random_stats(4, g)
    layer = build_norm("frozen_stats", 4)
    layer.load_state_dict(stats, strict=False)
    reference = nn.BatchNorm2d(4).eval()
    reference.load_state_dict(stats, strict=False)

    layer.train()
    assert not layer.training
    x = torch.randn(3, 4, 6, 6, generator=g) + 5  # batch statistics far from the running ones
    y = layer(x)
    torch.testing.assert_close(layer.running_mean, stats["running_mean"], rtol=0, atol=0)
    torch.testing.assert_close(layer.running_var, stats["running_var"], rtol=0, atol=0)
    torch.testing.assert_close(y, reference(x))
    y.sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad is not None


def test_frozen_stats_is_a_batchnorm2d_for_code_that_checks():
    # Weight-decay filters and state-dict tools test isinstance(m, nn.BatchNorm2d).
    assert isinstance(build_norm("frozen_stats", 8), nn.BatchNorm2d)


def test_group_norm_uses_the_requested_groups():
    layer = build_norm("gn", 64, gn_groups=16)
    assert layer.num_groups == 16 and layer.num_channels == 64
    with pytest.raises(ValueError, match="divisible"):
        build_norm("gn", 48, gn_groups=32)


def test_unknown_kind_lists_the_valid_kinds():
    with pytest.raises(ValueError) as info:
        build_norm("syncbn", 8)
    message = str(info.value)
    assert "'syncbn'" in message
    for kind in ("frozen_stats", "frozen", "bn", "gn"):
        assert kind in message
