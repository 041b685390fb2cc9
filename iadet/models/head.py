"""RetinaNet head with the IoU prediction branch (paper §3.1, Fig. 2; SPEC §1).

Two towers of ``stacked_convs`` x (3x3 conv + [GroupNorm] + ReLU), shared over P3-P7.
Classification: 3x3 conv -> A*C logits. Regression: 3x3 conv -> A*4 deltas.
IoU branch: ONE 3x3 conv -> A logits on the last regression-tower feature, parallel to the
regression conv; one IoU per anchor shared by all classes (sigmoid at inference).
The IoU conv is built and initialised on its own random stream
(:func:`~iadet.models.random_streams.own_random_stream`), so the shared parts start equal with
or without it for one seed (paired experiments).

Options of the quality family (issue 15; defaults = the paper): ``iou_shared_convs`` (the
authors' ``shared_conv``: how many regression-tower convs the IoU branch shares; the rest are
its own), ``iou_align`` (the aligned IoU branch of :mod:`iadet.models.feature_alignment`).
The branch is the same when it predicts FCOS centerness instead of the IoU (the target is the
criterion's choice, ``model.loss.quality_target``).
"""
import math
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from iadet.models.feature_alignment import AlignedIoUPredictor
from iadet.models.random_streams import own_random_stream


def _flatten_level(x: Tensor, k: int) -> Tensor:
    """(N, A*K, H, W) -> (N, H*W*A, K), layout (y, x, a), channel index a*K + k."""
    n, _, h, w = x.shape
    return x.view(n, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, k)


