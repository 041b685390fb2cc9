"""Joint classification-quality losses (QFL, VFL) and the FCOS centerness target, as pure functions.

Notation: x a class logit, s = p = sigmoid(x), y = q the soft quality target in [0, 1] (the IoU
of a positive's decoded box with its ground truth at the ground-truth class, 0 elsewhere),
BCE(x, y) = -(y log s + (1 - y) log(1 - s)), computed with ``binary_cross_entropy_with_logits``.
Semantics follow mmdetection's ``mmdet/models/losses/gfocal_loss.py`` and
``mmdet/models/losses/varifocal_loss.py`` (the VarifocalNet repository uses the same VFL): the
modulating weights are computed from ``sigmoid(x)`` and are NOT detached, so the gradient also
flows through them. The target is detached by the caller there; here a target that requires
grad gets its gradient too.

Subnormal floats (issue 14): logits are clamped where the loss is saturated, at -T where the
target is 0 and at +T' where it is 1 (T from :func:`focal_clamp_limit`), so that each clamped
term changes by less than e^-60 ~ 1e-26 and its gradient is exactly 0. Exponents (beta, gamma)
are meant to be 0 or >= 1: for an exponent in (0, 1), |y - s|^e has an infinite slope where
s == y exactly.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from iadet.models.losses import _reduce, flush_subnormal_grad, focal_clamp_limit


def _clamp_saturated(logits: Tensor, targets: Tensor, low_limit: float, high_limit: float) -> Tensor:
    """Logits clamped at -low_limit where the target is <= 0 and at +high_limit where it is >= 1."""
    x = torch.where(targets <= 0, logits.clamp(min=-low_limit), logits)
    return torch.where(targets >= 1, x.clamp(max=high_limit), x)


def _negative_term(logits: Tensor, exponent: float, weight: float) -> Tensor:
    """weight * s^exponent * softplus(x) (= weight * s^exponent * BCE(x, 0)), x clamped at -T."""
    x = logits.clamp(min=-focal_clamp_limit(exponent))
    # threshold 40, not softplus's default 20 (x itself beyond it: off by e^-20 ~ 2e-9, seen in float64)
    return weight * torch.sigmoid(x).pow(exponent) * F.softplus(x, threshold=40.0)


def quality_focal_loss(logits: Tensor, targets: Tensor, beta: float = 2.0, reduction: str = "sum") -> Tensor:
    """Quality Focal Loss (GFL, Li et al. 2020), elementwise on sigmoid logits.

    QFL(s, y) = -|y - s|^beta * ((1 - y) log(1 - s) + y log s) = |y - s|^beta * BCE(x, y),
    s = sigmoid(x). Negatives (y = 0) give s^beta * BCE(x, 0). As mmdetection's
    ``quality_focal_loss`` (``mmdet/models/losses/gfocal_loss.py``): the factor |y - s|^beta is
    not detached (the GFocal repository writes (y - s)^beta, equal for even beta).

    Args:
        logits: (...) float, e.g. (N, M, C).
        targets: (...) soft targets in [0, 1], same shape (differentiable if it requires grad).
        beta: exponent of the modulating factor (2 in GFL).
    Returns:
        the loss reduced as asked ((...) for ``"none"``). Logits are clamped at -T where y = 0
        and at +T where y = 1, T = focal_clamp_limit(beta) (each term changes by < e^-60).
    """
    targets = targets.to(logits.dtype)
    limit = focal_clamp_limit(beta)
    x = _clamp_saturated(logits, targets, limit, limit)
    modulator = (targets - torch.sigmoid(x)).abs().pow(beta)
    loss = F.binary_cross_entropy_with_logits(x, targets, reduction="none") * modulator
    return _reduce(loss, reduction)


def varifocal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.75, gamma: float = 2.0,
                   iou_weighted: bool = True, reduction: str = "sum") -> Tensor:
    """Varifocal Loss (VFNet, Zhang et al. 2021), elementwise on sigmoid logits.

    VFL(p, q) = BCE(x, q) * w with p = sigmoid(x) and
      w = q (``iou_weighted``; 1 otherwise)      where q > 0,
      w = alpha * |p - q|^gamma = alpha * p^gamma  where q <= 0,
    i.e. -q (q log p + (1 - q) log(1 - p)) on positives and -alpha p^gamma log(1 - p) on
    negatives: alpha multiplies only the negatives (unlike the focal loss's alpha). As
    mmdetection's ``varifocal_loss`` (``mmdet/models/losses/varifocal_loss.py``, same in the
    VarifocalNet repository): the split is on the target's value (a positive with q = 0 is
    a negative) and the weight is computed from ``sigmoid(x)`` without detaching it.

    Args:
        logits: (...) float.
        targets: (...) soft targets q in [0, 1] (differentiable if it requires grad).
        alpha: weight of the negatives (0.75); gamma: their focusing exponent (2).
        iou_weighted: weight the positives by q (True) or by 1.
    Returns:
        the loss reduced as asked. Logits are clamped at -focal_clamp_limit(gamma) where q = 0
        and at +60 (= focal_clamp_limit(0): the positive term is not modulated) where q = 1.
    """
    targets = targets.to(logits.dtype)
    x = _clamp_saturated(logits, targets, focal_clamp_limit(gamma), focal_clamp_limit(0.0))
    positive = targets > 0
    # |p - q| replaced by 1 where it is not used, so that its pow has a finite backward there.
    distance = torch.where(positive, torch.ones_like(x), (torch.sigmoid(x) - targets).abs())
    negative_weight = alpha * distance.pow(gamma)
    positive_weight = targets if iou_weighted else torch.ones_like(targets)
    weight = torch.where(positive, positive_weight, negative_weight)
    loss = F.binary_cross_entropy_with_logits(x, targets, reduction="none") * weight
    return _reduce(loss, reduction)


def _sparse_per_anchor(logits: Tensor, pos_image: Tensor, pos_anchor: Tensor, pos_label: Tensor,
                       pos_quality: Tensor, exponent: float, negative_weight: float, elementwise) -> Tensor:
    """Every element as a negative (one pass over N x M x C), then the P positives corrected.

    The P gathered logits and qualities pass :func:`flush_subnormal_grad`, so that the
    correction's gradient holds no subnormal float either (as the criterion's positive rows).
    """
    per_anchor = _negative_term(logits, exponent, negative_weight).sum(-1)                 # (N, M)
    x = flush_subnormal_grad(logits[pos_image, pos_anchor, pos_label])                     # (P,)
    q = flush_subnormal_grad(pos_quality.to(logits.dtype))
    correction = elementwise(x, q) - _negative_term(x, exponent, negative_weight)
    return per_anchor.index_put((pos_image, pos_anchor), correction, accumulate=True)


def quality_focal_loss_per_anchor(logits: Tensor, pos_image: Tensor, pos_anchor: Tensor, pos_label: Tensor,
                                  pos_quality: Tensor, beta: float = 2.0) -> Tensor:
    """QFL with a sparse quality target, summed over classes: (N, M, C) logits -> (N, M).

    Equals ``quality_focal_loss(logits, target, beta, "none").sum(-1)`` (to float rounding)
    where ``target[pos_image[i], pos_anchor[i], pos_label[i]] = pos_quality[i]`` and 0
    elsewhere, in the passes of :func:`one_hot_focal_loss_per_anchor`: every element is first
    a negative s^beta softplus(x), then the P positive elements are corrected to
    |q - s|^beta BCE(x, q).

    Args:
        logits: (N, M, C) class logits.
        pos_image, pos_anchor, pos_label: (P,) int64 indices of the positives; each
            (image, anchor) at most once, as the assigner gives them (distinct labels of one
            anchor would also be right; a repeated (image, anchor, label) would count twice).
        pos_quality: (P,) target quality in [0, 1], normally detached by the caller
            (gradients are supported).
    """
    return _sparse_per_anchor(logits, pos_image, pos_anchor, pos_label, pos_quality, beta, 1.0,
                              lambda x, q: quality_focal_loss(x, q, beta, reduction="none"))


def varifocal_loss_per_anchor(logits: Tensor, pos_image: Tensor, pos_anchor: Tensor, pos_label: Tensor,
                              pos_quality: Tensor, alpha: float = 0.75, gamma: float = 2.0,
                              iou_weighted: bool = True) -> Tensor:
    """VFL with a sparse quality target, summed over classes: (N, M, C) logits -> (N, M).

    Equals ``varifocal_loss(logits, target, alpha, gamma, iou_weighted, "none").sum(-1)`` for
    the dense target of :func:`quality_focal_loss_per_anchor` (same index conventions): every
    element is first a negative alpha p^gamma softplus(x), then the P positives are corrected
    to their VFL term (q BCE(x, q), or the negative term again where q = 0).
    """
    return _sparse_per_anchor(logits, pos_image, pos_anchor, pos_label, pos_quality, gamma, alpha,
                              lambda x, q: varifocal_loss(x, q, alpha, gamma, iou_weighted, reduction="none"))


def centerness_target(points: Tensor, gt_boxes: Tensor) -> Tensor:
    """FCOS centerness of each point in its box: (P, 2) xy and (P, 4) xyxy -> (P,) in [0, 1].

    centerness = sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) with l = x - x1,
    t = y - y1, r = x2 - x, b = y2 - y. The distances are clamped at 0, so a point outside its
    box or on its border has centerness 0; a ratio whose max is 0 (a degenerate box) is 0, not
    NaN. 1 at the centre, sqrt(1/3) at a quarter of the width on the middle line of a square.
    A target: compute it without grad (sqrt has an infinite slope at 0).
    """
    x, y = points.unbind(-1)
    x1, y1, x2, y2 = gt_boxes.unbind(-1)
    left, top = (x - x1).clamp(min=0), (y - y1).clamp(min=0)
    right, bottom = (x2 - x).clamp(min=0), (y2 - y).clamp(min=0)
    tiny = torch.finfo(left.dtype).tiny

    def ratio(a: Tensor, b: Tensor) -> Tensor:
        return torch.min(a, b) / torch.max(a, b).clamp(min=tiny)

    return torch.sqrt(ratio(left, right) * ratio(top, bottom))
