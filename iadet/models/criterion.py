"""Training losses of the IoU-aware RetinaNet (paper §3.2, Eq. 1-6; SPEC §2).

Options of the quality family (issue 15; defaults = the paper): the classification loss
(``cls_loss``: focal, or Quality Focal Loss / Varifocal Loss trained towards the detached IoU
of each positive's decoded box at its ground-truth class, :mod:`iadet.models.quality_losses`),
what the quality branch predicts (``quality_target``: the IoU, or FCOS centerness of the
anchor centre in its ground truth), and the assigner (max-IoU or ATSS, injected).

L_total = L_cls + L_loc + L_IoU (Eq. 6), each a sum divided by N, the number of positive
anchors: by default N = positives of the whole batch, averaged over DDP ranks and clamped to
>= 1 (iadet; the authors normalised per GPU); ``normalize="image"`` divides each image's sum
by max(1, its positives) and averages over images (torchvision's RetinaNet; no cross-rank
averaging, each rank's images are normalised alone and DDP averages the gradients).
"""
from typing import Dict, List

import torch
import torch.distributed as dist
from torch import Tensor

from iadet.models.assigner import IGNORED, MaxIoUAssigner, pad_boxes
from iadet.models.box_coder import DeltaBoxCoder
from iadet.models.losses import (flush_subnormal_grad, giou_loss, iou_prediction_loss, one_hot_focal_loss_per_anchor,
                                 smooth_l1_loss)
from iadet.models.quality_losses import centerness_target, quality_focal_loss_per_anchor, varifocal_loss_per_anchor
from iadet.ops.boxes import aligned_box_iou


