"""ATSS anchor assignment (Zhang et al. 2020, "Adaptive Training Sample Selection"), batched.

Same result type and codes as :class:`~iadet.models.assigner.MaxIoUAssigner`: per image and
anchor, ``k >= 0`` positive for ground truth k, ``-1`` negative, ``-2`` ignored.

The rule, for each image, ground truth g and pyramid level l (levels are consecutive runs of
the anchors, of sizes ``num_anchors_per_level``):

1. Centres: ``c = ((x1 + x2) / 2, (y1 + y2) / 2)`` for anchors and ground truths; distance =
   ``sqrt(dx * dx + dy * dy)`` (L2, float32).
2. Candidates: on each level, all anchors of the ``min(topk, M_l / A)`` locations nearest to
   g's centre, A = ``anchors_per_location`` (a location: A consecutive anchors, as the anchor
   generator lays them out; its centre: its first anchor's, so that rounding between its
   shapes cannot split it). Ties in distance go to the LOWEST location (anchor) index. A level
   with no anchor contributes none. The candidates of all levels are pooled (C of them, the
   same C for every ground truth).
3. Threshold: ``t_g = mean + std`` of the C candidates' IoUs with g, ``std`` the UNBIASED
   one (divides by C - 1, ``torch.std``'s default, which mmdetection uses). Computed in float64.
   With C < 2 the std is undefined: no anchor is positive for g.
4. A candidate is positive for g iff ``IoU >= t_g`` AND its centre is inside g with
   ``min(cx - x1, cy - y1, x2 - cx, y2 - cy) > 0.01`` (strict, absolute pixels).
5. An anchor positive for several ground truths goes to the one with the highest IoU; on
   equal IoU the first one (lowest index, ``argmax``).
6. Every other anchor is negative; an image without ground truth has only negatives.
7. Ignore regions, as MaxIoUAssigner's step 3: an anchor that is not positive and whose IoF
   (intersection over the anchor's area) with some ignore box is > ``ignore_iof_thr``
   becomes ignored; ``ignore_iof_thr <= 0`` turns this off.

``matched_iou``: IoU with the matched ground truth for positives, the largest IoU with any
ground truth of the image otherwise (0 without any), as MaxIoUAssigner.

Sources followed: mmdetection's ``ATSSAssigner.assign`` (open-mmlab/mmdetection,
``mmdet/models/task_modules/assigners/atss_assigner.py``, and the 2.x
``mmdet/core/bbox/assigners/atss_assigner.py``): per-level ``topk(min(k, M_l),
largest=False)`` on centre distances, ``mean(0) + std(0)``, ``>= threshold``,
``min(l, t, r, b) > 0.01``, max-IoU over the claiming ground truths via ``max(dim=1)``.
mmdetection counts k in anchors (its ATSS head has one anchor per location); the ATSS
authors' code (sfzhang15/ATSS, ``atss_core/modeling/rpn/atss/loss.py``) counts it in
locations, ``min(TOPK * num_anchors_per_loc, M_l)``, which matters on RetinaNet's 9 anchors
per location: counted in anchors, k = 9 is one location per level, and the anchors of the
neighbouring locations, even of IoU 0.5 and more with g, are trained as background.
``anchors_per_location`` = A follows the authors; 1 is mmdetection's count (both agree for
A = 1). Where iadet departs, all on corner cases:

* Distance ties: mmdetection leaves the order to ``torch.topk`` (unspecified); iadet picks
  the lowest anchor index, so the result does not depend on the device or the kernel.
* Counted in locations, the ATSS authors rank each anchor by its own centre, so rounding
  between the shapes of one location can, at an exact tie of two locations, take anchors
  from both; iadet ranks whole locations by their first anchor's centre.
* Threshold statistics in float64 (mmdetection: float32), so e.g. identical candidate IoUs
  give a threshold exactly equal to them. C < 2: mmdetection gets NaN from ``torch.std``,
  hence no positive either; iadet makes that explicit.
* Ignore regions: mmdetection's ATSS is off by default (``ignore_iof_thr=-1``); when on,
  it sets the distance of covered anchors to INF BEFORE candidate selection (they drop out
  of the candidates and the statistics) and marks them ignored unless they still end up
  positive. iadet keeps the candidates and statistics independent of ignore regions and
  applies the regions afterwards, exactly as its MaxIoUAssigner (default 0.5).
* IoU without mmdetection's ``eps=1e-6`` union clamp (``iadet.ops.box_iou``), identical for
  boxes of positive area; mmdetection's ``max_overlaps`` is -INF for negatives, iadet's
  ``matched_iou`` follows MaxIoUAssigner instead.
"""
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from iadet.models.assigner import (IGNORED, NEGATIVE, AssignResult, _batched_box_iou,
                                   _batched_iof, pad_boxes)

