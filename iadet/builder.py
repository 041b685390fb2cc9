"""The one place where a :class:`~iadet.config.Config` becomes objects.

Nothing else reads the configuration: every part takes plain arguments, so a researcher
can build any part by hand, and this module shows which key feeds which argument.
"""
import warnings
from typing import Optional, Sequence

import torch

from iadet.models.anchors import AnchorGenerator
from iadet.models.backbone import build_resnet
from iadet.models.box_coder import DeltaBoxCoder
from iadet.models.detector import IoUAwareRetinaNet
from iadet.models.fpn import FPN
from iadet.models.fuse import fuse_frozen_batchnorm, to_channels_last
from iadet.models.head import IoUAwareRetinaHead
from iadet.models.postprocess import PostProcessor
from iadet.models.preprocess import ImagePreprocessor


def build_backbone(cfg):
    """``cfg.model.backbone`` -> ResNet / ResNeXt (ImageNet weights from ``init`` if set)."""
    b = cfg.model.backbone
    backbone = build_resnet(b.name, norm=b.norm, gn_groups=b.gn_groups, frozen_stages=b.frozen_stages)
    if b.init:
        from pathlib import Path

        from iadet.config import ConfigError
        if not Path(b.init).is_file():
            how = ("make it with `python -m iadet.tools.pretrain_shapes --out {path}` (the synthetic-shapes "
                   "pretraining of the small-scale study)" if "shapes" in Path(b.init).name else
                   "download torchvision's ImageNet checkpoint (https://download.pytorch.org/models/<file name>)")
            raise ConfigError(f"{b.init!r} does not exist: {how.format(path=b.init)}, or set it null to start "
                              "from random weights", key="model.backbone.init")
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
                         nms_iou=t.nms_iou, max_det=t.max_det, order=t.order, candidates=t.candidates,
                         nms=t.nms, soft_nms_sigma=t.soft_nms_sigma, soft_nms_min_score=t.soft_nms_min_score)


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
        iou_branch=m.head.iou_branch, prior_prob=m.head.prior_prob,
        iou_detach_feature=m.head.iou_detach_feature, iou_shared_convs=m.head.iou_shared_convs,
        iou_align=m.head.iou_align, iou_align_groups=m.head.iou_align_groups)
    box_coder = build_box_coder(cfg)
    return IoUAwareRetinaNet(backbone=backbone, neck=neck, head=head, anchor_generator=anchor_generator,
                             box_coder=box_coder, postprocessor=build_postprocessor(cfg, box_coder),
                             preprocessor=build_preprocessor(cfg), class_names=class_names)


AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def prepare_for_inference(model: IoUAwareRetinaNet, cfg) -> IoUAwareRetinaNet:
    """``cfg.model.test.fuse_bn`` / ``channels_last`` -> an eval-mode model with BatchNorm
    folded and / or NHWC weights (in place; call after loading the weights). Trainable
    BatchNorm is folded with its running statistics: the model is for inference only."""
    t = cfg.model.test
    model.eval()
    if t.fuse_bn:
        fuse_frozen_batchnorm(model, include_trainable_bn=True)
    if t.channels_last:
        to_channels_last(model)
    return model


def inference_amp_dtype(cfg, override: Optional[str] = None) -> Optional[torch.dtype]:
    """The autocast dtype for inference: ``override`` (a CLI flag) or ``cfg.model.test.amp``."""
    return AMP_DTYPES[override or cfg.model.test.amp]


def build_transforms(cfg, train: bool, seed: Optional[int] = None):
    """``cfg.input`` (+ ``cfg.data.flip_prob`` for training) -> a transform pipeline."""
    from iadet.data.transforms import build_test_transforms, build_train_transforms

    i = cfg.input
    if train:
        return build_train_transforms(min_size=i.min_size, max_size=i.max_size, flip_prob=cfg.data.flip_prob,
                                      mean=i.mean, std=i.std, seed=seed)
    return build_test_transforms(min_size=i.min_size, max_size=i.max_size, mean=i.mean, std=i.std)


