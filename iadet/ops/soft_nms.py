"""Soft-NMS (Bodla et al. 2017) and IoU-guided NMS (IoU-Net, Jiang et al. 2018) in plain
PyTorch, on CPU and CUDA tensors.

Both are class-aware like :func:`iadet.ops.nms.batched_nms`: boxes interact only with boxes of
the same ``idxs`` group. IoU is the torchvision / mmcv (``offset=0``) arithmetic on ``xyxy``
boxes: ``w = max(0, min(x2, x2') - max(x1, x1'))``, same for ``h``, ``inter = w * h``,
``iou = inter / (area + area' - inter)`` with ``area = (x2 - x1) * (y2 - y1)``, in the boxes'
floating dtype (float16 / bfloat16 are computed in float32, as in ``nms.py``).

:func:`soft_nms` follows mmcv's ``softnms_cpu`` (``mmcv/ops/csrc/pytorch/cpu/nms.cpp``):

* pick the remaining box with the highest current score, keep it, then rescale every other
  remaining box ``j`` of its group: linear ``s_j *= (1 - iou) if iou >= iou_threshold else 1``,
  gaussian ``s_j *= exp(-iou**2 / sigma)``; a box whose new score is ``< min_score`` is
  dropped. mmcv compares in float32 (``float`` threshold / ``min_score``); here both are cast
  to the dtype of the compared tensor, which is the same for float32 inputs.
* Differences from mmcv: equal current scores are picked lower original index first (mmcv
  takes the first in its internally swapped array, an order that depends on earlier drops);
  boxes whose *input* score is ``< min_score`` are dropped up front (mmcv only tests a box
  after rescaling it, so its very first pick escapes the test); a NaN IoU (two zero-area boxes,
  ``0 / 0``) counts as IoU 0 (mmcv's gaussian would produce a NaN score).

Groups are independent, so one vectorised step picks the current maximum of *every* group at
once on a padded (groups, width) layout: the number of Python steps is the size of the largest
group, and step ``k`` costs (groups larger than ``k``) x (largest group size) element ops.

:func:`iou_guided_nms` is hard NMS keyed on the predicted IoU (exactly
:func:`iadet.ops.nms.batched_nms` on ``iou_scores``) plus a vectorised per-cluster maximum of
the classification scores.
"""
import torch
from torch import Tensor

from iadet.ops.nms import batched_nms

SOFT_NMS_METHODS = ("linear", "gaussian")
# soft_nms stops early once no group has a live box; checked (a host sync) every this many steps.
EXHAUSTION_CHECK_STEPS = 32
# Upper bound on the number of IoU values iou_guided_nms materialises at once.
MAX_IOU_ELEMENTS = 1 << 22


