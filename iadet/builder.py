"""The one place where a :class:`~iadet.config.Config` becomes objects.

Nothing else reads the configuration: every part takes plain arguments, so a researcher
can build any part by hand, and this module shows which key feeds which argument.
"""
from typing import Optional, Sequence

from iadet.models.anchors import AnchorGenerator
from iadet.models.backbone import build_resnet
from iadet.models.box_coder import DeltaBoxCoder
from iadet.models.detector import IoUAwareRetinaNet
from iadet.models.fpn import FPN
from iadet.models.head import IoUAwareRetinaHead
from iadet.models.postprocess import PostProcessor
from iadet.models.preprocess import ImagePreprocessor


def build_backbone(cfg):
    """``cfg.model.backbone`` -> ResNet / ResNeXt (ImageNet weights from ``init`` if set)."""
    b = cfg.model.backbone
    backbone = build_resnet(b.name, norm=b.norm, gn_groups=b.gn_groups, frozen_stages=b.frozen_stages)
    if b.init:
        backbone.load_torchvision_weights(b.init)
    return backbone


def build_anchor_generator(cfg) -> AnchorGenerator:
    a = cfg.model.anchors
    return AnchorGenerator(strides=a.strides, octave_base_scale=a.octave_base_scale,
                           scales_per_octave=a.scales_per_octave, ratios=a.ratios, style=a.style)


def build_box_coder(cfg) -> DeltaBoxCoder:
    return DeltaBoxCoder(weights=cfg.model.box_coder.weights, clamp=cfg.model.box_coder.clamp)


def build_postprocessor(cfg, box_coder: DeltaBoxCoder) -> PostProcessor:
    t = cfg.model.test
    return PostProcessor(box_coder, alpha=t.alpha, score_thr=t.score_thr, topk_per_level=t.topk_per_level,
                         nms_iou=t.nms_iou, max_det=t.max_det, order=t.order)


def build_preprocessor(cfg) -> ImagePreprocessor:
    i = cfg.input
    return ImagePreprocessor(min_size=i.min_size, max_size=i.max_size, mean=i.mean, std=i.std,
                             size_divisor=i.size_divisor)


def build_detector(cfg, class_names: Optional[Sequence[str]] = None) -> IoUAwareRetinaNet:
    """Build the IoU-aware RetinaNet (or plain RetinaNet with ``model.head.iou_branch: false``)."""
    m = cfg.model
    backbone = build_backbone(cfg)
    neck = FPN(backbone.out_channels, out_channels=m.neck.out_channels, p6_input=m.neck.p6_input,
               relu_before_p7=m.neck.relu_before_p7)
    anchor_generator = build_anchor_generator(cfg)
    head = IoUAwareRetinaHead(
        num_classes=m.num_classes, in_channels=m.neck.out_channels,
        num_anchors=anchor_generator.num_anchors_per_location, feat_channels=m.head.feat_channels,
        stacked_convs=m.head.stacked_convs, norm=m.head.norm, gn_groups=m.head.gn_groups,
        iou_branch=m.head.iou_branch, prior_prob=m.head.prior_prob)
    box_coder = build_box_coder(cfg)
    return IoUAwareRetinaNet(backbone=backbone, neck=neck, head=head, anchor_generator=anchor_generator,
                             box_coder=box_coder, postprocessor=build_postprocessor(cfg, box_coder),
                             preprocessor=build_preprocessor(cfg), class_names=class_names)
