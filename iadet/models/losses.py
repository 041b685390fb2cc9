"""Loss functions of the IoU-aware RetinaNet (paper Eq. 1-5), as pure functions.

All take float tensors of matching shapes and a ``reduction`` of ``"none"`` (elementwise),
``"sum"`` or ``"mean"``. Boxes are ``xyxy`` absolute pixels.
"""
import torch
import torch.nn.functional as F
from torch import Tensor


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "sum") -> Tensor:
    """Focal loss (RetinaNet; paper Eq. 1 before normalisation) on sigmoid logits.

    FL = -alpha_t * (1 - p_t)^gamma * log(p_t), with p_t = p for targets 1 and 1 - p for 0.

    Args:
        logits: (...) float, e.g. (N, M, C) per anchor and class.
        targets: (...) float in {0, 1} (soft values allowed), same shape.
        alpha: weight of the positives (1 - alpha for negatives); a negative value disables it.
        gamma: focusing exponent.
    Returns:
        the loss reduced as asked ((...) for ``"none"``).
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


def focal_clamp_limit(gamma: float) -> float:
    """The logit magnitude T beyond which the one-hot focal loss clamps its logits.

    A negative's term (1 - alpha) p^gamma softplus(x) and its gradient shrink like
    e^{(gamma + 1) x}: below x = -T, T = 60 / (gamma + 1), both are under e^-60 ~ 1e-26, and
    a few logits further they fall into subnormal floats, which slow the convolution backward
    kernels several-fold on some CPUs (issue 14). Clamping the logit at -T changes each such
    term by less than 1e-26 and makes its gradient exactly 0. The same bound on the positive
    side (x > T) for a positive's alpha (1 - p)^gamma softplus(-x).
    """
    return 60.0 / (gamma + 1.0)


def one_hot_focal_loss_per_anchor(logits: Tensor, pos_image: Tensor, pos_anchor: Tensor, pos_label: Tensor,
                                  alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """The focal loss of one-hot targets, summed over classes: (N, M, C) logits -> (N, M).

    Equals ``sigmoid_focal_loss(logits, one_hot, alpha, gamma, "none").sum(-1)`` (to float
    rounding) where ``one_hot[pos_image[i], pos_anchor[i], pos_label[i]] = 1``, in a third of
    the passes over the N x M x C logits: every element is first taken as a negative,
    (1 - alpha) p^gamma softplus(x) (= -(1 - alpha) p^gamma log(1 - p)), then the P positive
    elements are corrected to alpha (1 - p)^gamma softplus(-x). Logits are clamped to
    [-T, T] of :func:`focal_clamp_limit` (each term changes by < 1e-26) so that the gradient
    holds exact zeros, never subnormal floats, where the loss has none to give.
    """
    w_pos, w_neg = (alpha, 1.0 - alpha) if alpha >= 0 else (1.0, 1.0)
    limit = focal_clamp_limit(gamma)
    x_neg = logits.clamp(min=-limit)
    p = torch.sigmoid(x_neg)
    per_anchor = (p.pow(gamma) * F.softplus(x_neg)).sum(-1) * w_neg
    x = logits[pos_image, pos_anchor, pos_label].clamp(max=limit)
    x_as_neg = x_neg[pos_image, pos_anchor, pos_label]
    p_as_neg = p[pos_image, pos_anchor, pos_label]
    correction = (w_pos * (1 - torch.sigmoid(x)).pow(gamma) * F.softplus(-x)
                  - w_neg * p_as_neg.pow(gamma) * F.softplus(x_as_neg))
    return per_anchor.index_put((pos_image, pos_anchor), correction, accumulate=True)


class _FlushSubnormalGrad(torch.autograd.Function):
    """Identity forward; the backward replaces subnormal gradient values by 0."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        tiny = torch.finfo(grad.dtype).tiny
        return torch.where(grad.abs() < tiny, torch.zeros((), dtype=grad.dtype, device=grad.device), grad)


def flush_subnormal_grad(x: Tensor) -> Tensor:
    """``x`` unchanged, but any gradient value below the smallest normal float that flows back
    through it becomes 0 (for the few-row positive tensors whose losses can underflow, e.g.
    BCE of a very negative IoU logit against a target of 0: sigmoid(x) - 0 is subnormal)."""
    return _FlushSubnormalGrad.apply(x)


def smooth_l1_loss(pred: Tensor, target: Tensor, beta: float = 0.11, reduction: str = "sum") -> Tensor:
    """Smooth L1 (paper Eq. 2): 0.5 x^2 / beta where |x| < beta, else |x| - 0.5 beta; x = pred - target.

    ``beta=0`` gives the L1 loss. Shapes: (..., 4) deltas and (..., 4) targets (any equal shapes).
    """
    diff = (pred - target).abs()
    if beta <= 0:
        return _reduce(diff, reduction)
    loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return _reduce(loss, reduction)


def l1_loss(pred: Tensor, target: Tensor, reduction: str = "sum") -> Tensor:
    """|pred - target| for equal shapes, e.g. (P, 4) deltas (MMDetection 3 and torchvision RetinaNet)."""
    return _reduce((pred - target).abs(), reduction)


def giou_loss(pred_boxes: Tensor, target_boxes: Tensor, eps: float = 1e-7, reduction: str = "sum") -> Tensor:
    """1 - GIoU of matching rows of (..., 4) and (..., 4) xyxy boxes -> (...) before reduction.

    GIoU = IoU - (C - U) / C, C the area of the smallest box enclosing both, U the union;
    ``eps`` as in ``torchvision.ops.generalized_box_iou_loss``.
    """
    x1, y1, x2, y2 = pred_boxes.unbind(-1)
    gx1, gy1, gx2, gy2 = target_boxes.unbind(-1)
    inter = ((torch.min(x2, gx2) - torch.max(x1, gx1)).clamp(min=0)
             * (torch.min(y2, gy2) - torch.max(y1, gy1)).clamp(min=0))
    union = (x2 - x1) * (y2 - y1) + (gx2 - gx1) * (gy2 - gy1) - inter
    iou = inter / (union + eps)
    enclosing = (torch.max(x2, gx2) - torch.min(x1, gx1)) * (torch.max(y2, gy2) - torch.min(y1, gy1))
    giou = iou - (enclosing - union) / (enclosing + eps)
    return _reduce(1 - giou, reduction)


def iou_prediction_loss(iou_logits: Tensor, iou_target: Tensor, kind: str = "bce",
                        reduction: str = "sum") -> Tensor:
    """Loss of the IoU branch on positives: predicted IoU = sigmoid(logit) vs target IoU.

    Args:
        iou_logits: (P,) IoU-branch logits of the positive anchors.
        iou_target: (P,) target IoU in [0, 1] (Eq. 4), detached or not (see the criterion).
        kind: ``"bce"`` (paper) or ``"l2"`` ((sigmoid(logit) - target)^2, Table 2).
    """
    if kind == "bce":
        # Eq. 3: BCE(IoU_i, IoU_target_i) with a soft target; d/d(target) = -logit (Eq. 5).
        loss = F.binary_cross_entropy_with_logits(iou_logits, iou_target, reduction="none")
    elif kind == "l2":
        loss = (torch.sigmoid(iou_logits) - iou_target) ** 2
    else:
        raise ValueError(f"IoU loss kind must be 'bce' or 'l2', got {kind!r}")
    return _reduce(loss, reduction)
