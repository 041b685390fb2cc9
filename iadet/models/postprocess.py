"""Inference post-processing (paper §3.3, Eq. 7; SPEC §3), batched over images.

Per image and level: confidence S = p**alpha * IoU**(1 - alpha) for every (anchor, class);
the ``topk_per_level`` candidates by S; score threshold on S; decode; clip to the image;
class-wise NMS on S; keep ``max_det`` by S. The reported score is S.

A candidate is an (anchor, class) pair (``candidates="pairs"``, iadet's default, as
torchvision and MMDetection 3), or an anchor ranked by its highest S over the classes, all
of whose classes are then thresholded (``candidates="anchors"``: the authors' MMDetection v1
``max_scores.topk(nms_pre)``, used by the paper configs).

Suppression (``nms``): class-wise hard NMS on S (the paper), Soft-NMS (linear or Gaussian
decay of S, :func:`iadet.ops.soft_nms.soft_nms`) or IoU-guided NMS (visit by predicted IoU,
the kept box takes the highest S of its cluster, :func:`iadet.ops.soft_nms.iou_guided_nms`;
with ``alpha=1`` S is the class score p, IoU-Net's rule).
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from iadet.models.box_coder import DeltaBoxCoder
from iadet.ops.boxes import clip_boxes
from iadet.ops.nms import batched_nms
from iadet.ops.soft_nms import iou_guided_nms, soft_nms

SUPPRESSIONS = ("hard", "soft_linear", "soft_gaussian", "iou_guided")


def detection_confidence(cls_prob: Tensor, iou_prob: Optional[Tensor], alpha: Optional[float],
                         per_anchor: bool = True) -> Tensor:
    """Eq. 7 of the paper: S = p**alpha * IoU**(1 - alpha).

    Args:
        cls_prob: (..., C) classification probabilities p.
        iou_prob: (...) predicted IoU per anchor (shared by all classes), or None when the
            model has no IoU branch (then S = p). With ``per_anchor=False``, the IoU of each
            element of ``cls_prob`` instead (same shape).
        alpha: in [0, 1], or None for the plain product S = p * IoU.
    """
    if iou_prob is None:
        return cls_prob
    if per_anchor:
        iou_prob = iou_prob.unsqueeze(-1)
    if alpha is None:
        return cls_prob * iou_prob
    return cls_prob.pow(alpha) * iou_prob.pow(1.0 - alpha)


class PostProcessor:
    """Turns head outputs into detections.

    Args:
        box_coder: decodes deltas against anchors.
        alpha: Eq. 7 exponent in [0, 1], or None (S = p * IoU).
        score_thr: minimum S (strictly greater, as torchvision and MMDetection).
        topk_per_level: candidates per level, ranked by S.
        nms_iou: class-wise NMS IoU threshold.
        max_det: detections kept per image.
        order: ``"topk_then_thr"`` (authors, iadet) or ``"thr_then_topk"`` (torchvision,
            MMDetection 3). Both select the same set (in either ``candidates`` mode); the
            option exists so each convention is spelled out where it is applied.
        candidates: what ``topk_per_level`` counts. ``"pairs"``: the (anchor, class) pairs
            with the highest S. ``"anchors"`` (authors): the anchors with the highest
            max-over-classes S (ties: the lower anchor index first), then every class of
            them with S above the threshold; a level may then give up to
            ``topk_per_level * C`` candidates.
        nms: ``"hard"`` (the paper), ``"soft_linear"``, ``"soft_gaussian"`` (Soft-NMS: S of a
            later box of the class times 1 - IoU where IoU >= ``nms_iou`` (mmcv), or times
            exp(-IoU^2 / ``soft_nms_sigma``); boxes whose S falls below
            ``soft_nms_min_score`` are dropped) or ``"iou_guided"`` (needs the IoU branch).
    """

    def __init__(self, box_coder: DeltaBoxCoder, alpha: Optional[float] = 0.5, score_thr: float = 0.05,
                 topk_per_level: int = 1000, nms_iou: float = 0.5, max_det: int = 100,
                 order: str = "topk_then_thr", candidates: str = "pairs", nms: str = "hard",
                 soft_nms_sigma: float = 0.5, soft_nms_min_score: float = 0.05):
        if nms not in SUPPRESSIONS:
            raise ValueError(f"nms must be one of {', '.join(SUPPRESSIONS)}, got {nms!r}")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] or None, got {alpha}")
        if order not in ("topk_then_thr", "thr_then_topk"):
            raise ValueError(f"order must be 'topk_then_thr' or 'thr_then_topk', got {order!r}")
        if candidates not in ("pairs", "anchors"):
            raise ValueError(f"candidates must be 'pairs' or 'anchors', got {candidates!r}")
        self.box_coder = box_coder
        self.alpha = alpha
        self.score_thr = score_thr
        self.topk_per_level = topk_per_level
        self.nms_iou = nms_iou
        self.max_det = max_det
        self.order = order
        self.candidates = candidates
        self.nms = nms
        self.soft_nms_sigma = soft_nms_sigma
        self.soft_nms_min_score = soft_nms_min_score

    def select_candidates(self, cls_logits: Tensor, iou_prob: Optional[Tensor], alpha: Optional[float],
                          num_anchors_per_level: Sequence[int]):
        """Per-level top-k and threshold on S (Eq. 7).

        S is computed only where it can pass the threshold: since S = p^alpha IoU^(1-alpha)
        grows with the logit x of p, S > score_thr needs x > a bound that depends on the
        anchor's IoU alone (:meth:`logit_bounds`). The logits above a slightly loosened
        bound are gathered, their S computed exactly and thresholded, and the top-k taken
        among them. When more than half of a level passes, S of the whole level is computed
        and one top-k runs over it. Both select the same candidates as a top-k and threshold
        over the full S (up to the order of exactly equal scores).

        Args:
            cls_logits: (N, M, C) classification logits.
            iou_prob: (N, M) IoU per anchor in Eq. 7, or None (S = p).
            alpha: Eq. 7 exponent, or None (S = p * IoU).
        Returns:
            (image_idx, anchor_idx, label, score), each (K,), flattened over the batch in
            image order.
        """
        n, _, c = cls_logits.shape
        if self.candidates == "anchors":
            return self._anchor_candidates(cls_logits, iou_prob, alpha, num_anchors_per_level)
        bounds = self.logit_bounds(iou_prob, alpha, n, cls_logits.shape[1], cls_logits.device)
        picked = []
        start = 0
        for count in num_anchors_per_level:
            level = slice(start, start + count)
            iou = iou_prob[:, level] if iou_prob is not None else None
            bound = bounds[:, level] if bounds is not None else None
            img, idx, vals = self._level_candidates(cls_logits[:, level], iou, alpha, bound)
            picked.append((img, idx + start * c, vals))
            start += count
        img, flat, vals = (torch.cat(parts) for parts in zip(*picked))
        by_image = torch.sort(img, stable=True).indices
        img, flat, vals = img[by_image], flat[by_image], vals[by_image]
        return img, flat // c, flat % c, vals

    def _anchor_candidates(self, cls_logits: Tensor, iou_prob: Optional[Tensor], alpha: Optional[float],
                           num_anchors_per_level: Sequence[int]):
        """:meth:`select_candidates` for ``candidates="anchors"`` (the authors' rule).

        Per level, the ``topk_per_level`` anchors with the highest S over classes, then every
        class of them with S > score_thr. S grows with p for a fixed anchor, so an anchor's
        highest S is S of its largest logit: one max over classes, then S of N x M values.
        Only anchors whose highest S passes the threshold can give a candidate, and they
        outrank all others, so the top-k runs among them (the same anchors as a top-k over
        all of them, as the authors do). Ties at the k-th place go to the lower anchor index.
        Candidates come in image, level, anchor, class order.
        """
        n = cls_logits.shape[0]
        best = detection_confidence(cls_logits.amax(dim=2).sigmoid(), iou_prob, alpha, per_anchor=False)
        passing = best > self.score_thr  # (N, M)
        start = 0
        for count in num_anchors_per_level:
            level = slice(start, start + count)
            start += count
            k = min(self.topk_per_level, count)
            lvl_pass = passing[:, level]
            if count == 0 or n == 0 or int(lvl_pass.sum(dim=1).max()) <= k:
                continue  # every passing anchor of every image is within the top k
            vals = best[:, level].masked_fill(~lvl_pass, -1.0)
            kth = vals.topk(k, dim=1).values[:, -1:]  # (N, 1)
            above, tied = vals > kth, vals == kth
            room = k - above.sum(dim=1, keepdim=True)
            passing[:, level] = lvl_pass & (above | (tied & (tied.cumsum(dim=1) <= room)))
        img, anchor = passing.nonzero(as_tuple=True)  # image-major, then anchor: levels in order
        scores = detection_confidence(cls_logits[img, anchor].sigmoid(),
                                      iou_prob[img, anchor] if iou_prob is not None else None, alpha)
        keep, label = (scores > self.score_thr).nonzero(as_tuple=True)
        return img[keep], anchor[keep], label, scores[keep, label]

    def logit_bounds(self, iou_prob: Optional[Tensor], alpha: Optional[float], n: int, m: int,
                     device) -> Optional[Tensor]:
        """(N, M, 1) float32 b such that S > score_thr implies logit > b; None where no
        useful bound exists (score_thr <= 0, or alpha < 0.1, where S hardly depends on p).

        S > t <=> p > p_min with p_min = t (no IoU, or alpha = 1), t / IoU (alpha None) or
        (t / IoU^(1 - alpha))^(1 / alpha). Computed in float64 and loosened by 1e-4 in
        log p, 25 times the float32 rounding of S (a few ulp, over alpha >= 0.1): the exact
        test on S follows, so the loose bound only admits a few extra candidates.
        """
        if self.score_thr <= 0.0 or (iou_prob is not None and alpha is not None and alpha < 0.1):
            return None
        log_t = math.log(self.score_thr)
        if iou_prob is None or alpha == 1.0:
            log_p_min = torch.full((n, m), log_t, dtype=torch.float64, device=device)
        else:
            log_iou = iou_prob.double().clamp(min=1e-300).log()
            if alpha is None:  # S = p * IoU
                log_p_min = log_t - log_iou
            else:
                log_p_min = (log_t - (1.0 - alpha) * log_iou) / alpha
        log_p_min = log_p_min - 1e-4
        bound = log_p_min - torch.log1p(-log_p_min.clamp(max=-1e-12).exp())  # logit(p_min)
        bound = torch.where(log_p_min >= 0.0, math.inf, bound)  # p_min >= 1: S cannot pass
        return bound.float()[..., None]

    def _level_candidates(self, logits: Tensor, iou: Optional[Tensor], alpha: Optional[float],
                          bound: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """(image_idx, flat_idx, score) of one level; ``logits`` (N, A, C), ``iou`` (N, A)."""
        n, a, c = logits.shape
        k = min(self.topk_per_level, a * c)
        maybe = (logits > bound).reshape(n, -1) if bound is not None else None
        if maybe is None or 2 * int(maybe.count_nonzero()) > maybe.numel():
            # Dense: S of the whole level, one top-k, then the threshold.
            level = detection_confidence(logits.sigmoid(), iou, alpha).reshape(n, -1)
            if self.order == "thr_then_topk":
                level = level.masked_fill(level <= self.score_thr, -1.0)
            vals, idx = level.topk(k, dim=1)
            valid = vals > self.score_thr
            img = torch.arange(n, device=logits.device)[:, None].expand_as(idx)[valid]
            return img, idx[valid], vals[valid]
        # Sparse: per image, S of the logits above the bound, the top-k, then the threshold.
        parts = []
        for i in range(n):
            idx = maybe[i].nonzero().squeeze(1)
            p = logits[i].reshape(-1).index_select(0, idx).sigmoid()
            vals = detection_confidence(p, iou[i].index_select(0, idx // c) if iou is not None else None,
                                        alpha, per_anchor=False)
            if idx.numel() > k:  # top-k then threshold = threshold then top-k
                vals, top = vals.topk(k)
                idx = idx[top]
            keep = vals > self.score_thr
            idx, vals = idx[keep], vals[keep]
            parts.append((torch.full_like(idx, i), idx, vals))
        img, idx, vals = (torch.cat(p) for p in zip(*parts))
        return img, idx, vals

    def suppress(self, boxes: Tensor, score: Tensor, groups: Tensor, iou: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Class-wise suppression of the (K,) candidates: the kept indices in decreasing order
        of their final S, and the (K,) scores with the kept ones updated (Soft-NMS's decayed S,
        IoU-guided NMS's cluster maximum; hard NMS leaves S as it is)."""
        if self.nms == "hard":
            return batched_nms(boxes.float(), score.float(), groups, self.nms_iou), score
        if self.nms == "iou_guided":
            if iou is None:
                raise ValueError("nms='iou_guided' visits boxes by their predicted IoU: the model needs the IoU branch")
            keep, new = iou_guided_nms(boxes.float(), score.float(), iou.float(), groups, self.nms_iou)
        else:
            keep, new = soft_nms(boxes.float(), score.float(), groups, method=self.nms[len("soft_"):],
                                 iou_threshold=self.nms_iou, sigma=self.soft_nms_sigma,
                                 min_score=self.soft_nms_min_score)
        return keep, score.index_put((keep,), new.to(score.dtype))

    def __call__(self, head_out: Dict[str, Tensor], anchors: Tensor,
                 image_sizes: Sequence[Tuple[int, int]], alpha: Optional[float] = "default",
                 iou_prob: Optional[Tensor] = None) -> List[Dict[str, Tensor]]:
        """Detections for a batch.

        Args:
            head_out: the head's dict (``cls_logits`` (N, M, C), ``bbox_deltas`` (N, M, 4),
                optional ``iou_logits`` (N, M), ``num_anchors_per_level``).
            anchors: (M, 4) xyxy anchors of all levels, concatenated P3 first.
            image_sizes: (height, width) of each image inside the padded batch; boxes are
                clipped to it.
            alpha: overrides the configured alpha for this call.
            iou_prob: (N, M) IoU per anchor that replaces the predicted one in Eq. 7 (the
                paper's upper bound, Table 6, passes IoU_truth here); the model then needs
                no IoU branch.
        Returns:
            one dict per image: ``boxes`` (K, 4) xyxy in input pixels, ``scores`` (K,) S,
            ``labels`` (K,) int64 class index, ``cls_scores`` (K,) p, and ``ious`` (K,)
            IoU used in Eq. 7 (predicted, or ``iou_prob``) when there is one. Sorted by
            decreasing S.
        """
        alpha = self.alpha if alpha == "default" else alpha
        cls_logits = head_out["cls_logits"]
        if iou_prob is None:
            iou_logits = head_out.get("iou_logits")
            iou_prob = iou_logits.sigmoid() if iou_logits is not None else None
        img, anchor, label, score = self.select_candidates(cls_logits, iou_prob, alpha,
                                                           head_out["num_anchors_per_level"])

        boxes = self.box_coder.decode(head_out["bbox_deltas"][img, anchor], anchors[anchor])
        sizes = torch.as_tensor(image_sizes, dtype=boxes.dtype, device=boxes.device).reshape(-1, 2)
        boxes = clip_boxes(boxes, sizes[img, 0], sizes[img, 1])

        num_classes = cls_logits.shape[2]
        candidate_iou = iou_prob[img, anchor] if iou_prob is not None else None
        keep, score = self.suppress(boxes, score, img * num_classes + label, candidate_iou)
        # keep is sorted by score; a stable sort by image groups it per image in score order.
        img_kept, order = torch.sort(img[keep], stable=True)
        keep = keep[order]
        counts = torch.bincount(img_kept, minlength=len(image_sizes))
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(keep.numel(), device=keep.device) - starts[img_kept]
        keep = keep[rank < self.max_det]
        counts = counts.clamp(max=self.max_det).tolist()

        fields = {"boxes": boxes, "scores": score, "labels": label,
                  "cls_scores": cls_logits[img, anchor, label].sigmoid()}
        if candidate_iou is not None:
            fields["ious"] = candidate_iou
        split = {name: value[keep].split(counts) for name, value in fields.items()}
        return [{name: split[name][i] for name in split} for i in range(len(image_sizes))]