def _mean_over_ranks(value: Tensor) -> Tensor:
    """Average a detached scalar over DDP ranks (identity without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value


class RetinaNetCriterion:
    """Assign anchors, then compute the classification, regression and IoU losses.

    Args:
        assigner: anchors -> positives / negatives / ignored (:class:`MaxIoUAssigner`).
        box_coder: the delta coder of the head's regression outputs.
        num_classes: foreground classes C (sigmoid, no background slot).
        focal_alpha, focal_gamma: focal loss parameters (0.25, 2).
        reg_loss: ``"smooth_l1"`` (paper Eq. 2), ``"l1"`` (smooth L1 with beta 0) or
            ``"giou"`` (1 - GIoU of the decoded box and its ground truth).
        smooth_l1_beta: beta of the smooth L1 loss (0.11).
        iou_loss: ``"bce"`` (Eq. 3) or ``"l2"`` (Table 2).
        iou_loss_weight: multiplier of the IoU loss (1).
        iou_target_grad: False detaches the target IoU (paper's plain rows); True lets the IoU
            loss's gradient reach the regression branch through it (the "†" rows, Eq. 5).
        normalize: ``"batch"`` (N = positives in the batch, averaged over ranks) or
            ``"image"`` (per-image positives, then the mean over images: torchvision).
        cls_loss: ``"focal"`` (Eq. 1), ``"qfl"`` (GFL's Quality Focal Loss, ``qfl_beta``) or
            ``"vfl"`` (VarifocalNet's loss, ``vfl_alpha``, ``vfl_gamma``, IoU-weighted
            positives), both towards IoU(decoded box, its ground truth), detached, at the
            ground-truth class of each positive and 0 elsewhere.
        quality_target: what the quality branch (``iou_logits``) learns: ``"iou"`` (Eq. 4) or
            ``"centerness"`` (FCOS: sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of the
            anchor centre in its ground truth; no gradient path, so not with iou_target_grad).
    """

    def __init__(self, assigner: MaxIoUAssigner, box_coder: DeltaBoxCoder, num_classes: int,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, reg_loss: str = "smooth_l1",
                 smooth_l1_beta: float = 0.11, iou_loss: str = "bce", iou_loss_weight: float = 1.0,
                 iou_target_grad: bool = False, normalize: str = "batch", cls_loss: str = "focal",
                 qfl_beta: float = 2.0, vfl_alpha: float = 0.75, vfl_gamma: float = 2.0,
                 quality_target: str = "iou"):
        if reg_loss not in ("smooth_l1", "l1", "giou"):
            raise ValueError(f"reg_loss must be 'smooth_l1', 'l1' or 'giou', got {reg_loss!r}")
        if iou_loss not in ("bce", "l2"):
            raise ValueError(f"iou_loss must be 'bce' or 'l2', got {iou_loss!r}")
        if normalize not in ("batch", "image"):
            raise ValueError(f"normalize must be 'batch' or 'image', got {normalize!r}")
        if cls_loss not in ("focal", "qfl", "vfl"):
            raise ValueError(f"cls_loss must be 'focal', 'qfl' or 'vfl', got {cls_loss!r}")
        if quality_target not in ("iou", "centerness"):
            raise ValueError(f"quality_target must be 'iou' or 'centerness', got {quality_target!r}")
        if quality_target == "centerness" and iou_target_grad:
            raise ValueError("iou_target_grad needs quality_target='iou': the centerness target has no gradient path")
        self.assigner = assigner
        self.box_coder = box_coder
        self.num_classes = num_classes
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.reg_loss = reg_loss
        self.smooth_l1_beta = smooth_l1_beta
        self.iou_loss = iou_loss
        self.iou_loss_weight = iou_loss_weight
        self.iou_target_grad = iou_target_grad
        self.normalize = normalize
        self.cls_loss = cls_loss
        self.qfl_beta = qfl_beta
        self.vfl_alpha = vfl_alpha
        self.vfl_gamma = vfl_gamma
        self.quality_target = quality_target

    def __call__(self, head_out: Dict[str, Tensor], anchors: Tensor,
                 targets: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """Compute the losses of a batch.

        Args:
            head_out: ``cls_logits`` (N, M, C), ``bbox_deltas`` (N, M, 4) and, with the IoU
                branch, ``iou_logits`` (N, M); any float dtype (computed in float32).
            anchors: (M, 4) xyxy pixels, shared by the images.
            targets: per image ``boxes`` (K, 4) xyxy pixels, ``labels`` (K,) int64 in [0, C)
                and optionally ``ignore_boxes`` (G, 4).
        Returns:
            ``loss_cls``, ``loss_reg``, ``loss_iou`` (with the IoU branch) scalar tensors and
            ``num_pos``: the positives of this batch on this rank (detached float, for logs).
        """
        cls_logits = head_out["cls_logits"].float()
        deltas = head_out["bbox_deltas"].float()
        iou_logits = head_out["iou_logits"].float() if "iou_logits" in head_out else None
        num_images, num_anchors, _ = cls_logits.shape
        anchors = anchors.float()

        ignore = None
        if any("ignore_boxes" in t for t in targets):
            ignore = [t.get("ignore_boxes", anchors.new_zeros((0, 4))) for t in targets]
        matched = self.assigner.assign(anchors, [t["boxes"] for t in targets], ignore,
                                       num_anchors_per_level=head_out.get("num_anchors_per_level")).matched_idx  # (N, M)
        pos = matched >= 0
        # Ground truth of every anchor (padding row 0 for images without objects; used on positives only).
        gt_boxes, _ = pad_boxes([t["boxes"].to(anchors) for t in targets], min_len=1)      # (N, K, 4)
        gt_labels, _ = pad_boxes([t["labels"].to(matched) for t in targets], min_len=1)    # (N, K)
        gt_index = matched.clamp(min=0)

        pos_image, pos_anchor = pos.nonzero(as_tuple=True)                                  # (P,) each
        pos_label = gt_labels[pos_image, gt_index[pos_image, pos_anchor]]                   # (P,)

        # Positives: (P,) rows, image of each in pos_image.
        # (the positives' gradients pass a subnormal flush: no subnormal float reaches the head's backward)
        pos_deltas = flush_subnormal_grad(deltas[pos])                                      # (P, 4)
        pos_anchors = anchors.expand(num_images, num_anchors, 4)[pos]                       # (P, 4)
        pos_gt = gt_boxes[pos_image, gt_index[pos]]                                         # (P, 4)
        pred_boxes = self.box_coder.decode(pos_deltas, pos_anchors)                         # (P, 4), no clipping

        # Classification over positives and negatives (ignored anchors excluded): Eq. 1's focal
        # loss with one-hot targets, or QFL / VFL towards the positives' detached IoU.
        if self.cls_loss == "focal":
            cls_per_anchor = one_hot_focal_loss_per_anchor(cls_logits, pos_image, pos_anchor, pos_label,
                                                           self.focal_alpha, self.focal_gamma)   # (N, M)
        else:
            quality = aligned_box_iou(pred_boxes.detach(), pos_gt)
            if self.cls_loss == "qfl":
                cls_per_anchor = quality_focal_loss_per_anchor(cls_logits, pos_image, pos_anchor, pos_label,
                                                               quality, beta=self.qfl_beta)
            else:
                cls_per_anchor = varifocal_loss_per_anchor(cls_logits, pos_image, pos_anchor, pos_label, quality,
                                                           alpha=self.vfl_alpha, gamma=self.vfl_gamma)
        cls_per_image = torch.where(matched != IGNORED, cls_per_anchor, 0.0).sum(dim=1)

        # Regression (Eq. 2).
        if self.reg_loss == "giou":
            reg_elem = giou_loss(pred_boxes, pos_gt, reduction="none")
        else:
            beta = 0.0 if self.reg_loss == "l1" else self.smooth_l1_beta
            reg_target = self.box_coder.encode(pos_gt, pos_anchors)
            reg_elem = smooth_l1_loss(pos_deltas, reg_target, beta, reduction="none").sum(dim=1)
        per_image = {"loss_cls": cls_per_image, "loss_reg": self._per_image(reg_elem, pos_image, num_images)}

        if iou_logits is not None:
            # Eq. 4: target IoU between the decoded predicted box and its assigned ground truth
            # (or FCOS centerness of the anchor centre, quality_target="centerness").
            if self.quality_target == "centerness":
                iou_target = centerness_target((pos_anchors[:, :2] + pos_anchors[:, 2:]) / 2, pos_gt)
            else:
                iou_target = aligned_box_iou(pred_boxes, pos_gt)
            if not self.iou_target_grad:
                # Paper's plain rows: detached target. The "†" rows (iou_target_grad=True) keep
                # it attached, so dL_IoU/dIoU_target = -logit (Eq. 5) reaches the regression branch.
                iou_target = iou_target.detach()
            pos_iou_logits = flush_subnormal_grad(iou_logits[pos])
            iou_elem = iou_prediction_loss(pos_iou_logits, iou_target, self.iou_loss, reduction="none")
            per_image["loss_iou"] = self.iou_loss_weight * self._per_image(iou_elem, pos_image, num_images)

        num_pos_per_image = pos.sum(dim=1).to(cls_logits)                                   # (N,)
        if self.normalize == "batch":
            normalizer = _mean_over_ranks(num_pos_per_image.sum()).clamp(min=1.0)
            losses = {k: v.sum() / normalizer for k, v in per_image.items()}
        else:
            per_image_normalizer = num_pos_per_image.clamp(min=1.0)
            losses = {k: (v / per_image_normalizer).sum() / num_images for k, v in per_image.items()}
        losses["num_pos"] = num_pos_per_image.sum().detach()
        return losses

    @staticmethod
    def _per_image(values: Tensor, image_index: Tensor, num_images: int) -> Tensor:
        """Sum (P,) per-positive losses into (N,) per-image sums (zeros, still in the graph, if P = 0)."""
        return values.new_zeros(num_images).index_add(0, image_index, values)
