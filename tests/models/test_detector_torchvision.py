"""The whole detector, converted from torchvision's RetinaNet, equals torchvision.

This is the test that proves the hand-written parts (backbone, FPN, anchors, box coder,
head layout, post-processing, NMS, preprocessing) right: a random-initialised
``retinanet_resnet50_fpn`` converted to iadet and run with the compatibility profile gives
the same raw head outputs and the same detections on a real COCO image.
"""
import torch
import torchvision
from torch import nn

import iadet
from iadet.convert import convert_torchvision_retinanet
from iadet.io import read_image_rgb

from tests.conftest import CONFIGS


def _spread_weights(model: nn.Module, image) -> None:
    """Random weights whose scores are spread (untied) and partly above 0.05.

    BatchNorm statistics are randomised so frozen BN is not the identity; the head gets
    fan-in scaled weights, then its output convs are calibrated on the test image so that
    logits have a standard deviation of about 1 around -4 and deltas of about 0.5, the
    ranges of a trained detector.
    """
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.4 + 0.8)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            elif isinstance(m, nn.Conv2d) and name.startswith("head"):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        model.eval()
        images, _ = model.transform([image.float() / 255])
        out = model.head(list(model.backbone(images.tensors).values()))
        cls = model.head.classification_head.cls_logits
        cls.weight.mul_(1.0 / out["cls_logits"].std())
        cls.bias.fill_(-4.0)
        reg = model.head.regression_head.bbox_reg
        reg.weight.mul_(0.5 / out["bbox_regression"].std())
        reg.bias.zero_()


def _pair(image, image_size=None):
    torch.manual_seed(0)
    tv = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None)
    if image_size is not None:
        tv.transform.min_size = (image_size[0],)
        tv.transform.max_size = image_size[1]
    _spread_weights(tv, image)
    tv.eval()
    opts = [] if image_size is None else [f"input.min_size={image_size[0]}", f"input.max_size={image_size[1]}"]
    cfg = iadet.load_config(CONFIGS / "compat" / "torchvision_retinanet_r50_fpn.yaml", opts)
    model = iadet.build_detector(cfg)
    model.load_state_dict(convert_torchvision_retinanet(tv.state_dict()), strict=True)
    model.eval()
    return tv, model


def test_raw_outputs_and_detections_equal_torchvision(coco128_image_path):
    image = read_image_rgb(coco128_image_path)
    tv, model = _pair(image)

    with torch.no_grad():
        tv_images, _ = tv.transform([image.float() / 255])
        batch, sizes, _ = model.preprocessor([image.float()])
        assert batch.shape == tv_images.tensors.shape
        assert sizes == [tuple(s) for s in tv_images.image_sizes]
        torch.testing.assert_close(batch, tv_images.tensors, atol=1e-4, rtol=0)

        features = list(tv.backbone(tv_images.tensors).values())
        tv_head = tv.head(features)
        tv_anchors = tv.anchor_generator(tv_images, features)[0]
        out = model(tv_images.tensors)
    for ours, theirs in ((out["cls_logits"], tv_head["cls_logits"]),
                         (out["bbox_deltas"], tv_head["bbox_regression"])):
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max() <= 1e-4 * max(1.0, theirs.abs().max())
    assert torch.equal(out["anchors"], tv_anchors)
    assert "iou_logits" not in out

    with torch.no_grad():
        expected = tv([image.float() / 255])[0]
        got = model.predict(image)[0]
    # the weights must make this a real test: many detections, untied scores.
    assert len(expected["scores"]) >= 50
    assert expected["scores"].unique().numel() == expected["scores"].numel()
    assert_same_detections(got, expected)


def assert_same_detections(got, expected, score_tol=1e-5, box_tol=1e-2):
    """The same detections in the same order, except that two whose scores are within
    ``score_tol`` may come in either order (conv kernels round differently across CPUs, and
    near-ties of 1e-6 then swap places)."""
    assert len(got["scores"]) == len(expected["scores"])
    assert (got["scores"] - expected["scores"]).abs().max() <= score_tol
    used = torch.zeros(len(got["scores"]), dtype=torch.bool)
    for i in range(len(expected["scores"])):
        near = ((got["scores"] - expected["scores"][i]).abs() <= 2 * score_tol) & ~used
        near &= got["labels"] == expected["labels"][i]
        near &= (got["boxes"] - expected["boxes"][i]).abs().amax(1) <= box_tol
        assert near.any(), f"detection {i} of torchvision has no counterpart"
        used[near.nonzero()[0, 0]] = True


def test_empty_image_gives_empty_detections():
    tv, model = _pair(torch.full((3, 100, 150), 128, dtype=torch.uint8), image_size=(128, 192))
    with torch.no_grad():
        res = model.predict(torch.zeros(3, 100, 150), score_thr=2.0)[0]
    assert res["boxes"].shape == (0, 4) and res["scores"].shape == (0,) and res["labels"].dtype == torch.int64