def synthetic_dataset_root(cfg):
    """Generate the synthetic dataset of ``cfg.data.synthetic`` on first use; its root folder."""
    from iadet.data.synthetic import ensure_synthetic_coco

    s = cfg.data.synthetic
    return ensure_synthetic_coco(s.cache_dir, num_train=s.num_train, num_val=s.num_val,
                                 image_size=(s.height, s.width), seed=s.seed, num_classes=s.num_classes,
                                 max_objects=s.max_objects, min_object_size=s.min_object_size,
                                 empty_fraction=s.empty_fraction, difficulty=s.difficulty)


def build_dataset(cfg, split: str = "train", train_transforms: Optional[bool] = None, seed: Optional[int] = None):
    """``cfg.data.<split>`` -> a dataset of (image, target) pairs.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (``data.test``, e.g. COCO test-dev, whose
            annotation file may hold images only).
        train_transforms: random flip etc. (default: True for ``"train"``).
    Raises:
        ConfigError naming ``model.num_classes`` when it disagrees with the dataset, and naming
        the key of the annotations (``data.<split>.ann_file``, ...) when the dataset has no image.
    Warns:
        UserWarning naming the annotations when no training image has a box (all negatives:
        the model would learn to detect nothing).
    """
    from iadet.config import ConfigError
    from iadet.data.coco import CocoDetection
    from iadet.data.voc import VOCDetection

    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    d = cfg.data
    section = getattr(d, split)
    train = split == "train" if train_transforms is None else train_transforms
    transforms = build_transforms(cfg, train, seed=seed)
    if section.type == "voc":
        if not section.voc_root:
            raise ConfigError("is not set: give the VOCdevkit folder", key=f"data.{split}.voc_root")
        sources = [tuple(s.split("/")) for s in section.voc_sources]
        # data.voc_difficult: difficult objects as ignore regions, or left out (negatives; authors)
        dataset = VOCDetection(section.voc_root, sources=sources, transforms=transforms,
                               keep_difficult=not train, skip_bad_images=d.skip_bad_images,
                               train_difficult=d.voc_difficult, filter_empty=d.filter_empty and train)
        source, key = f"{section.voc_root} ({', '.join(section.voc_sources)})", f"data.{split}.voc_sources"
    else:
        if section.type == "synthetic":
            if split == "test":
                raise ConfigError("the synthetic dataset has train and val splits only; evaluate --split val",
                                  key="data.test.type")
            root = synthetic_dataset_root(cfg)
            ann_file, image_dir = root / "annotations" / f"instances_{split}.json", root / split
        else:
            for key in ("ann_file", "image_dir"):
                if not getattr(section, key):
                    raise ConfigError("is not set", key=f"data.{split}.{key}")
            ann_file, image_dir = section.ann_file, section.image_dir
        dataset = CocoDetection(ann_file, image_dir, transforms=transforms, crowd=d.crowd,
                                filter_empty=d.filter_empty and train, skip_bad_images=d.skip_bad_images)
        source = str(ann_file)
        key = f"data.synthetic.num_{split}" if section.type == "synthetic" else f"data.{split}.ann_file"
    if len(dataset) == 0:
        left_out = []
        if dataset.num_skipped:
            left_out.append(f"{dataset.num_skipped} bad image(s) are skipped (data.skip_bad_images: true)")
        # images listed in the annotations: COCO's index, or VOC's kept + left out as empty + skipped
        listed = (len(dataset.coco.imgs) if hasattr(dataset, "coco")
                  else getattr(dataset, "num_empty_left_out", 0) + dataset.num_skipped)
        if getattr(dataset, "filter_empty", False) and listed > dataset.num_skipped:
            left_out.append("the images without a box are left out (data.filter_empty: true)")
        detail = f"leaves no image: {' and '.join(left_out)}" if left_out else "lists no images"
        raise ConfigError(f"{source} {detail}; the {split} set needs at least one image", key=key)
    if split == "train" and not any(len(r.boxes) for r in dataset.records):
        warnings.warn(f"{source}: none of the {len(dataset)} training images has a box, so every anchor is a "
                      "negative and the model learns to detect nothing; check the annotations", stacklevel=2)
    if dataset.num_classes != cfg.model.num_classes:
        raise ConfigError(f"is {cfg.model.num_classes} but the {split} dataset has {dataset.num_classes} "
                          f"classes; set model.num_classes={dataset.num_classes}", key="model.num_classes")
    return dataset