def soft_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, method: str = "linear",
             iou_threshold: float = 0.3, sigma: float = 0.5, min_score: float = 1e-3):
    """Class-aware Soft-NMS with mmcv's rules.

    Per group, with ``s`` the current scores of the remaining boxes (initially the input scores
    of the boxes with ``score >= min_score``):

    1. pick ``i = argmax s`` (equal scores: lower original index first), keep ``(i, s_i)`` and
       remove ``i`` from the remaining boxes;
    2. for every remaining box ``j`` of the group, with ``o = IoU(i, j)``:

       * ``method="linear"``:   ``s_j <- s_j * (1 - o)`` if ``o >= iou_threshold``, else unchanged;
       * ``method="gaussian"``: ``s_j <- s_j * exp(-o**2 / sigma)`` (every box);

    3. drop every remaining box with ``s_j < min_score``; repeat until no box remains.

    Args:
        boxes: (N, 4) floating ``xyxy`` boxes in absolute pixels.
        scores: (N,) floating, finite scores.
        idxs: (N,) group id (e.g. class label); boxes of different groups never interact.
        method: ``"linear"`` or ``"gaussian"``.
        iou_threshold: linear only; the rescaling applies where ``IoU >= iou_threshold``
            (mmcv's ``ovr >= iou_threshold``).
        sigma: gaussian only; the rescaling factor is ``exp(-IoU**2 / sigma)``.
        min_score: boxes whose score is (or becomes) ``< min_score`` are dropped.

    Returns:
        ``(keep, new_scores)``: (K,) int64 original indices of the kept boxes and (K,) their
        rescaled scores (dtype of ``scores``; float32 for float16 / bfloat16), in visiting order,
        which is decreasing new score with ties by lower index (the order of one loop over all
        groups that always picks the highest current score of any group).
    """
    _check_inputs(boxes, idxs, scores=scores)
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"method must be one of {SOFT_NMS_METHODS}, got {method!r}")
    boxes, scores = _at_least_float32(boxes), _at_least_float32(scores)
    device = boxes.device
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64, device=device), scores.new_empty((0,))
    index, valid, group_sizes = _padded_groups(idxs)
    padded_boxes = boxes[index]  # (G, W, 4), groups by decreasing size
    padded_areas = _box_area(padded_boxes)
    threshold = torch.tensor(iou_threshold, dtype=boxes.dtype, device=device)
    floor = torch.tensor(min_score, dtype=scores.dtype, device=device)
    current = torch.where(valid, scores[index], -torch.inf)  # removed boxes: -inf
    current = torch.where(current >= floor, current, -torch.inf)
    width = group_sizes[0]
    column = torch.arange(width, device=device)
    picked_index, picked_score = [], []
    num_active = len(group_sizes)
    for step in range(width):
        while group_sizes[num_active - 1] <= step:  # groups with no box left
            num_active -= 1
        live = current[:num_active]  # view: in-place updates reach ``current``
        best = live.amax(dim=1, keepdim=True)  # (A, 1); -inf where a group is exhausted
        pick = torch.where(live == best, column, width).amin(dim=1, keepdim=True)
        picked_index.append(index[:num_active].gather(1, pick))
        picked_score.append(best)
        live.scatter_(1, pick, -torch.inf)
        picked_boxes = padded_boxes[:num_active].gather(1, pick[:, :, None].expand(-1, -1, 4))
        iou = _iou(picked_boxes, padded_boxes[:num_active],
                   padded_areas[:num_active].gather(1, pick), padded_areas[:num_active])
        weight = _soft_weight(iou.nan_to_num_(nan=0.0), method, threshold, sigma)
        rescaled = live * weight.to(live.dtype)
        current[:num_active] = torch.where(rescaled >= floor, rescaled, -torch.inf)
        if step % EXHAUSTION_CHECK_STEPS == EXHAUSTION_CHECK_STEPS - 1:
            if not bool((current[:num_active] > -torch.inf).any()):
                break
    kept_index = torch.cat(picked_index)[:, 0]
    kept_score = torch.cat(picked_score)[:, 0]
    real = kept_score > -torch.inf
    kept_index, kept_score = kept_index[real], kept_score[real]
    by_index = torch.argsort(kept_index)
    order = by_index[torch.sort(kept_score[by_index], descending=True, stable=True).indices]
    return kept_index[order], kept_score[order]


def iou_guided_nms(boxes: Tensor, cls_scores: Tensor, iou_scores: Tensor, idxs: Tensor,
                   iou_threshold: float = 0.5):
    """Class-aware IoU-guided NMS (IoU-Net).

    Boxes are visited by decreasing predicted IoU ``iou_scores`` (equal values: lower index
    first). A visited box that is not yet suppressed is kept and suppresses every later,
    not yet suppressed box ``j`` of its group with ``IoU > iou_threshold`` (compared as
    ``double(iou) > double(iou_threshold)``, like torchvision and ``nms.py``); these form its
    cluster ``C_i``. The kept set is exactly ``batched_nms(boxes, iou_scores, idxs,
    iou_threshold)``, and the new score of a kept box is ``max(cls_i, max_{j in C_i} cls_j)``.

    A suppressed box belongs to exactly one cluster: that of the *first* kept box of its group
    visited before it with IoU above the threshold (later kept boxes find it already
    suppressed).

    Args:
        boxes: (N, 4) floating ``xyxy`` boxes in absolute pixels.
        cls_scores: (N,) floating classification scores.
        iou_scores: (N,) floating predicted IoUs (the NMS ranking key).
        idxs: (N,) group id (e.g. class label); boxes of different groups never interact.
        iou_threshold: suppression threshold on the IoU (strict ``>``).

    Returns:
        ``(keep, new_scores)``: (K,) int64 original indices of the kept boxes, sorted by
        decreasing new score (ties: visiting order), and (K,) their new scores (dtype of
        ``cls_scores``).
    """
    _check_inputs(boxes, idxs, scores=cls_scores)
    _check_inputs(boxes, idxs, scores=iou_scores)
    if boxes.shape[0] == 0:
        return (torch.empty((0,), dtype=torch.int64, device=boxes.device),
                cls_scores.new_empty((0,)))
    keep = batched_nms(boxes, iou_scores, idxs, iou_threshold)  # visiting order
    new_scores = _cluster_max(_at_least_float32(boxes), cls_scores, idxs, keep, iou_threshold)
    order = torch.sort(new_scores, descending=True, stable=True).indices
    return keep[order], new_scores[order]


