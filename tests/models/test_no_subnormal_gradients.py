"""No loss sends subnormal floats back into the network (issue 14): they slow the convolution
backward kernels several-fold on some CPUs. Extreme logits, as a trained detector produces them."""
import pytest
import torch

from iadet.models.assigner import MaxIoUAssigner
from iadet.models.box_coder import DeltaBoxCoder
from iadet.models.criterion import RetinaNetCriterion
from iadet.models.losses import (flush_subnormal_grad, focal_clamp_limit, giou_loss, iou_prediction_loss, l1_loss,
                                 one_hot_focal_loss_per_anchor, sigmoid_focal_loss, smooth_l1_loss)
from tests.models.test_criterion import NUM_CLASSES, _anchors, _targets

TINY = torch.finfo(torch.float32).tiny
RANGES = [(-100.0, 100.0), (-45.0, -25.0), (25.0, 45.0), (-100.0, -80.0)]


def count_subnormal(t: torch.Tensor) -> int:
    return int(((t != 0) & (t.abs() < TINY)).sum())


def _uniform(shape, lo, hi, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) * (hi - lo) + lo).requires_grad_()


@pytest.mark.parametrize("lo, hi", RANGES)
@pytest.mark.parametrize("gamma", [2.0, 0.0, 1.5])
def test_one_hot_focal_loss_has_no_subnormal_gradient(lo, hi, gamma):
    x = _uniform((2, 3000, 20), lo, hi)
    g = torch.Generator().manual_seed(1)
    pos_image, pos_anchor = torch.randint(0, 2, (40,), generator=g), torch.randperm(3000, generator=g)[:40]
    pos_label = torch.randint(0, 20, (40,), generator=g)
    for scale in (1.0, 1e-6):  # 1 / N for many positives, loss weights
        x.grad = None
        (one_hot_focal_loss_per_anchor(x, pos_image, pos_anchor, pos_label, 0.25, gamma).sum() * scale).backward()
        assert count_subnormal(x.grad) == 0
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("gamma", [2.0, 0.0, 1.5, 5.0])
def test_the_clamp_changes_the_focal_loss_by_less_than_1e_minus_25_per_element(gamma):
    """Beyond the clamp the exact term (float64) is below 1e-25: nothing measurable is lost."""
    limit = focal_clamp_limit(gamma)
    x = torch.tensor([-limit, -limit - 10, -200.0], dtype=torch.float64)
    exact_neg = 0.75 * torch.sigmoid(x) ** gamma * torch.nn.functional.softplus(x)
    assert (exact_neg < 1e-25).all()
    exact_pos = 0.25 * torch.sigmoid(x) ** gamma * torch.nn.functional.softplus(x)  # positive at -x: (1-p)=sigmoid(x)
    assert (exact_pos < 1e-25).all()  # a positive at logit +T or more
    # and the float32 loss at and beyond the clamp stays equal to the elementwise formula
    logits = torch.tensor([[[-limit - 30.0, limit + 30.0, -limit, limit, 0.0]]])
    target = torch.tensor([[[0.0, 1.0, 0.0, 1.0, 0.0]]])
    got = one_hot_focal_loss_per_anchor(logits, torch.tensor([0, 0]), torch.tensor([0, 0]), torch.tensor([1, 3]),
                                        0.25, gamma)
    expected = sigmoid_focal_loss(logits, target, 0.25, gamma, reduction="none").sum(-1)
    # (the one-hot form cancels the large negative term of a confident positive: ~1 ulp of it)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lo, hi", RANGES)
def test_elementwise_losses_have_no_subnormal_gradient(lo, hi):
    x = _uniform((5000,), lo, hi)
    target = (torch.rand(5000, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    sigmoid_focal_loss(x, target).backward()
    assert count_subnormal(x.grad) == 0
    for kind in ("bce", "l2"):
        for t in (target, torch.zeros(5000), torch.rand(5000, generator=torch.Generator().manual_seed(3))):
            x.grad = None
            iou_prediction_loss(flush_subnormal_grad(x), t, kind).backward()
            assert count_subnormal(x.grad) == 0


def test_regression_losses_have_no_subnormal_gradient():
    g = torch.Generator().manual_seed(4)
    pred = (torch.randn(2000, 4, generator=g) * 50).requires_grad_()
    target = pred.detach() + torch.randn(2000, 4, generator=g) * torch.tensor([1e-30, 1e-3, 1.0, 100.0])
    for loss in (lambda p: smooth_l1_loss(p, target), lambda p: l1_loss(p, target)):
        pred.grad = None
        loss(flush_subnormal_grad(pred)).backward()
        assert count_subnormal(pred.grad) == 0
    boxes = torch.rand(2000, 2, generator=g) * 100
    pred_boxes = torch.cat([boxes, boxes + 1 + torch.rand(2000, 2, generator=g) * 1e4], 1).requires_grad_()
    giou_loss(pred_boxes, pred_boxes.detach() + 1e-3).backward()
    assert count_subnormal(pred_boxes.grad) == 0


def test_flush_subnormal_grad_is_identity_forward_and_flushes_only_subnormals():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    y = flush_subnormal_grad(x)
    assert torch.equal(y, x)
    y.backward(torch.tensor([1e-40, -1e-42, TINY, 1.0]))
    assert x.grad.tolist() == [0.0, 0.0, TINY, 1.0]


@pytest.mark.parametrize("iou_loss, target_grad, reg_loss", [("bce", False, "smooth_l1"), ("bce", True, "smooth_l1"),
                                                             ("l2", False, "l1"), ("bce", True, "giou")])
@pytest.mark.parametrize("lo, hi", RANGES)
def test_criterion_sends_no_subnormal_gradient_to_the_head(iou_loss, target_grad, reg_loss, lo, hi):
    anchors = _anchors()
    targets = _targets(torch.Generator().manual_seed(5), counts=(3, 0))
    m = anchors.shape[0]
    out = {"cls_logits": _uniform((2, m, NUM_CLASSES), lo, hi, seed=6),
           "bbox_deltas": _uniform((2, m, 4), -3.0, 3.0, seed=7),
           "iou_logits": _uniform((2, m), lo, hi, seed=8)}
    criterion = RetinaNetCriterion(MaxIoUAssigner(), DeltaBoxCoder(), NUM_CLASSES, reg_loss=reg_loss,
                                   iou_loss=iou_loss, iou_target_grad=target_grad)
    losses = criterion(out, anchors, targets)
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    for name in ("cls_logits", "bbox_deltas", "iou_logits"):
        assert count_subnormal(out[name].grad) == 0, name
        assert torch.isfinite(out[name].grad).all(), name
