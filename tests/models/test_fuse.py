"""Inference fast paths (iadet.models.fuse): folded BatchNorm and channels-last weights give the
same backbone features and the same detections as the plain model."""
import copy

import pytest
import torch
from torch import nn

import iadet
from iadet.io import read_image_rgb
from iadet.models.backbone import build_resnet
from iadet.models.fuse import fuse_frozen_batchnorm, is_fused, to_channels_last, unfused_batchnorms
from iadet.models.norm import BatchNorm2dFrozenStats, FrozenBatchNorm2d

from tests.conftest import CONFIGS

SMALL_INPUT = ["input.min_size=256", "input.max_size=384"]


def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters, so that folding is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.4 + 0.8)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def _calibrate_head(model, batch: torch.Tensor) -> None:
    """Spread head outputs like a trained detector's: logits std 1 around -4, deltas std 0.5."""
    g = torch.Generator().manual_seed(1)
    head = model.head
    with torch.no_grad():
        for conv in [*head.cls_convs, *head.reg_convs, head.cls_logits, head.bbox_pred]:
            fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.1)
        out = model(batch)
        head.cls_logits.weight.mul_(1.0 / out["cls_logits"].std())
        head.cls_logits.bias.fill_(-4.0)
        head.bbox_pred.weight.mul_(0.5 / out["bbox_deltas"].std())
        head.bbox_pred.bias.zero_()
        if head.iou_pred is not None:
            head.iou_pred.weight.mul_(1.0 / out["iou_logits"].std())


def _detector(config: str, image: torch.Tensor, opts=()):
    torch.manual_seed(0)
    model = iadet.build_detector(iadet.load_config(CONFIGS / config, [*SMALL_INPUT, *opts])).eval()
    _randomise_norms(model)
    batch, _, _ = model.preprocessor([image.float()])
    _calibrate_head(model, batch)
    return model