class IoUAwareRetinaHead(nn.Module):
    """Args:
        num_classes: foreground classes C (sigmoid, no background slot).
        in_channels: channels of the pyramid levels.
        num_anchors: anchors per location A (9).
        feat_channels: tower width (256).
        stacked_convs: convs per tower (4).
        norm: ``None`` or ``"gn"`` (GroupNorm in the towers, for training from scratch).
        iou_branch: build the IoU prediction conv.
        prior_prob: initial foreground probability of the classification bias.
        iou_detach_feature: feed the IoU conv a detached regression-tower feature, so that
            the IoU loss trains only the IoU conv and reaches no shared layer (a control of
            issue 13's study; the paper: False).
        iou_shared_convs: regression-tower convs shared by the IoU branch (None: all, the
            paper); with k < stacked_convs the branch takes the feature after k of them (the
            pyramid feature for 0) through ``stacked_convs - k`` convs of its own (authors'
            ``shared_conv``).
        iou_align: predict each anchor's IoU from a deformable conv whose offsets come from
            its detached box deltas (:class:`AlignedIoUPredictor`; authors' dormant
            ``use_feature_alignment``).
        iou_align_groups: its offset groups (4).
    """

    def __init__(self, num_classes: int, in_channels: int = 256, num_anchors: int = 9,
                 feat_channels: int = 256, stacked_convs: int = 4, norm: Optional[str] = None,
                 gn_groups: int = 32, iou_branch: bool = True, prior_prob: float = 0.01,
                 iou_detach_feature: bool = False, iou_shared_convs: Optional[int] = None,
                 iou_align: bool = False, iou_align_groups: int = 4):
        super().__init__()
        if norm not in (None, "gn"):
            raise ValueError(f"head norm must be None or 'gn', got {norm!r}")
        shared = stacked_convs if iou_shared_convs is None else iou_shared_convs
        if not 0 <= shared <= stacked_convs:
            raise ValueError(f"iou_shared_convs must be in [0, stacked_convs={stacked_convs}], got {iou_shared_convs}")
        if (iou_align or shared < stacked_convs) and not iou_branch:
            raise ValueError("iou_align and iou_shared_convs need the IoU branch (iou_branch=True)")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        chans = [in_channels] + [feat_channels] * stacked_convs
        self.cls_convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1)
                                       for i in range(stacked_convs))
        self.reg_convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1)
                                       for i in range(stacked_convs))
        if norm == "gn":
            self.cls_norms = nn.ModuleList(nn.GroupNorm(gn_groups, feat_channels) for _ in range(stacked_convs))
            self.reg_norms = nn.ModuleList(nn.GroupNorm(gn_groups, feat_channels) for _ in range(stacked_convs))
        else:
            self.cls_norms = self.reg_norms = None
        self.cls_logits = nn.Conv2d(chans[-1], num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(chans[-1], num_anchors * 4, 3, padding=1)
        # The IoU branch: one 3x3 conv on the last regression-tower feature (paper §3.1).
        self.iou_pred = None
        if iou_branch and not iou_align:
            with own_random_stream("head.iou_pred"):
                self.iou_pred = nn.Conv2d(chans[-1], num_anchors, 3, padding=1)
        self.iou_detach_feature = iou_detach_feature
        self.iou_shared_convs = shared
        # The options' layers, each on its own stream: the default parts start equal without them.
        self.iou_convs = self.iou_norms = self.iou_aligned = None
        if shared < stacked_convs:
            with own_random_stream("head.iou_convs"):
                self.iou_convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1)
                                               for i in range(shared, stacked_convs))
                if norm == "gn":
                    self.iou_norms = nn.ModuleList(nn.GroupNorm(gn_groups, feat_channels)
                                                   for _ in range(shared, stacked_convs))
        if iou_align:
            with own_random_stream("head.iou_aligned"):
                self.iou_aligned = AlignedIoUPredictor(chans[-1], num_anchors, offset_groups=iou_align_groups)
        self.reset_parameters(prior_prob)

    @property
    def has_iou_branch(self) -> bool:
        return self.iou_pred is not None or self.iou_aligned is not None

    def reset_parameters(self, prior_prob: float = 0.01) -> None:
        for conv in [*self.cls_convs, *self.reg_convs, self.cls_logits, self.bbox_pred]:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        if self.iou_pred is not None:
            with own_random_stream("head.iou_pred"):
                nn.init.normal_(self.iou_pred.weight, std=0.01)
                nn.init.zeros_(self.iou_pred.bias)
        if self.iou_convs is not None:
            with own_random_stream("head.iou_convs"):
                for conv in self.iou_convs:
                    nn.init.normal_(conv.weight, std=0.01)
                    nn.init.zeros_(conv.bias)
        if self.iou_aligned is not None:
            with own_random_stream("head.iou_aligned"):
                self.iou_aligned.reset_parameters()

    def _tower(self, x: Tensor, convs, norms, keep_after: Optional[int] = None):
        """The tower's output; with ``keep_after=k`` also its input after k convs."""
        kept = x
        for i, conv in enumerate(convs):
            x = conv(x)
            if norms is not None:
                x = norms[i](x)
            x = torch.relu(x)
            if i + 1 == keep_after:
                kept = x
        return x if keep_after is None else (x, kept)

    def _iou_logits(self, feat: Tensor, reg_feat: Tensor, shared_feat: Optional[Tensor], deltas: Tensor) -> Tensor:
        """(N, A, H, W) logits of the IoU branch on one level."""
        iou_feat = reg_feat  # the paper: the last regression-tower feature
        if self.iou_convs is not None:
            iou_feat = self._tower(shared_feat, self.iou_convs, self.iou_norms)
        if self.iou_detach_feature:
            iou_feat = iou_feat.detach()
        if self.iou_aligned is not None:
            return self.iou_aligned(iou_feat, deltas)
        return self.iou_pred(iou_feat)

    def forward(self, features: List[Tensor]) -> Dict[str, Tensor]:
        """Run the head on [P3..P7] (N, C_in, H_l, W_l).

        Returns a dict of level-concatenated outputs (P3 first), rows in (level, y, x, a) order:
            ``cls_logits`` (N, M, C), ``bbox_deltas`` (N, M, 4), ``iou_logits`` (N, M) or
            absent without the IoU branch, and ``num_anchors_per_level`` (list of M_l).
        """
        cls_out, reg_out, iou_out, counts = [], [], [], []
        for feat in features:
            cls_feat = self._tower(feat, self.cls_convs, self.cls_norms)
            shared_feat = None
            if self.iou_convs is not None:
                reg_feat, shared_feat = self._tower(feat, self.reg_convs, self.reg_norms, self.iou_shared_convs)
            else:
                reg_feat = self._tower(feat, self.reg_convs, self.reg_norms)
            deltas = self.bbox_pred(reg_feat)
            cls_out.append(_flatten_level(self.cls_logits(cls_feat), self.num_classes))
            reg_out.append(_flatten_level(deltas, 4))
            if self.has_iou_branch:
                iou_out.append(_flatten_level(self._iou_logits(feat, reg_feat, shared_feat, deltas), 1))
            counts.append(cls_out[-1].shape[1])
        out = {"cls_logits": torch.cat(cls_out, 1), "bbox_deltas": torch.cat(reg_out, 1),
               "num_anchors_per_level": counts}
        if iou_out:
            out["iou_logits"] = torch.cat(iou_out, 1).squeeze(-1)
        return out