CENTRE_EPS = 0.01  # a positive's centre must be farther than this from every side of its gt


def _centres(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 2) centres."""
    return torch.stack(((boxes[..., 0] + boxes[..., 2]) / 2.0,
                        (boxes[..., 1] + boxes[..., 3]) / 2.0), dim=-1)


class ATSSAssigner:
    """Adaptive Training Sample Selection (see the module docstring for the exact rule).

    Args:
        topk: candidate locations per ground truth and pyramid level (9).
        ignore_iof_thr: non-positive anchors covered by an ignore box with IoF above this
            are ignored; a value <= 0 turns ignore regions off.
        anchors_per_location: A, the anchors that share a centre (consecutively); each level
            gives ``topk * A`` candidates (the ATSS authors); 1 counts ``topk`` in anchors
            (mmdetection).
    """

    def __init__(self, topk: int = 9, ignore_iof_thr: float = 0.5, anchors_per_location: int = 1):
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        if anchors_per_location < 1:
            raise ValueError(f"anchors_per_location must be >= 1, got {anchors_per_location}")
        self.topk = topk
        self.ignore_iof_thr = ignore_iof_thr
        self.anchors_per_location = anchors_per_location

    @torch.no_grad()
    def assign(self, anchors: Tensor, gt_boxes: Sequence[Tensor],
               ignore_boxes: Optional[Sequence[Tensor]] = None,
               num_anchors_per_level: Optional[Sequence[int]] = None) -> AssignResult:
        """Assign the (M, 4) xyxy anchors shared by all images.

        Args:
            anchors: (M, 4) xyxy pixels, level after level.
            gt_boxes: one (K_i, 4) xyxy tensor per image (K_i may be 0).
            ignore_boxes: ``None`` or one (G_i, 4) xyxy tensor per image (G_i may be 0).
            num_anchors_per_level: the sizes M_l of the levels (required; sum = M).
        Returns:
            :class:`AssignResult` with ``matched_idx`` (N, M) int64 and ``matched_iou`` (N, M).
        """
        num_images, num_anchors = len(gt_boxes), anchors.shape[0]
        levels = self._check_levels(num_anchors_per_level, num_anchors)
        anchors = anchors.float()
        gt, valid = pad_boxes([b.to(anchors) for b in gt_boxes])  # (N, K, 4), (N, K)
        matched = torch.full((num_images, num_anchors), NEGATIVE, dtype=torch.long, device=anchors.device)
        matched_iou = anchors.new_zeros((num_images, num_anchors))
        if gt.shape[1] > 0 and num_anchors > 0:
            iou = _batched_box_iou(gt, anchors)                    # (N, K, M)
            positive = self._positives(anchors, gt, valid, iou, levels)
            matched, matched_iou = self._resolve(iou, valid, positive)
        if ignore_boxes is not None and self.ignore_iof_thr > 0:
            regions, region_valid = pad_boxes([b.to(anchors) for b in ignore_boxes])
            if regions.shape[1] > 0 and num_anchors > 0:
                iof = _batched_iof(anchors, regions).masked_fill(~region_valid[:, :, None], 0.0)
                in_region = iof.amax(dim=1) > self.ignore_iof_thr
                matched = torch.where(in_region & (matched < 0), IGNORED, matched)
        return AssignResult(matched, matched_iou)

    __call__ = assign

    @staticmethod
    def _check_levels(num_anchors_per_level: Optional[Sequence[int]], num_anchors: int) -> List[int]:
        if num_anchors_per_level is None:
            raise ValueError("ATSSAssigner.assign needs num_anchors_per_level (the number of "
                             "anchors of each pyramid level, in the order of the anchors)")
        levels = [int(m) for m in num_anchors_per_level]
        if any(m < 0 for m in levels) or sum(levels) != num_anchors:
            raise ValueError(f"num_anchors_per_level {levels} must be non-negative and sum to "
                             f"the number of anchors {num_anchors}")
        return levels

    def _candidates(self, anchor_centres: Tensor, gt_centres: Tensor, levels: List[int]) -> Tensor:
        """(M, 2) and (N, K, 2) centres -> (N, K, C) indices of each gt's candidate anchors."""
        per = self.anchors_per_location
        picked, start = [], 0
        for size in levels:
            if size % per:
                raise ValueError(f"a level of {size} anchors is not whole locations of anchors_per_location={per}")
            locations = size // per
            k = min(self.topk, locations)
            if k > 0:
                # a location's centre: its first anchor's (its anchors' centres differ by rounding only)
                centres = anchor_centres[start:start + size:per]
                dx = centres[:, 0] - gt_centres[..., 0, None]      # (N, K, L)
                dy = centres[:, 1] - gt_centres[..., 1, None]
                distance = (dx * dx + dy * dy).sqrt()
                # Order by (distance, location index) with one int64 key: non-negative float32
                # values order like their int32 bit patterns, so ties go to the lowest index.
                index = torch.arange(locations, device=distance.device)
                key = (distance.view(torch.int32).to(torch.int64) << 32) | index
                nearest = key.topk(k, dim=-1, largest=False).indices     # (N, K, k) locations
                anchors = nearest[..., None] * per + torch.arange(per, device=nearest.device)
                picked.append(anchors.flatten(-2) + start)
            start += size
        return torch.cat(picked, dim=-1)

    def _positives(self, anchors: Tensor, gt: Tensor, valid: Tensor, iou: Tensor,
                   levels: List[int]) -> Tensor:
        """(N, K, M) bool: anchor m is a positive candidate of gt k (steps 1-4)."""
        anchor_centres = _centres(anchors)
        candidates = self._candidates(anchor_centres, _centres(gt), levels)  # (N, K, C)
        candidate_iou = iou.gather(2, candidates)
        if candidates.shape[-1] >= 2:
            stats = candidate_iou.double()
            threshold = stats.mean(dim=-1) + stats.std(dim=-1, correction=1)
            above = stats >= threshold[..., None]
        else:
            above = torch.zeros_like(candidates, dtype=torch.bool)
        cx, cy = anchor_centres[:, 0][candidates], anchor_centres[:, 1][candidates]
        to_sides = torch.stack((cx - gt[..., 0, None], cy - gt[..., 1, None],
                                gt[..., 2, None] - cx, gt[..., 3, None] - cy))
        inside = to_sides.amin(dim=0) > CENTRE_EPS
        keep = above & inside & valid[..., None]
        return torch.zeros_like(iou, dtype=torch.bool).scatter_(2, candidates, keep)

    @staticmethod
    def _resolve(iou: Tensor, valid: Tensor, positive: Tensor):
        """Step 5: each claimed anchor goes to its highest-IoU claiming gt (first on ties)."""
        claimed_iou = iou.masked_fill(~positive, -1.0)
        winner = claimed_iou.argmax(dim=1)                          # (N, M), first maximum
        is_positive = positive.any(dim=1)
        matched = torch.where(is_positive, winner, NEGATIVE)
        best_any = iou.masked_fill(~valid[:, :, None], -1.0).amax(dim=1).clamp(min=0)
        winner_iou = iou.gather(1, winner[:, None]).squeeze(1)
        return matched, torch.where(is_positive, winner_iou, best_any)
