"""Max-IoU anchor assignment (SPEC §2), batched over the images of a batch.

Every anchor gets, per image, one of:
    k >= 0   positive, matched to ground-truth box k of that image;
    -1       negative (background for the classification loss);
    -2       ignored (no loss at all).

Rules, in the order they are applied (``low_quality="gt"``, the iadet default, equal to
MMDetection's ``MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0,
gt_max_assign_all=True)`` used by the authors):

1. max IoU over the image's ground truths < ``neg_iou_thr`` -> negative;
   >= ``pos_iou_thr`` -> positive, matched to the argmax ground truth (first one on ties);
   in between -> ignored.
2. Low-quality matches: each ground truth claims every anchor that reaches its highest IoU
   (all ties), provided that IoU is > ``min_pos_iou``, and the anchor is matched to THAT
   ground truth even when another one overlaps it more. An anchor claimed by several
   ground truths goes to the LAST of them (largest index), as MMDetection's
   ``for i in range(num_gts)`` loop overwrites earlier claims.
   Note: MMDetection tests ``>= min_pos_iou``; with ``min_pos_iou=0`` that lets a ground
   truth overlapping no anchor at all (IoU 0 everywhere) claim every anchor of the image.
   iadet asks for a strictly positive IoU, which changes nothing else.
3. Ignore regions (crowd boxes, VOC "difficult"): an anchor whose IoF (intersection over
   the anchor's area) with any ignore box is > ``ignore_iof_thr`` becomes ignored unless
   it is positive after steps 1-2. (MMDetection instead blanks such anchors before step 1,
   so a crowd region also hides positives; iadet keeps the positives, whose ground truth is
   a real, non-crowd object.)

``low_quality="torchvision"`` mirrors ``torchvision.models.detection._utils.Matcher(0.5,
0.4, allow_low_quality_matches=True)`` exactly: step 1 with its comparisons (< low ->
-1, [low, high) -> -2), then every anchor that reaches some ground truth's highest IoU
(no threshold, ties included) is matched to ITS OWN argmax ground truth. ``"none"`` skips
step 2. Images without ground truth: all anchors negative (then step 3).
"""
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from iadet.ops.boxes import box_area, box_iou

NEGATIVE = -1
IGNORED = -2


class AssignResult(NamedTuple):
    """``matched_idx`` (N, M) int64: index into the image's ground truths, or -1 (negative)
    / -2 (ignored). ``matched_iou`` (N, M) float: IoU with the matched ground truth for
    positives, the largest IoU with any ground truth of the image otherwise (0 without any).
    """

    matched_idx: Tensor
    matched_iou: Tensor


def pad_boxes(boxes: Sequence[Tensor], min_len: int = 0, fill: float = 0.0) -> Tuple[Tensor, Tensor]:
    """Stack per-image (K_i, ...) tensors into (N, K, ...) padded with ``fill``, K = max(K_i, min_len).

    Returns the padded tensor and the (N, K) bool mask of real rows.
    """
    padded = pad_sequence(list(boxes), batch_first=True, padding_value=fill)
    if padded.shape[1] < min_len:
        extra = padded.new_full((padded.shape[0], min_len - padded.shape[1]) + padded.shape[2:], fill)
        padded = torch.cat([padded, extra], dim=1)
    counts = torch.tensor([len(b) for b in boxes], device=padded.device)
    valid = torch.arange(padded.shape[1], device=padded.device)[None, :] < counts[:, None]
    return padded, valid


def _batched_box_iou(boxes: Tensor, anchors: Tensor) -> Tensor:
    """(N, K, 4) boxes and (M, 4) anchors -> (N, K, M) IoU (same arithmetic as ``box_iou``)."""
    n, k, _ = boxes.shape
    return box_iou(boxes.reshape(n * k, 4), anchors).view(n, k, -1)


