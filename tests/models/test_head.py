"""The IoU branch is one 3x3 conv with A outputs on the regression tower, and small."""
import math

import torch
from torch import nn

from iadet.models.fpn import FPN
from iadet.models.head import IoUAwareRetinaHead


def test_iou_branch_is_one_conv_with_nine_outputs_and_tiny():
    import iadet

    with_branch = iadet.build_detector(iadet.load_config(None, ["model.head.iou_branch=true"]))
    without = iadet.build_detector(iadet.load_config(None, ["model.head.iou_branch=false"]))
    extra = {k: v for k, v in with_branch.state_dict().items() if k not in without.state_dict()}
    assert set(extra) == {"head.iou_pred.weight", "head.iou_pred.bias"}
    assert isinstance(with_branch.head.iou_pred, nn.Conv2d)
    assert with_branch.head.iou_pred.kernel_size == (3, 3)
    assert with_branch.head.iou_pred.out_channels == 9
    n_with = sum(p.numel() for p in with_branch.parameters())
    n_without = sum(p.numel() for p in without.parameters())
    assert n_with - n_without == 9 * 256 * 9 + 9
    assert (n_with - n_without) / n_without <= 0.001


def test_iou_branch_reads_the_regression_tower():
    head = IoUAwareRetinaHead(num_classes=3, feat_channels=16, in_channels=16, stacked_convs=2)
    seen = {}
    head.iou_pred.register_forward_hook(lambda m, i, o: seen.setdefault("iou_in", i[0]))
    head.bbox_pred.register_forward_hook(lambda m, i, o: seen.setdefault("reg_in", i[0]))
    head([torch.randn(1, 16, 4, 4)])
    assert seen["iou_in"] is seen["reg_in"]


def test_output_layout_and_init():
    head = IoUAwareRetinaHead(num_classes=5, in_channels=8, feat_channels=8, stacked_convs=1)
    feats = [torch.randn(2, 8, 4, 6), torch.randn(2, 8, 2, 3)]
    out = head(feats)
    m = 4 * 6 * 9 + 2 * 3 * 9
    assert out["cls_logits"].shape == (2, m, 5)
    assert out["bbox_deltas"].shape == (2, m, 4)
    assert out["iou_logits"].shape == (2, m)
    assert out["num_anchors_per_level"] == [216, 54]
    # channel a*C + c of location (y, x) lands in row (y*W + x)*A + a
    raw = head.cls_logits(torch.relu(head.cls_convs[0](feats[0])))
    assert torch.equal(out["cls_logits"][1, (2 * 6 + 3) * 9 + 4, 2], raw[1, 4 * 5 + 2, 2, 3])
    torch.testing.assert_close(head.cls_logits.bias, torch.full((45,), -math.log(99.0)))
    assert torch.all(head.iou_pred.bias == 0)  # initial predicted IoU is 0.5


def test_groupnorm_towers():
    head = IoUAwareRetinaHead(num_classes=2, in_channels=32, feat_channels=32, norm="gn", gn_groups=8)
    assert sum(isinstance(m, nn.GroupNorm) for m in head.modules()) == 8
    assert head([torch.randn(1, 32, 3, 3)])["cls_logits"].shape == (1, 81, 2)


def test_fpn_levels_and_p6_source():
    c = [torch.randn(1, 8, 16, 20), torch.randn(1, 16, 8, 10), torch.randn(1, 32, 4, 5)]
    for p6_input, relu in (("c5", False), ("p5", True)):
        fpn = FPN([8, 16, 32], out_channels=12, p6_input=p6_input, relu_before_p7=relu)
        outs = fpn(c)
        assert [tuple(o.shape[-2:]) for o in outs] == [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
        assert fpn.p6.in_channels == (32 if p6_input == "c5" else 12)
