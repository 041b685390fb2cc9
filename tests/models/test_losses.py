"""Loss functions against hand-computed values and torchvision.ops."""
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from iadet.models.losses import giou_loss, iou_prediction_loss, l1_loss, sigmoid_focal_loss, smooth_l1_loss


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_focal_loss_equals_torchvision(reduction):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, 7, generator=g) * 3
    targets = (torch.rand(3, 50, 7, generator=g) < 0.1).float()
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, reduction=reduction),
                               tv_sigmoid_focal_loss(logits, targets, 0.25, 2.0, reduction=reduction))
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha=0.5, gamma=0.0, reduction=reduction),
                               tv_sigmoid_focal_loss(logits, targets, 0.5, 0.0, reduction=reduction))


def test_focal_loss_by_hand():
    # logit 0 -> p = 0.5; positive: 0.25 * 0.5^2 * log 2; negative: 0.75 * 0.5^2 * log 2.
    got = sigmoid_focal_loss(torch.zeros(2), torch.tensor([1.0, 0.0]), reduction="none")
    torch.testing.assert_close(got, torch.tensor([0.0625 * math.log(2), 0.1875 * math.log(2)]))


def test_smooth_l1_by_hand():
    pred = torch.tensor([0.05, 0.2, -0.5, 0.0])
    target = torch.zeros(4)
    # |x| < 0.11: 0.5 * 0.05^2 / 0.11; otherwise |x| - 0.055.
    expected = torch.tensor([0.00125 / 0.11, 0.145, 0.445, 0.0])
    torch.testing.assert_close(smooth_l1_loss(pred, target, reduction="none"), expected)
    torch.testing.assert_close(smooth_l1_loss(pred, target), expected.sum())
    torch.testing.assert_close(smooth_l1_loss(pred, target, beta=0.11), F.smooth_l1_loss(pred, target, beta=0.11,
                                                                                      reduction="sum"))
    # beta = 0 is the L1 loss.
    torch.testing.assert_close(smooth_l1_loss(pred, target, beta=0.0), torch.tensor(0.75))
    torch.testing.assert_close(l1_loss(pred, target, reduction="none"), torch.tensor([0.05, 0.2, 0.5, 0.0]))


def test_giou_by_hand_and_torchvision():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [1.0, 2.0, 5.0, 6.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0], [1.0, 2.0, 5.0, 6.0]])
    # 1) inter 1, union 7, enclosing 9: GIoU = 1/7 - 2/9 = -5/63 -> loss 68/63.
    # 2) disjoint, union 2, enclosing 3: GIoU = -1/3 -> loss 4/3.   3) identical: 0.
    expected = torch.tensor([68 / 63, 4 / 3, 0.0])
    torch.testing.assert_close(giou_loss(pred, target, reduction="none"), expected)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(100, 2, generator=g) * 50
    a = torch.cat([xy, xy + 1 + torch.rand(100, 2, generator=g) * 30], 1)
    xy = torch.rand(100, 2, generator=g) * 50
    b = torch.cat([xy, xy + 1 + torch.rand(100, 2, generator=g) * 30], 1)
    for reduction in ("none", "sum", "mean"):
        torch.testing.assert_close(giou_loss(a, b, reduction=reduction),
                                   generalized_box_iou_loss(a, b, reduction=reduction))


def test_iou_prediction_loss_by_hand():
    logits = torch.tensor([0.3, -1.2])
    target = torch.tensor([0.6, 0.2])
    sig = [1 / (1 + math.exp(-0.3)), 1 / (1 + math.exp(1.2))]
    bce = [-(t * math.log(p) + (1 - t) * math.log(1 - p)) for p, t in zip(sig, [0.6, 0.2])]
    torch.testing.assert_close(iou_prediction_loss(logits, target, reduction="none"), torch.tensor(bce))
    torch.testing.assert_close(iou_prediction_loss(logits, target), torch.tensor(sum(bce)))
    l2 = [(p - t) ** 2 for p, t in zip(sig, [0.6, 0.2])]
    torch.testing.assert_close(iou_prediction_loss(logits, target, kind="l2", reduction="none"), torch.tensor(l2))


def test_iou_prediction_loss_target_gradient_is_minus_logit():
    # Eq. 5: dBCE/d(target) = log((1 - p) / p) = -logit.
    logits = torch.tensor([0.3, -1.2, 2.5])
    target = torch.tensor([0.6, 0.2, 0.9], requires_grad=True)
    iou_prediction_loss(logits, target).backward()
    torch.testing.assert_close(target.grad, -logits)


def test_errors_and_empty():
    with pytest.raises(ValueError, match="kind"):
        iou_prediction_loss(torch.zeros(1), torch.zeros(1), kind="l1")
    with pytest.raises(ValueError, match="reduction"):
        l1_loss(torch.zeros(1), torch.zeros(1), reduction="avg")
    assert giou_loss(torch.zeros(0, 4), torch.zeros(0, 4), reduction="mean") == 0


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.5, 0.0), (-1.0, 1.5), (0.25, 1.0)])
def test_one_hot_focal_loss_equals_the_elementwise_focal_loss(alpha, gamma):
    """The criterion's few-pass focal loss = sigmoid_focal_loss on the one-hot target summed
    over classes, values and gradients (including very confident logits and no positives)."""
    from iadet.models.losses import one_hot_focal_loss_per_anchor

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 50, 7, generator=g) * 4 - 2)
    logits[0, 0] = torch.tensor([30.0, -30.0, 15.0, -15.0, 0.0, 80.0, -80.0])
    for num_pos in (0, 1, 12):
        pos_image = torch.randint(0, 2, (num_pos,), generator=g)
        pos_anchor = torch.randperm(50, generator=g)[:num_pos]
        pos_label = torch.randint(0, 7, (num_pos,), generator=g)
        pos_anchor[:1] = 0  # one positive on the row of extreme logits
        pos_image[:1] = 0
        target = torch.zeros_like(logits)
        target[pos_image, pos_anchor, pos_label] = 1.0
        x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        expected = sigmoid_focal_loss(x1, target, alpha, gamma, reduction="none").sum(-1)
        got = one_hot_focal_loss_per_anchor(x2, pos_image, pos_anchor, pos_label, alpha, gamma)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        weights = torch.rand(2, 50, generator=g)
        (expected * weights).sum().backward()
        (got * weights).sum().backward()
        torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-6)