def build_criterion(cfg):
    """``cfg.model.assigner`` and ``cfg.model.loss`` -> the training losses (Eq. 1-6)."""
    from iadet.models.assigner import MaxIoUAssigner
    from iadet.models.atss_assigner import ATSSAssigner
    from iadet.models.criterion import RetinaNetCriterion

    a, l = cfg.model.assigner, cfg.model.loss
    if a.type == "atss":
        anchors_per_location = build_anchor_generator(cfg).num_anchors_per_location
        if a.atss_topk_unit == "anchor" and anchors_per_location > 1:
            warnings.warn(f"model.assigner: ATSS counts atss_topk={a.atss_topk} in anchors (mmdetection's count): on "
                          f"{anchors_per_location} anchors per location that is {a.atss_topk / anchors_per_location:g} "
                          "location(s) per level, and neighbouring anchors of high IoU become background; "
                          "model.assigner.atss_topk_unit: location counts locations, as the ATSS authors do")
        per_location = anchors_per_location if a.atss_topk_unit == "location" else 1
        assigner = ATSSAssigner(topk=a.atss_topk, ignore_iof_thr=a.ignore_iof_thr, anchors_per_location=per_location)
    else:
        assigner = MaxIoUAssigner(pos_iou_thr=a.pos_iou_thr, neg_iou_thr=a.neg_iou_thr, min_pos_iou=a.min_pos_iou,
                                  low_quality=a.low_quality, ignore_iof_thr=a.ignore_iof_thr)
    return RetinaNetCriterion(assigner, build_box_coder(cfg), num_classes=cfg.model.num_classes,
                              focal_alpha=l.focal_alpha, focal_gamma=l.focal_gamma, reg_loss=l.reg_loss,
                              smooth_l1_beta=l.smooth_l1_beta, iou_loss=l.iou_loss,
                              iou_loss_weight=l.iou_loss_weight, iou_target_grad=l.iou_target_grad,
                              normalize=l.normalize, cls_loss=l.cls_loss, qfl_beta=l.qfl_beta,
                              vfl_alpha=l.vfl_alpha, vfl_gamma=l.vfl_gamma, quality_target=l.quality_target)


def scaled_lr(cfg, total_batch_size: int) -> float:
    """The linear scaling rule: lr * total batch / base batch (when ``train.scale_lr``)."""
    t = cfg.train
    return t.lr * total_batch_size / t.base_batch_size if t.scale_lr else t.lr


def build_optimizer(cfg, model, total_batch_size: int):
    """SGD (paper) or AdamW over the trainable parameters, at the scaled lr."""
    import torch

    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    lr = scaled_lr(cfg, total_batch_size)
    if t.optimizer == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=t.weight_decay)


def build_schedule(cfg, total_batch_size: int, step_iterations):
    """Warm-up + step decay at ``step_iterations`` (already converted from epochs)."""
    from iadet.lr_schedule import WarmupStepSchedule

    t = cfg.train
    return WarmupStepSchedule(scaled_lr(cfg, total_batch_size), steps=step_iterations, gamma=t.lr_gamma,
                              warmup_iters=t.warmup_iters, warmup_ratio=t.warmup_ratio)
