"""The aligned IoU branch: the paper's future work, the authors' dormant switch (issue 15).

The paper ends on "feature alignment and attention mechanism may be important for the
accurate IoU prediction". Its authors' head (``iou_aware_retina_head.py``,
``use_feature_alignment = False``) holds the design, a DCNv1 feature adaption: for each of
the A anchors of a location,

    offsets_a  = Conv1x1(detach(deltas_a))                 4 -> 2 * G * 3 * 3 channels, no bias
    feature_a  = ReLU(DeformConv3x3(iou_feature, offsets_a))   G offset groups (4)
    iou_logit_a = Conv3x3(feature_a)                       -> 1 channel, shared by the anchors

so the 3x3 kernel that predicts an anchor's IoU samples the regression feature where that
anchor's *predicted* box lies (the offsets are learned from the box deltas, which are
detached: the IoU loss does not move the boxes through the offsets). Initialisation as the
authors': offset conv N(0, 0.1), deformable conv N(0, 0.01) with zero bias.

Offsets follow ``torchvision.ops.deform_conv2d`` (as mmcv's DCNv1): channel
``2 * (g * 9 + k)`` is the y offset and ``2 * (g * 9 + k) + 1`` the x offset, in feature
pixels, of kernel tap ``k = 3 * i + j`` (row i, column j) of offset group g; input channels
are split into G consecutive groups. ``tests/models/test_feature_alignment.py`` checks the
sampled positions by hand. On CPU the conv runs as
:func:`iadet.models.deform_sampling.deform_conv2d_gather` (equal to torchvision's kernel,
``tests/models/test_deform_sampling.py``, and several times faster here: it samples the
shared feature for the A anchors without repeating it); elsewhere as torchvision's kernel.
"""
import torch
from torch import Tensor, nn

from iadet.models.deform_sampling import deform_conv2d_gather, deform_conv2d_repeated


class AlignedIoUPredictor(nn.Module):
    """Per-anchor IoU logits from a deformable conv steered by the detached box deltas.

    Args:
        channels: width of the regression-tower feature.
        num_anchors: anchors per location A.
        offset_groups: deformable offset groups G (authors: 4); must divide ``channels``.
        kernel_size: the deformable kernel (3).
    """

    def __init__(self, channels: int, num_anchors: int, offset_groups: int = 4, kernel_size: int = 3):
        super().__init__()
        if channels % offset_groups:
            raise ValueError(f"offset_groups={offset_groups} must divide the feature channels {channels}")
        self.num_anchors = num_anchors
        self.kernel_size = kernel_size
        self.conv_offset = nn.Conv2d(4, offset_groups * 2 * kernel_size * kernel_size, 1, bias=False)
        self.deform_weight = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        self.deform_bias = nn.Parameter(torch.empty(channels))
        self.iou_pred = nn.Conv2d(channels, 1, 3, padding=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.conv_offset.weight, std=0.1)
        nn.init.normal_(self.deform_weight, std=0.01)
        nn.init.zeros_(self.deform_bias)
        nn.init.normal_(self.iou_pred.weight, std=0.01)
        nn.init.zeros_(self.iou_pred.bias)

    def offsets(self, deltas: Tensor) -> Tensor:
        """(N, A*4, H, W) deltas -> (N*A, 2*G*k*k, H, W) offsets, anchor-major within an image."""
        n, _, h, w = deltas.shape
        per_anchor = deltas.detach().reshape(n * self.num_anchors, 4, h, w)
        return self.conv_offset(per_anchor)

    def aligned_features(self, feature: Tensor, deltas: Tensor) -> Tensor:
        """ReLU(DeformConv(feature, offsets of each anchor)): (N*A, C, H, W)."""
        conv = deform_conv2d_gather if feature.device.type == "cpu" else deform_conv2d_repeated
        return torch.relu(conv(feature, self.offsets(deltas), self.deform_weight, self.deform_bias))

    def forward(self, feature: Tensor, deltas: Tensor) -> Tensor:
        """(N, C, H, W) regression feature and (N, A*4, H, W) deltas -> (N, A, H, W) IoU logits,
        the layout of the plain IoU conv's output (channel a = anchor a)."""
        n, _, h, w = feature.shape
        logits = self.iou_pred(self.aligned_features(feature, deltas))  # (N*A, 1, H, W)
        return logits.reshape(n, self.num_anchors, h, w)