def _batched_iof(anchors: Tensor, regions: Tensor) -> Tensor:
    """(M, 4) anchors and (N, G, 4) regions -> (N, G, M) intersection / anchor area."""
    lt = torch.max(regions[:, :, None, :2], anchors[None, None, :, :2])
    rb = torch.min(regions[:, :, None, 2:], anchors[None, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    return inter / box_area(anchors).clamp(min=torch.finfo(anchors.dtype).eps)


class MaxIoUAssigner:
    """Assign anchors to ground-truth boxes by IoU (see the module docstring for the rules).

    Args:
        pos_iou_thr: IoU >= this -> positive (0.5).
        neg_iou_thr: IoU < this -> negative (0.4); in between -> ignored.
        min_pos_iou: a ground truth's highest IoU must exceed this for its low-quality claim.
        low_quality: ``"gt"`` (authors, MMDetection), ``"torchvision"`` (compat) or ``"none"``.
        ignore_iof_thr: anchors covered by an ignore box with IoF above this are ignored
            (unless positive); a value <= 0 turns ignore regions off.
    """

    def __init__(self, pos_iou_thr: float = 0.5, neg_iou_thr: float = 0.4, min_pos_iou: float = 0.0,
                 low_quality: str = "gt", ignore_iof_thr: float = 0.5):
        if low_quality not in ("gt", "torchvision", "none"):
            raise ValueError(f"low_quality must be 'gt', 'torchvision' or 'none', got {low_quality!r}")
        if not 0.0 <= neg_iou_thr <= pos_iou_thr:
            raise ValueError(f"need 0 <= neg_iou_thr <= pos_iou_thr, got {neg_iou_thr}, {pos_iou_thr}")
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self.low_quality = low_quality
        self.ignore_iof_thr = ignore_iof_thr

    @torch.no_grad()
    def assign(self, anchors: Tensor, gt_boxes: Sequence[Tensor],
               ignore_boxes: Optional[Sequence[Tensor]] = None,
               num_anchors_per_level: Optional[Sequence[int]] = None) -> AssignResult:
        """Assign the (M, 4) xyxy anchors shared by all images.

        Args:
            anchors: (M, 4) xyxy pixels.
            gt_boxes: one (K_i, 4) xyxy tensor per image (K_i may be 0).
            ignore_boxes: ``None`` or one (G_i, 4) xyxy tensor per image (G_i may be 0).
            num_anchors_per_level: not used (max-IoU assignment ignores the levels); the
                argument of :class:`~iadet.models.atss_assigner.ATSSAssigner`, which needs it.
        Returns:
            :class:`AssignResult` with ``matched_idx`` (N, M) int64 and ``matched_iou`` (N, M).
        """
        num_images, num_anchors = len(gt_boxes), anchors.shape[0]
        anchors = anchors.float()
        gt, valid = pad_boxes([b.to(anchors) for b in gt_boxes])  # (N, K, 4), (N, K)
        matched = torch.full((num_images, num_anchors), NEGATIVE, dtype=torch.long, device=anchors.device)
        matched_iou = anchors.new_zeros((num_images, num_anchors))
        if gt.shape[1] > 0:
            iou = _batched_box_iou(gt, anchors)                    # (N, K, M)
            iou = iou.masked_fill(~valid[:, :, None], -1.0)        # padding never wins
            matched, matched_iou = self._match(iou, valid)
        if ignore_boxes is not None and self.ignore_iof_thr > 0:
            regions, region_valid = pad_boxes([b.to(anchors) for b in ignore_boxes])
            if regions.shape[1] > 0:
                iof = _batched_iof(anchors, regions).masked_fill(~region_valid[:, :, None], 0.0)
                in_region = iof.amax(dim=1) > self.ignore_iof_thr
                matched = torch.where(in_region & (matched < 0), IGNORED, matched)
        return AssignResult(matched, matched_iou)

    def _match(self, iou: Tensor, valid: Tensor) -> Tuple[Tensor, Tensor]:
        """(N, K, M) IoU with padded rows at -1 -> matched index and IoU, both (N, M)."""
        best_iou, best_gt = iou.max(dim=1)                         # (N, M), first gt on ties
        # Matcher's comparisons: < neg -> negative, [neg, pos) -> ignored, >= pos -> best gt.
        matched = best_gt.masked_fill(best_iou < self.neg_iou_thr, NEGATIVE)
        matched = matched.masked_fill((best_iou >= self.neg_iou_thr) & (best_iou < self.pos_iou_thr), IGNORED)
        if self.low_quality != "none":
            gt_best = iou.amax(dim=2, keepdim=True)                # (N, K, 1) highest IoU per gt
            reaches_best = (iou == gt_best) & valid[:, :, None]    # (N, K, M), ties included
            if self.low_quality == "torchvision":
                # Matcher.set_low_quality_matches_: such anchors go to their own best gt.
                claimed = reaches_best.any(dim=1)
                matched = torch.where(claimed, best_gt, matched)
            else:
                reaches_best &= gt_best > self.min_pos_iou
                claimed = reaches_best.any(dim=1)
                # The last claiming gt wins (MMDetection's loop): first True from the end.
                k = iou.shape[1]
                last = k - 1 - reaches_best.flip(1).to(torch.uint8).argmax(dim=1)
                matched = torch.where(claimed, last, matched)
        pos = matched >= 0
        matched_iou = torch.where(pos, iou.gather(1, matched.clamp(min=0)[:, None]).squeeze(1),
                                  best_iou.clamp(min=0))
        return matched, matched_iou

    __call__ = assign
