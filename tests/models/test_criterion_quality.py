"""The criterion's quality-family options (issue 15) against a plain per-image loop: QFL and
VFL towards the detached IoU, centerness targets, the ATSS assigner injected; the default
(focal, IoU) unchanged."""
import pytest
import torch
import torch.nn.functional as F

from iadet.models.assigner import MaxIoUAssigner
from iadet.models.atss_assigner import ATSSAssigner
from iadet.models.box_coder import DeltaBoxCoder
from iadet.models.criterion import RetinaNetCriterion
from iadet.models.quality_losses import centerness_target, quality_focal_loss, varifocal_loss
from iadet.ops.boxes import aligned_box_iou
from tests.models.test_criterion import NUM_CLASSES, _anchors, _head_out, _targets


def _dense_reference(head_out, anchors, targets, assigner, cls_loss, quality_target="iou", levels=None):
    """Per image: the dense soft-target classification loss and the quality-branch BCE."""
    coder = DeltaBoxCoder()
    cls_sum, iou_sum, num_pos = 0.0, 0.0, 0
    for i, t in enumerate(targets):
        matched = assigner.assign(anchors, [t["boxes"]], num_anchors_per_level=levels).matched_idx[0]
        pos, valid = matched >= 0, matched != -2
        gt = t["boxes"][matched[pos]]
        boxes = coder.decode(head_out["bbox_deltas"][i][pos], anchors[pos])
        iou = aligned_box_iou(boxes.detach(), gt)
        target = torch.zeros(len(anchors), NUM_CLASSES)
        target[pos.nonzero().squeeze(1), t["labels"][matched[pos]]] = iou
        logits = head_out["cls_logits"][i]
        if cls_loss == "qfl":
            cls_sum = cls_sum + quality_focal_loss(logits[valid], target[valid], reduction="sum")
        else:
            cls_sum = cls_sum + varifocal_loss(logits[valid], target[valid], reduction="sum")
        if quality_target == "centerness":
            q = centerness_target((anchors[pos, :2] + anchors[pos, 2:]) / 2, gt)
        else:
            q = aligned_box_iou(boxes, gt).detach()
        iou_sum = iou_sum + F.binary_cross_entropy_with_logits(head_out["iou_logits"][i][pos], q, reduction="sum")
        num_pos += int(pos.sum())
    return cls_sum / max(num_pos, 1), iou_sum / max(num_pos, 1)


@pytest.mark.parametrize("cls_loss", ["qfl", "vfl"])
def test_quality_classification_losses_equal_the_dense_loop(cls_loss):
    g = torch.Generator().manual_seed(1)
    anchors, targets = _anchors(), _targets(g)
    head_out = _head_out(g, len(targets), len(anchors))
    crit = RetinaNetCriterion(MaxIoUAssigner(), DeltaBoxCoder(), NUM_CLASSES, cls_loss=cls_loss)
    losses = crit(head_out, anchors, targets)
    cls_ref, iou_ref = _dense_reference(head_out, anchors, targets, MaxIoUAssigner(), cls_loss)
    torch.testing.assert_close(losses["loss_cls"], cls_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss_iou"], iou_ref, rtol=1e-5, atol=1e-6)
    losses["loss_cls"].backward()
    assert head_out["bbox_deltas"].grad is None  # the IoU target of QFL / VFL is detached


def test_centerness_target_replaces_the_iou_and_atss_is_injected():
    g = torch.Generator().manual_seed(2)
    anchors, targets = _anchors(), _targets(g, counts=(3, 0))
    levels = [len(anchors) // 2, len(anchors) - len(anchors) // 2]
    head_out = {**_head_out(g, len(targets), len(anchors)), "num_anchors_per_level": levels}
    crit = RetinaNetCriterion(ATSSAssigner(), DeltaBoxCoder(), NUM_CLASSES, cls_loss="qfl",
                              quality_target="centerness")
    losses = crit(head_out, anchors, targets)
    cls_ref, iou_ref = _dense_reference(head_out, anchors, targets, ATSSAssigner(), "qfl", "centerness", levels)
    torch.testing.assert_close(losses["loss_cls"], cls_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss_iou"], iou_ref, rtol=1e-5, atol=1e-6)
    expected_pos = ATSSAssigner().assign(anchors, [t["boxes"] for t in targets],
                                         num_anchors_per_level=levels).matched_idx.ge(0).sum()
    assert losses["num_pos"] == expected_pos > 0


def test_no_objects_gives_finite_zero_box_losses_with_quality_options():
    g = torch.Generator().manual_seed(3)
    anchors = _anchors()
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    head_out = {**_head_out(g, 1, len(anchors)), "num_anchors_per_level": [len(anchors)]}
    for kw in ({"cls_loss": "vfl"}, {"cls_loss": "qfl", "quality_target": "centerness"}):
        crit = RetinaNetCriterion(ATSSAssigner(), DeltaBoxCoder(), NUM_CLASSES, **kw)
        losses = crit(head_out, anchors, targets)
        assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
        assert losses["loss_reg"] == 0 and losses["loss_iou"] == 0


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="cls_loss"):
        RetinaNetCriterion(MaxIoUAssigner(), DeltaBoxCoder(), NUM_CLASSES, cls_loss="bce")
    with pytest.raises(ValueError, match="no gradient path"):
        RetinaNetCriterion(MaxIoUAssigner(), DeltaBoxCoder(), NUM_CLASSES, quality_target="centerness",
                           iou_target_grad=True)
