"""Quality Focal Loss, Varifocal Loss (dense and sparse per-anchor forms) and the centerness target."""
import math

import pytest
import torch

from iadet.models.losses import focal_clamp_limit
from iadet.models.quality_losses import (centerness_target, quality_focal_loss, quality_focal_loss_per_anchor,
                                         varifocal_loss, varifocal_loss_per_anchor)

TINY = torch.finfo(torch.float32).tiny
LOG2 = math.log(2.0)
LOG3 = math.log(3.0)


def count_subnormal(t: torch.Tensor) -> int:
    return int(((t != 0) & (t.abs() < TINY)).sum())


def _dense_target(shape, pos_image, pos_anchor, pos_label, pos_quality):
    return torch.zeros(shape, dtype=pos_quality.dtype).index_put((pos_image, pos_anchor, pos_label), pos_quality)


def _positives(num_images, num_anchors, num_classes, num_pos, seed, dtype=torch.float32):
    """(P,) indices, each (image, anchor) at most once, and qualities in [0, 1] incl. exact 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(num_images * num_anchors, generator=g)[:num_pos]
    pos_image, pos_anchor = flat // num_anchors, flat % num_anchors
    pos_label = torch.randint(0, num_classes, (num_pos,), generator=g)
    quality = torch.rand(num_pos, generator=g, dtype=torch.float64)
    if num_pos >= 4:
        quality[:2] = torch.tensor([0.0, 1.0], dtype=torch.float64)
    return pos_image, pos_anchor, pos_label, quality.to(dtype)


SPARSE = {
    "qfl": (lambda x, i, a, l, q: quality_focal_loss_per_anchor(x, i, a, l, q, beta=2.0),
            lambda x, t: quality_focal_loss(x, t, beta=2.0, reduction="none")),
    "qfl_beta1.5": (lambda x, i, a, l, q: quality_focal_loss_per_anchor(x, i, a, l, q, beta=1.5),
                    lambda x, t: quality_focal_loss(x, t, beta=1.5, reduction="none")),
    "vfl": (lambda x, i, a, l, q: varifocal_loss_per_anchor(x, i, a, l, q),
            lambda x, t: varifocal_loss(x, t, reduction="none")),
    "vfl_unweighted_gamma0": (lambda x, i, a, l, q: varifocal_loss_per_anchor(x, i, a, l, q, 0.5, 0.0, False),
                              lambda x, t: varifocal_loss(x, t, 0.5, 0.0, False, reduction="none")),
}


# ---------------------------------------------------------------- hand-computed values

def test_quality_focal_loss_hand_values():
    x = torch.tensor([0.0, 0.0, LOG3, 0.0])
    y = torch.tensor([0.8, 0.0, 1.0, 0.5])
    expected = [
        0.3 ** 2 * LOG2,             # s = sigmoid(0) = 0.5, y = 0.8: |0.3|^2 * BCE, BCE = -(0.8 + 0.2) log 0.5 = log 2
        0.5 ** 2 * LOG2,             # negative: s^2 * BCE(0, 0) = 0.25 * log 2
        0.25 ** 2 * -math.log(0.75),  # s = 1 / (1 + 1/3) = 0.75, y = 1: (1 - 0.75)^2 * -log 0.75
        0.0,                          # s = y = 0.5: the modulating factor is 0
    ]
    got = quality_focal_loss(x, y, reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(quality_focal_loss(x, y), torch.tensor(sum(expected)))
    torch.testing.assert_close(quality_focal_loss(x, y, reduction="mean"), torch.tensor(sum(expected) / 4))
    # beta = 1: |0.8 - 0.5| * log 2
    torch.testing.assert_close(quality_focal_loss(x[:1], y[:1], beta=1.0), torch.tensor(0.3 * LOG2))


def test_varifocal_loss_hand_values():
    x = torch.tensor([0.0, 0.0, LOG3, LOG3])
    q = torch.tensor([0.8, 0.0, 0.0, 0.6])
    bce_06 = -(0.6 * math.log(0.75) + 0.4 * math.log(0.25))   # p = 0.75, q = 0.6: 0.17261 + 0.55452 = 0.72713
    expected = [
        0.8 * LOG2,                            # positive: q * BCE(0.5, 0.8) = 0.8 * log 2
        0.75 * 0.5 ** 2 * LOG2,                # negative: alpha p^2 BCE(0.5, 0) = 0.75 * 0.25 * log 2
        0.75 * 0.75 ** 2 * math.log(4.0),      # negative, p = 0.75: 0.75 * 0.5625 * -log 0.25
        0.6 * bce_06,                          # positive: 0.6 * 0.72713 = 0.43628
    ]
    torch.testing.assert_close(varifocal_loss(x, q, reduction="none"), torch.tensor(expected), rtol=1e-6, atol=1e-7)
    unweighted = [LOG2, expected[1], expected[2], bce_06]        # w = 1 on positives, negatives unchanged
    torch.testing.assert_close(varifocal_loss(x, q, iou_weighted=False, reduction="none"), torch.tensor(unweighted))
    torch.testing.assert_close(varifocal_loss(x, q, reduction="mean"), torch.tensor(sum(expected) / 4))


def test_the_modulating_weights_are_not_detached():
    """mmdetection computes the weights from pred.sigmoid() without .detach(): the gradient flows through them."""
    x = torch.zeros(1, requires_grad=True)
    varifocal_loss(x, torch.zeros(1)).backward()
    # d/dx [alpha s^2 softplus(x)] = alpha (2 s^2 (1 - s) softplus(x) + s^2 * s) at s = 0.5:
    # 0.75 * (2 * 0.25 * 0.5 * log 2 + 0.125) = 0.75 * (0.17329 + 0.125) = 0.22372 (detached: 0.09375)
    torch.testing.assert_close(x.grad, torch.tensor([0.75 * (0.25 * LOG2 + 0.125)]))
    x.grad = None
    quality_focal_loss(x, torch.tensor([0.8])).backward()
    # d/dx [(y - s)^2 BCE] = -2 (y - s) s (1 - s) BCE + (y - s)^2 (s - y) = -2 * 0.3 * 0.25 * log 2 - 0.09 * 0.3
    torch.testing.assert_close(x.grad, torch.tensor([-0.15 * LOG2 - 0.027]))


def test_per_anchor_hand_values():
    logits = torch.zeros(1, 2, 2)
    one = torch.tensor([0])
    qfl = quality_focal_loss_per_anchor(logits, one, one, torch.tensor([1]), torch.tensor([0.8]))
    # anchor 0: class 0 negative 0.25 log 2 + class 1 positive 0.09 log 2; anchor 1: two negatives 0.5 log 2
    torch.testing.assert_close(qfl, torch.tensor([[0.34 * LOG2, 0.5 * LOG2]]))
    vfl = varifocal_loss_per_anchor(logits, one, one, torch.tensor([1]), torch.tensor([0.8]))
    # anchor 0: 0.75 * 0.25 log 2 + 0.8 log 2; anchor 1: 2 * 0.1875 log 2
    torch.testing.assert_close(vfl, torch.tensor([[(0.1875 + 0.8) * LOG2, 0.375 * LOG2]]))


# ---------------------------------------------------------------- sparse == dense

@pytest.mark.parametrize("name", sorted(SPARSE))
@pytest.mark.parametrize("num_pos", [0, 1, 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_equals_dense_values_and_gradients(name, num_pos, dtype):
    sparse, dense = SPARSE[name]
    shape = (2, 50, 7)
    g = torch.Generator().manual_seed(num_pos)
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * 12).to(dtype).requires_grad_()  # incl. clamped
    pos_image, pos_anchor, pos_label, quality = _positives(*shape, num_pos, seed=num_pos + 1, dtype=dtype)
    quality.requires_grad_()
    got = sparse(logits, pos_image, pos_anchor, pos_label, quality)
    assert got.shape == shape[:2] and got.dtype == dtype
    g_logits, g_quality = torch.autograd.grad(got.sum(), (logits, quality))
    expected = dense(logits, _dense_target(shape, pos_image, pos_anchor, pos_label, quality)).sum(-1)
    e_logits, e_quality = torch.autograd.grad(expected.sum(), (logits, quality))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got, expected, **tol)
    torch.testing.assert_close(g_logits, e_logits, **tol)
    torch.testing.assert_close(g_quality, e_quality, **tol)


@pytest.mark.parametrize("name", sorted(SPARSE))
def test_sparse_allows_distinct_labels_of_one_anchor(name):
    sparse, dense = SPARSE[name]
    logits = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(9))
    i, a, l, q = torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([0, 2]), torch.tensor([0.3, 0.9])
    torch.testing.assert_close(sparse(logits, i, a, l, q), dense(logits, _dense_target((1, 3, 4), i, a, l, q)).sum(-1))


@pytest.mark.parametrize("name", sorted(SPARSE))
@pytest.mark.parametrize("shape", [(0, 5, 3), (2, 0, 3), (2, 5, 0)])
def test_empty_tensors(name, shape):
    sparse, dense = SPARSE[name]
    logits = torch.zeros(shape, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    out = sparse(logits, empty, empty, empty, torch.zeros(0))
    assert out.shape == shape[:2]
    out.sum().backward()
    assert logits.grad.shape == shape
    assert dense(logits, torch.zeros(shape)).shape == shape
    for loss in (quality_focal_loss, varifocal_loss):
        assert loss(logits, torch.zeros(shape)).item() == 0.0
        assert loss(logits, torch.zeros(shape), reduction="mean").item() == 0.0
    assert centerness_target(torch.zeros(0, 2), torch.zeros(0, 4)).shape == (0,)


def test_bad_reduction_raises():
    with pytest.raises(ValueError):
        quality_focal_loss(torch.zeros(2), torch.zeros(2), reduction="avg")
    with pytest.raises(ValueError):
        varifocal_loss(torch.zeros(2), torch.zeros(2), reduction="avg")


# ---------------------------------------------------------------- gradcheck (float64)

def test_gradcheck_dense():
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(12, generator=g, dtype=torch.float64) * 6 - 3).requires_grad_()
    soft = (torch.rand(12, generator=g, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()   # away from 0 and 1
    mixed = soft.detach().clone()
    mixed[::3] = 0.0
    for beta in (2.0, 1.5):
        assert torch.autograd.gradcheck(lambda a, b: quality_focal_loss(a, b, beta, "none"), (x, soft))
        assert torch.autograd.gradcheck(lambda a: quality_focal_loss(a, mixed, beta, "sum"), (x,))
    for iou_weighted in (True, False):
        assert torch.autograd.gradcheck(lambda a, b: varifocal_loss(a, b, 0.75, 2.0, iou_weighted, "none"), (x, soft))
        assert torch.autograd.gradcheck(lambda a: varifocal_loss(a, mixed, 0.75, 2.0, iou_weighted, "mean"), (x,))


def test_gradcheck_per_anchor():
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(2, 4, 3, generator=g, dtype=torch.float64) * 6 - 3).requires_grad_()
    pos_image, pos_anchor, pos_label = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 3]), torch.tensor([1, 0, 2])
    q = torch.tensor([0.3, 0.7, 0.95], dtype=torch.float64, requires_grad=True)
    for name, (sparse, _) in SPARSE.items():
        assert torch.autograd.gradcheck(lambda a, b: sparse(a, pos_image, pos_anchor, pos_label, b), (x, q)), name


# ---------------------------------------------------------------- extreme logits: no subnormal gradient (issue 14)

RANGES = [(-100.0, 100.0), (-45.0, -25.0), (25.0, 45.0), (-100.0, -80.0)]


def _uniform(shape, lo, hi, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) * (hi - lo) + lo).requires_grad_()


@pytest.mark.parametrize("name", sorted(SPARSE))
@pytest.mark.parametrize("lo, hi", RANGES)
def test_per_anchor_losses_have_no_subnormal_gradient(name, lo, hi):
    sparse, _ = SPARSE[name]
    x = _uniform((2, 3000, 20), lo, hi)
    pos_image, pos_anchor, pos_label, quality = _positives(2, 3000, 20, 60, seed=1)
    quality.requires_grad_()
    for scale in (1.0, 1e-6):  # 1 / N for many positives, loss weights
        x.grad, quality.grad = None, None
        (sparse(x, pos_image, pos_anchor, pos_label, quality).sum() * scale).backward()
        for grad in (x.grad, quality.grad):
            assert count_subnormal(grad) == 0
            assert torch.isfinite(grad).all()


@pytest.mark.parametrize("name", sorted(SPARSE))
@pytest.mark.parametrize("lo, hi", RANGES)
def test_dense_losses_have_no_subnormal_gradient(name, lo, hi):
    _, dense = SPARSE[name]
    x = _uniform((6000,), lo, hi)
    g = torch.Generator().manual_seed(2)
    targets = torch.rand(6000, generator=g)
    targets[:2000], targets[2000:3000] = 0.0, 1.0
    targets.requires_grad_()
    dense(x, targets).sum().backward()
    for grad in (x.grad, targets.grad):
        assert count_subnormal(grad) == 0
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("exponent", [2.0, 1.5, 0.0])
def test_the_clamp_changes_each_term_by_less_than_1e_minus_25(exponent):
    """Float64 terms beyond the clamps are below 1e-25, and the float32 losses there match them."""
    limit = focal_clamp_limit(exponent)
    x = torch.tensor([-limit, -limit - 10, -200.0], dtype=torch.float64)
    negative = torch.sigmoid(x) ** exponent * torch.nn.functional.softplus(x)      # s^e BCE(x, 0); also (1-s)^e BCE(-x, 1)
    assert (negative < 1e-25).all()
    assert torch.nn.functional.softplus(torch.tensor(-60.0, dtype=torch.float64)) < 1e-25  # VFL q = 1 at x = 60
    logits = torch.tensor([-limit - 30.0, limit + 30.0, -limit, 70.0])
    targets = torch.tensor([0.0, 1.0, 0.0, 1.0])
    exact = (torch.sigmoid(-logits.double() * (2 * targets.double() - 1)) ** exponent
             * torch.nn.functional.softplus(-logits.double() * (2 * targets.double() - 1)))
    torch.testing.assert_close(quality_focal_loss(logits, targets, exponent, "none").double(), exact, atol=1e-25, rtol=0)
    # VFL: negatives clamped at -T(gamma); a positive of q = 1 is not modulated, clamped at +60
    vfl_logits = torch.tensor([-limit - 30.0, 90.0, -limit, 60.0])
    assert (varifocal_loss(vfl_logits, targets, gamma=exponent, reduction="none") < 1e-25).all()


# ---------------------------------------------------------------- centerness

def test_centerness_target_values():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]]).expand(8, 4)
    points = torch.tensor([
        [2.0, 2.0],    # centre: l = r = t = b = 2 -> 1
        [1.0, 2.0],    # a quarter of the width: l = 1, r = 3, t = b = 2 -> sqrt(1/3 * 1)
        [1.0, 1.0],    # sqrt(1/3 * 1/3) = 1/3
        [0.0, 2.0],    # on the left border: l = 0 -> 0
        [4.0, 4.0],    # on the corner -> 0
        [-1.0, 2.0],   # outside: l clamped to 0 -> 0
        [2.0, 9.0],    # outside below: b clamped to 0 -> 0
        [5.0, -3.0],   # outside on both axes -> 0
    ])
    expected = torch.tensor([1.0, math.sqrt(1.0 / 3.0), 1.0 / 3.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(centerness_target(points, boxes), expected)
    # a 8 x 2 box, point (2, 1.5): l = 2, r = 6, t = 1.5, b = 0.5 -> sqrt(1/3 * 1/3) = 1/3
    torch.testing.assert_close(centerness_target(torch.tensor([[2.0, 1.5]]), torch.tensor([[0.0, 1.0, 8.0, 3.0]])),
                               torch.tensor([1.0 / 3.0]))


def test_centerness_of_degenerate_boxes_is_zero_not_nan():
    boxes = torch.tensor([[3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 0.0, 5.0], [2.0, 2.0, 1.0, 1.0]])   # point, line, inverted
    points = torch.tensor([[3.0, 3.0], [0.0, 2.0], [1.5, 1.5]])
    got = centerness_target(points, boxes)
    assert torch.equal(got, torch.zeros(3))
    assert centerness_target(points.double(), boxes.double()).dtype == torch.float64
