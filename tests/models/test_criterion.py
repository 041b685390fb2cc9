"""RetinaNet criterion: hand loops, the IoU-target gradient switch (Eq. 5), empty images, and
equality with torchvision's RetinaNet loss in the compat setting."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.ops import box_iou as tv_box_iou
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

import iadet.models.criterion as criterion_module
from iadet.models.assigner import MaxIoUAssigner
from iadet.models.box_coder import DeltaBoxCoder
from iadet.models.criterion import RetinaNetCriterion

NUM_CLASSES = 4


def _anchors(size: int = 64, stride: int = 8) -> torch.Tensor:
    """(M, 4) anchors: 9 per cell (sizes 12, 20, 32 x ratios 0.5, 1, 2) on a size x size image."""
    c = torch.arange(stride / 2, size, stride, dtype=torch.float32)
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    shapes = torch.tensor([(s * r ** -0.5, s * r ** 0.5) for r in (0.5, 1.0, 2.0) for s in (12, 20, 32)])
    ctr = torch.stack([cx, cy], -1).reshape(-1, 1, 2)
    return torch.cat([ctr - shapes / 2, ctr + shapes / 2], -1).reshape(-1, 4)


def _targets(g: torch.Generator, counts=(3, 2)):
    targets = []
    for k in counts:
        xy = torch.rand(k, 2, generator=g) * 40
        wh = 6 + torch.rand(k, 2, generator=g) * 24
        targets.append({"boxes": torch.cat([xy, xy + wh], 1),
                        "labels": torch.randint(0, NUM_CLASSES, (k,), generator=g)})
    return targets


def _head_out(g: torch.Generator, num_images: int, num_anchors: int, iou: bool = True, grad: bool = True):
    out = {"cls_logits": torch.randn(num_images, num_anchors, NUM_CLASSES, generator=g) - 2,
           "bbox_deltas": torch.randn(num_images, num_anchors, 4, generator=g) * 0.3}
    if iou:
        out["iou_logits"] = torch.randn(num_images, num_anchors, generator=g)
    return {k: v.requires_grad_(grad) for k, v in out.items()}


def _criterion(**kwargs):
    assigner = MaxIoUAssigner(low_quality=kwargs.pop("low_quality", "gt"))
    return RetinaNetCriterion(assigner, DeltaBoxCoder(), NUM_CLASSES, **kwargs)


def _reference_sums(head_out, anchors, targets):
    """Per-image loss sums and positive counts with a plain Python loop over images."""
    assigner, coder = MaxIoUAssigner(), DeltaBoxCoder()
    sums, counts = {"loss_cls": [], "loss_reg": [], "loss_iou": []}, []
    for i, t in enumerate(targets):
        matched = assigner.assign(anchors, [t["boxes"]]).matched_idx[0]
        pos, valid = matched >= 0, matched != -2
        cls_target = torch.zeros(len(anchors), NUM_CLASSES)
        cls_target[pos, t["labels"][matched[pos]]] = 1.0
        sums["loss_cls"].append(tv_sigmoid_focal_loss(head_out["cls_logits"][i][valid], cls_target[valid],
                                                      reduction="sum"))
        gt = t["boxes"][matched[pos]]
        deltas = head_out["bbox_deltas"][i][pos]
        reg_target = coder.encode(gt, anchors[pos])
        sums["loss_reg"].append(F.smooth_l1_loss(deltas, reg_target, beta=0.11, reduction="sum"))
        iou_target = tv_box_iou(coder.decode(deltas, anchors[pos]), gt).diagonal()
        sums["loss_iou"].append(F.binary_cross_entropy_with_logits(head_out["iou_logits"][i][pos],
                                                                   iou_target.detach(), reduction="sum"))
        counts.append(int(pos.sum()))
    return sums, counts


def test_batch_normalisation_equals_hand_loop():
    g = torch.Generator().manual_seed(0)
    anchors, targets = _anchors(), _targets(g)
    head_out = _head_out(g, 2, len(anchors))
    got = _criterion()(head_out, anchors, targets)
    sums, counts = _reference_sums(head_out, anchors, targets)
    assert counts[0] > 0 and counts[1] > 0
    assert got["num_pos"] == sum(counts) and not got["num_pos"].requires_grad
    for key, values in sums.items():
        torch.testing.assert_close(got[key], sum(values) / sum(counts), rtol=1e-5, atol=1e-6)


def test_image_normalisation_equals_hand_loop():
    g = torch.Generator().manual_seed(1)
    anchors, targets = _anchors(), _targets(g, counts=(4, 1))
    head_out = _head_out(g, 2, len(anchors))
    got = _criterion(normalize="image")(head_out, anchors, targets)
    sums, counts = _reference_sums(head_out, anchors, targets)
    assert counts[0] != counts[1]
    for key, values in sums.items():
        expected = sum(v / max(1, n) for v, n in zip(values, counts)) / len(targets)
        torch.testing.assert_close(got[key], expected, rtol=1e-5, atol=1e-6)


def _capture_iou_target(monkeypatch):
    """Record the target IoU tensor the criterion computes (Eq. 4), keeping its gradient."""
    captured, original = {}, criterion_module.aligned_box_iou

    def recording_iou(boxes1, boxes2):
        out = original(boxes1, boxes2)
        if out.requires_grad:
            out.retain_grad()
        captured["target"] = out
        return out

    monkeypatch.setattr(criterion_module, "aligned_box_iou", recording_iou)
    return captured


def test_detached_iou_target_gives_regression_no_gradient(monkeypatch):
    captured = _capture_iou_target(monkeypatch)
    g = torch.Generator().manual_seed(2)
    anchors, targets = _anchors(), _targets(g)
    head_out = _head_out(g, 2, len(anchors))
    loss_iou = _criterion(iou_target_grad=False)(head_out, anchors, targets)["loss_iou"]
    grad_deltas, grad_logits = torch.autograd.grad(loss_iou, [head_out["bbox_deltas"], head_out["iou_logits"]],
                                                   allow_unused=True)
    assert grad_deltas is None or not grad_deltas.any()
    assert grad_logits.abs().sum() > 0
    assert captured["target"].requires_grad  # computed from the deltas, then detached by the switch


def test_iou_target_gradient_follows_eq5(monkeypatch):
    captured = _capture_iou_target(monkeypatch)
    g = torch.Generator().manual_seed(3)
    anchors, targets = _anchors(), _targets(g)
    head_out = _head_out(g, 2, len(anchors))
    criterion = _criterion(iou_target_grad=True)
    out = criterion(head_out, anchors, targets)
    out["loss_iou"].backward()
    deltas_grad = head_out["bbox_deltas"].grad
    assert deltas_grad.abs().sum() > 0
    # dL_IoU / dIoU_target = -logit / N for each positive (Eq. 5 with the 1/N of Eq. 3).
    pos = MaxIoUAssigner().assign(anchors, [t["boxes"] for t in targets]).matched_idx >= 0
    num_pos = out["num_pos"]
    torch.testing.assert_close(captured["target"].grad, -head_out["iou_logits"].detach()[pos] / num_pos)
    # Finite differences of loss_iou along a few regression outputs of positives agree.
    rows = pos.nonzero()[:3]
    for (i, m), j in zip(rows.tolist(), (0, 2, 3)):
        h = 1e-2
        values = []
        for sign in (1, -1):
            moved = {k: v.detach().clone() for k, v in head_out.items()}
            moved["bbox_deltas"][i, m, j] += sign * h
            values.append(criterion(moved, anchors, targets)["loss_iou"].double())
        numeric = (values[0] - values[1]) / (2 * h)
        torch.testing.assert_close(deltas_grad[i, m, j].double(), numeric, rtol=2e-2, atol=2e-4)


@pytest.mark.parametrize("reg_loss", ["smooth_l1", "l1", "giou"])
@pytest.mark.parametrize("counts", [(0,), (2, 0), (0, 0)])
def test_images_without_objects(reg_loss, counts):
    g = torch.Generator().manual_seed(4)
    anchors = _anchors()
    targets = _targets(g, counts)
    head_out = _head_out(g, len(counts), len(anchors))
    out = _criterion(reg_loss=reg_loss)(head_out, anchors, targets)
    assert all(torch.isfinite(v) for v in out.values())
    if sum(counts) == 0:
        assert out["loss_reg"].item() == 0.0 and out["loss_iou"].item() == 0.0
        assert out["num_pos"] == 0
    (out["loss_cls"] + out["loss_reg"] + out["loss_iou"]).backward()
    for value in head_out.values():
        assert value.grad is not None and torch.isfinite(value.grad).all()
    # The empty image contributes classification (all negatives) but nothing else.
    empty = counts.index(0)
    assert head_out["cls_logits"].grad[empty].abs().sum() > 0
    assert not head_out["bbox_deltas"].grad[empty].any() and not head_out["iou_logits"].grad[empty].any()


def test_equals_torchvision_retinanet_loss():
    class _Backbone(nn.Module):
        out_channels = 8

    g = torch.Generator().manual_seed(5)
    anchors = _anchors()
    targets = _targets(g, counts=(3, 2, 0))
    head_out = _head_out(g, 3, len(anchors), iou=False, grad=False)
    reference = RetinaNet(_Backbone(), num_classes=NUM_CLASSES).compute_loss(
        targets, {"cls_logits": head_out["cls_logits"], "bbox_regression": head_out["bbox_deltas"]},
        [anchors] * len(targets))
    got = _criterion(low_quality="torchvision", reg_loss="l1", normalize="image")(head_out, anchors, targets)
    assert "loss_iou" not in got
    torch.testing.assert_close(got["loss_cls"], reference["classification"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["loss_reg"], reference["bbox_regression"], rtol=1e-5, atol=1e-6)


def test_ignore_boxes_remove_anchors_from_classification():
    g = torch.Generator().manual_seed(6)
    anchors, targets = _anchors(), _targets(g, counts=(2,))
    head_out = _head_out(g, 1, len(anchors), grad=False)
    plain = _criterion()(head_out, anchors, targets)
    targets[0]["ignore_boxes"] = torch.tensor([[-100.0, -100.0, 200.0, 200.0]])  # covers every anchor
    ignored = _criterion()(head_out, anchors, targets)
    matched = MaxIoUAssigner().assign(anchors, [targets[0]["boxes"]]).matched_idx[0]
    pos = matched >= 0
    cls_target = torch.zeros(len(anchors), NUM_CLASSES)
    cls_target[pos, targets[0]["labels"][matched[pos]]] = 1.0
    only_pos = tv_sigmoid_focal_loss(head_out["cls_logits"][0][pos], cls_target[pos], reduction="sum") / pos.sum()
    torch.testing.assert_close(ignored["loss_cls"], only_pos)
    assert ignored["loss_cls"] < plain["loss_cls"]
    torch.testing.assert_close(ignored["loss_reg"], plain["loss_reg"])


def test_low_precision_inputs_give_float32_losses():
    g = torch.Generator().manual_seed(7)
    anchors, targets = _anchors(), _targets(g)
    head_out = _head_out(g, 2, len(anchors), grad=False)
    half = {k: v.to(torch.bfloat16) for k, v in head_out.items()}
    got = _criterion()(half, anchors, targets)
    expected = _criterion()({k: v.float() for k, v in half.items()}, anchors, targets)
    for key, value in got.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, expected[key])


def test_normaliser_is_averaged_over_ranks(monkeypatch):
    g = torch.Generator().manual_seed(8)
    anchors, targets = _anchors(), _targets(g)
    head_out = _head_out(g, 2, len(anchors), grad=False)
    single = _criterion()(head_out, anchors, targets)
    # Pretend to be one of 2 ranks; the other rank has 7 positives.
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, *a, **k: t.add_(7.0))
    ddp = _criterion()(head_out, anchors, targets)
    n = single["num_pos"]
    assert ddp["num_pos"] == n  # logged count stays this rank's
    for key in ("loss_cls", "loss_reg", "loss_iou"):
        torch.testing.assert_close(ddp[key] * (n + 7) / 2, single[key] * n)


def test_bad_options():
    for kwargs in ({"reg_loss": "iou"}, {"iou_loss": "l1"}, {"normalize": "gpu"}):
        with pytest.raises(ValueError):
            _criterion(**kwargs)