def _random_image(seed: int = 2, size=(300, 420)) -> torch.Tensor:
    """A smooth random RGB image in [0, 255] (blobs, not white noise, so detections vary)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, size[0] // 20, size[1] // 20, generator=g)
    return (torch.nn.functional.interpolate(small, size=size, mode="bilinear")[0] * 255).round()


def _assert_same_features(fused, plain):
    assert len(fused) == len(plain)
    for a, b in zip(fused, plain):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max())


def _assert_same_detections(got, expected, score_tol=1e-5, box_tol=1e-2):
    """Same detections within float tolerance: one-to-one matches with the same label, scores
    within ``score_tol`` and boxes within ``box_tol`` px. Detections whose scores differ by
    less than ``score_tol`` may come out in either order (float near-ties), and one within
    ``score_tol`` of the lowest kept score may be cut by max_det on one side only."""
    assert len(expected["scores"]) >= 20, "the weights must give many detections for a real test"
    close = ((got["labels"][:, None] == expected["labels"][None])
             & ((got["scores"][:, None] - expected["scores"][None]).abs() <= score_tol)
             & ((got["boxes"][:, None] - expected["boxes"][None]).abs().amax(-1) <= box_tol))
    if "ious" in expected:
        close &= (got["ious"][:, None] - expected["ious"][None]).abs() <= score_tol
    used = torch.zeros(len(expected["scores"]), dtype=torch.bool)
    for i in range(len(got["scores"])):
        candidates = (close[i] & ~used).nonzero().flatten()
        if candidates.numel() == 0:
            assert got["scores"][i] - got["scores"][-1] <= score_tol, f"detection {i} has no match"
            continue
        used[candidates[0]] = True
    leftover = expected["scores"][~used]
    assert (leftover - expected["scores"][-1] <= score_tol).all(), "expected detections without a match"


@pytest.mark.parametrize("norm", ["frozen", "frozen_stats"])
def test_fused_r50_backbone_features_equal(norm):
    torch.manual_seed(0)
    plain = build_resnet("resnet50", norm=norm).eval()
    _randomise_norms(plain)
    fused = fuse_frozen_batchnorm(copy.deepcopy(plain))
    assert is_fused(fused) and not is_fused(plain)
    assert unfused_batchnorms(fused) == []
    assert not any(isinstance(m, (FrozenBatchNorm2d, BatchNorm2dFrozenStats)) for m in fused.modules())
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _assert_same_features(fused(x), plain(x))
        _assert_same_features(to_channels_last(copy.deepcopy(fused))(x), plain(x))


@pytest.mark.parametrize("config", ["compat/torchvision_retinanet_r50_fpn.yaml",
                                    "iou_aware_retinanet_r50_fpn_1x_coco.yaml"])
def test_fused_detector_detections_equal_on_random_input(config):
    image = _random_image()
    plain = _detector(config, image)
    fused = fuse_frozen_batchnorm(copy.deepcopy(plain))
    expected = plain.predict(image)[0]
    _assert_same_detections(fused.predict(image)[0], expected)
    _assert_same_detections(to_channels_last(fused).predict(image)[0], expected)


def test_fused_detector_detections_equal_on_coco_image(coco128_image_path):
    image = read_image_rgb(coco128_image_path)
    plain = _detector("iou_aware_retinanet_r50_fpn_1x_coco.yaml", image)
    fused = fuse_frozen_batchnorm(copy.deepcopy(plain))
    batch, _, _ = plain.preprocessor([image.float()])
    with torch.no_grad():
        _assert_same_features(fused.backbone(batch), plain.backbone(batch))
    _assert_same_detections(fused.predict(image)[0], plain.predict(image)[0])


def test_training_mode_is_refused():
    model = build_resnet("resnet18", norm="frozen")  # train mode after construction
    with pytest.raises(RuntimeError, match="inference only"):
        fuse_frozen_batchnorm(model)


def test_trainable_batchnorm_left_unchanged_with_a_warning():
    torch.manual_seed(0)
    model = build_resnet("resnet18", norm="bn").eval()
    _randomise_norms(model)
    before = copy.deepcopy(model.state_dict())
    with pytest.warns(UserWarning, match="trainable BatchNorm2d"):
        fuse_frozen_batchnorm(model)
    assert not is_fused(model)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_trainable_batchnorm_folded_on_request():
    torch.manual_seed(0)
    plain = build_resnet("resnet18", norm="bn").eval()
    _randomise_norms(plain)
    fused = fuse_frozen_batchnorm(copy.deepcopy(plain), include_trainable_bn=True)
    assert is_fused(fused) and unfused_batchnorms(fused) == []
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _assert_same_features(fused(x), plain(x))


def test_group_norm_is_not_touched():
    model = build_resnet("resnet18", norm="gn").eval()
    fuse_frozen_batchnorm(model)
    assert not is_fused(model)
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) > 0


def test_prepare_for_inference_follows_the_config():
    """``model.test.fuse_bn`` / ``channels_last`` (used by iadet.infer and iadet.eval) give
    the same detections; the defaults leave the model as it is."""
    from iadet.builder import prepare_for_inference

    config = "iou_aware_retinanet_r50_fpn_1x_coco.yaml"
    image = _random_image()
    plain = _detector(config, image)
    expected = plain.predict(image)[0]
    untouched = prepare_for_inference(copy.deepcopy(plain), iadet.load_config(CONFIGS / config))
    assert not is_fused(untouched) and not untouched.training
    cfg = iadet.load_config(CONFIGS / config, ["model.test.fuse_bn=true", "model.test.channels_last=true"])
    fast = prepare_for_inference(copy.deepcopy(plain), cfg)
    assert is_fused(fast)
    assert fast.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    _assert_same_detections(fast.predict(image)[0], expected)


def test_bf16_predict_post_processes_in_float32():
    """``predict(amp_dtype=torch.bfloat16)``: the network runs in bf16, Eq. 7 / top-k / NMS in
    float32 on float32 head outputs; detections stay close to the fp32 ones."""
    from iadet.builder import inference_amp_dtype

    config = "iou_aware_retinanet_r50_fpn_1x_coco.yaml"
    cfg = iadet.load_config(CONFIGS / config, ["model.test.amp=bf16"])
    assert inference_amp_dtype(cfg) is torch.bfloat16 and inference_amp_dtype(cfg, "off") is None
    image = _random_image()
    model = _detector(config, image)
    batch, _, _ = model.preprocessor([image.float()])
    with torch.no_grad():
        out = model.forward_float32(batch, torch.bfloat16)
        plain = model(batch)
    assert all(out[k].dtype == torch.float32 for k in ("cls_logits", "bbox_deltas", "iou_logits"))
    assert not torch.equal(out["cls_logits"], plain["cls_logits"])  # the network did run in bf16
    assert (out["cls_logits"] - plain["cls_logits"]).abs().max() < 0.25
    fp32 = model.predict(image)[0]
    bf16 = model.predict(image, amp_dtype=torch.bfloat16)[0]
    assert bf16["scores"].dtype == torch.float32
    # float32 post-processing keeps scores distinct (bf16 has 8 bits of mantissa)
    assert bf16["scores"].unique().numel() > len(bf16["scores"]) // 2
    top = min(len(fp32["scores"]), 10)
    torch.testing.assert_close(bf16["scores"][:top], fp32["scores"][:top], atol=0.03, rtol=0)