def _cluster_max(boxes, cls_scores, idxs, keep, iou_threshold) -> Tensor:
    """Max of ``cls_scores`` over each kept box's cluster -> (K,), aligned with ``keep``.

    ``keep`` is in visiting order. A suppressed box ``j`` belongs to the cluster of the first
    kept box of its group, in visiting order, with ``IoU > iou_threshold``: some kept box
    visited before ``j`` overlaps it (that is why it is suppressed), so the first overlapping
    kept box precedes ``j`` and suppressed it; kept boxes visited after ``j`` find it already
    gone. Kept boxes are laid out as (kept groups, most kept per group) rows in visiting order,
    so the suppressor is the first hit along the victim's row.
    """
    device, num_boxes = boxes.device, boxes.shape[0]
    suppressed = torch.ones(num_boxes, dtype=torch.bool, device=device)
    suppressed[keep] = False
    victims = torch.nonzero(suppressed)[:, 0]
    new_scores = cls_scores[keep].clone()
    if victims.numel() == 0:
        return new_scores
    by_group = torch.sort(idxs[keep], stable=True).indices  # slots into keep, visiting order
    groups, counts = torch.unique_consecutive(idxs[keep][by_group], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    column = torch.arange(int(counts.max()), device=device)
    filled = column < counts[:, None]
    slots = by_group[(starts[:, None] + column).clamp(max=keep.numel() - 1)]  # (R, Kmax)
    members = keep[slots]
    # The first box of a group in visiting order is always kept: every victim has a row.
    victim_rows = torch.searchsorted(groups, idxs[victims])
    victim_slots = []
    chunk = max(1, MAX_IOU_ELEMENTS // column.numel())
    for start in range(0, victims.numel(), chunk):
        victim = victims[start:start + chunk]
        row = victim_rows[start:start + chunk]
        candidate = members[row]  # (C, Kmax) kept boxes of the victim's group
        iou = _iou(boxes[victim][:, None], boxes[candidate], _box_area(boxes[victim])[:, None],
                   _box_area(boxes[candidate]))
        hit = filled[row] & (iou.double() > float(iou_threshold))
        first = hit.to(torch.uint8).argmax(dim=1, keepdim=True)  # first maximum: first hit
        victim_slots.append(slots[row].gather(1, first)[:, 0])
    return new_scores.scatter_reduce_(0, torch.cat(victim_slots), cls_scores[victims],
                                      reduce="amax", include_self=True)


def _soft_weight(iou: Tensor, method: str, threshold: Tensor, sigma: float) -> Tensor:
    """Soft-NMS rescaling factor: linear ``1 - iou`` where ``iou >= threshold`` (else 1),
    gaussian ``exp(-iou**2 / sigma)``."""
    if method == "linear":
        return torch.where(iou >= threshold, 1 - iou, torch.ones_like(iou))
    return torch.exp(-(iou * iou) / sigma)


def _padded_groups(idxs: Tensor):
    """Padded (groups, width) layout of the boxes, groups ordered by decreasing size.

    Returns ``index`` (G, W) int64 original indices (increasing along a row; padding: 0),
    ``valid`` (G, W) bool and the group sizes as a host list (decreasing; ``W`` = largest).
    """
    num_boxes = idxs.shape[0]
    by_group = torch.sort(idxs, stable=True).indices
    sizes = torch.unique_consecutive(idxs[by_group], return_counts=True)[1]
    starts = torch.cumsum(sizes, 0) - sizes
    sizes, by_size = torch.sort(sizes, descending=True, stable=True)
    starts = starts[by_size]
    sizes_host = sizes.tolist()
    column = torch.arange(sizes_host[0], device=idxs.device)
    valid = column < sizes[:, None]
    index = torch.where(valid, by_group[(starts[:, None] + column).clamp(max=num_boxes - 1)], 0)
    return index, valid, sizes_host


def _iou(first: Tensor, second: Tensor, first_area: Tensor, second_area: Tensor) -> Tensor:
    """IoU of broadcastable (..., 4) ``xyxy`` boxes with their areas -> (...)."""
    width = (torch.minimum(first[..., 2], second[..., 2])
             - torch.maximum(first[..., 0], second[..., 0])).clamp_(min=0)
    height = (torch.minimum(first[..., 3], second[..., 3])
              - torch.maximum(first[..., 1], second[..., 1])).clamp_(min=0)
    inter = width * height
    return inter / (first_area + second_area - inter)


def _box_area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _at_least_float32(tensor: Tensor) -> Tensor:
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _check_inputs(boxes: Tensor, idxs: Tensor, scores: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) in xyxy format, got {tuple(boxes.shape)}")
    if not boxes.is_floating_point() or not scores.is_floating_point():
        raise TypeError(f"boxes and scores must be floating point, got {boxes.dtype} and "
                        f"{scores.dtype}")
    num_boxes = boxes.shape[0]
    if scores.shape != (num_boxes,) or idxs.shape != (num_boxes,):
        raise ValueError(f"scores and idxs must have shape ({num_boxes},), got "
                         f"{tuple(scores.shape)} and {tuple(idxs.shape)}")
