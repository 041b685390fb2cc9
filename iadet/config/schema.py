"""The settings of an iadet run: nested dataclasses whose defaults are the paper's.

``Config`` is the root. Every field is typed (int, float, bool, str, ``Optional``,
``list[...]``, ``Literal[...]``); the loader (``iadet.config.loader``) checks YAML values
against these annotations and refuses unknown keys, so the classes below are the whole
list of valid keys. Adding a section is one dataclass plus one field on its parent.

Value checks that are cheap and obviously right live in ``__post_init__``; they raise
``ConfigError`` naming the field relative to its section (``alpha``), and the loader
reports it with the full dotted key (``model.test.alpha``).

Defaults follow the paper and its RetinaNet baseline (see SPEC.md section 1 and 3);
``configs/compat/torchvision_retinanet_r50_fpn.yaml`` lists the torchvision deviations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

BackboneName = Literal[
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x4d", "resnext101_32x8d", "resnext101_64x4d",
]


class ConfigError(ValueError):
    """A configuration the user must fix: bad key, bad type, bad value or bad file.

    ``key`` is the dotted key at fault (or None when the whole file is at fault) and
    ``reason`` the explanation; ``str(error)`` joins them into one actionable message.
    """

    def __init__(self, reason: str, key: Optional[str] = None):
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}" if key else reason)


def _check(ok: bool, key: str, reason: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{reason}, got {value!r}", key=key)


def _check_positive(section: Any, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        _check(value > 0, name, "must be positive", value)


@dataclass
class BackboneConfig:
    """ResNet / ResNeXt, "pytorch" style (stride on the 3x3 conv), returning C3-C5."""

    name: BackboneName = "resnet50"
    # frozen_stats: BN running statistics frozen, scale and shift trained (authors);
    # frozen: torchvision's FrozenBatchNorm2d; bn / gn: trainable, for training from scratch.
    norm: Literal["frozen_stats", "frozen", "bn", "gn"] = "frozen_stats"
    gn_groups: int = 32
    frozen_stages: int = 1  # -1: nothing frozen; 0: stem; k: stem and stages 1..k
    init: Optional[str] = None  # path to a torchvision ImageNet checkpoint; None = random

    def __post_init__(self) -> None:
        _check_positive(self, "gn_groups")
        _check(-1 <= self.frozen_stages <= 4, "frozen_stages", "must be in [-1, 4]",
               self.frozen_stages)
        _check(self.init is None or self.init != "", "init",
               "must be a checkpoint path or null", self.init)


@dataclass
class NeckConfig:
    """FPN over C3-C5 plus P6, P7 (P3-P7 out)."""

    out_channels: int = 256
    p6_input: Literal["c5", "p5"] = "c5"  # torchvision v1: p5
    relu_before_p7: bool = False  # torchvision v1: true

    def __post_init__(self) -> None:
        _check_positive(self, "out_channels")


@dataclass
class AnchorConfig:
    """Anchors per level: sizes stride * octave_base_scale * 2**(k / scales_per_octave)."""

    strides: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    octave_base_scale: float = 4.0
    scales_per_octave: int = 3
    ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # h / w
    # torchvision: int sizes, rounded half-sizes, stride = padded image size // feature size
    style: Literal["float", "torchvision"] = "float"

    def __post_init__(self) -> None:
        _check_positive(self, "octave_base_scale", "scales_per_octave")
        for name in ("strides", "ratios"):
            values = getattr(self, name)
            _check(len(values) > 0 and all(v > 0 for v in values), name,
                   "must be a non-empty list of positive numbers", values)


@dataclass
class HeadConfig:
    """Shared head: classification and regression towers, plus the IoU branch."""

    feat_channels: int = 256
    stacked_convs: int = 4
    norm: Optional[Literal["gn"]] = None
    gn_groups: int = 32
    iou_branch: bool = True  # false = plain RetinaNet
    prior_prob: float = 0.01  # classification bias = -log((1 - p) / p)
    # true: the IoU conv sees a detached regression-tower feature, so the IoU loss reaches no
    # shared layer (a control of the small-scale study, docs/results_mini.md; paper: false)
    iou_detach_feature: bool = False
    # Regression-tower convs the IoU branch shares (the authors' shared_conv); null: all (the
    # paper); k < stacked_convs: the branch has stacked_convs - k convs of its own.
    iou_shared_convs: Optional[int] = None
    # The aligned IoU branch (the paper's future work, the authors' dormant switch): a
    # deformable 3x3 conv whose offsets come from the detached box deltas of each anchor.
    iou_align: bool = False
    iou_align_groups: int = 4  # its deformable offset groups (authors: 4)

    def __post_init__(self) -> None:
        _check_positive(self, "feat_channels", "gn_groups", "iou_align_groups")
        _check(self.stacked_convs >= 0, "stacked_convs", "must be >= 0", self.stacked_convs)
        if self.iou_shared_convs is not None:
            _check(0 <= self.iou_shared_convs <= self.stacked_convs, "iou_shared_convs",
                   f"must be null or in [0, stacked_convs={self.stacked_convs}]", self.iou_shared_convs)
        _check(self.iou_branch or not (self.iou_align or self.iou_shared_convs is not None), "iou_branch",
               "must be true with iou_align or iou_shared_convs (they shape the IoU branch)", self.iou_branch)
        if self.iou_align:
            _check(self.feat_channels % self.iou_align_groups == 0, "iou_align_groups",
                   f"must divide feat_channels={self.feat_channels}", self.iou_align_groups)
        _check(0.0 < self.prior_prob < 1.0, "prior_prob", "must be in (0, 1)", self.prior_prob)
        if self.norm == "gn":
            _check(self.feat_channels % self.gn_groups == 0, "gn_groups",
                   f"must divide feat_channels={self.feat_channels}", self.gn_groups)


@dataclass
class BoxCoderConfig:
    """(dx, dy, dw, dh) deltas of boxes against anchors, divided by ``weights``."""

    weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    clamp: Literal["both", "upper"] = "both"  # torchvision clamps dw/dh only from above

    def __post_init__(self) -> None:
        _check(len(self.weights) == 4 and all(w > 0 for w in self.weights), "weights",
               "must be 4 positive numbers (dx, dy, dw, dh)", self.weights)


@dataclass
class TestConfig:
    """Inference: confidence, candidate selection and NMS (SPEC section 3)."""

    __test__ = False  # not a pytest test class despite its name

    alpha: Optional[float] = 0.5  # Eq. 7: S = p**alpha * IoU**(1 - alpha); None: S = p * IoU
    score_thr: float = 0.05
    topk_per_level: int = 1000
    nms_iou: float = 0.5
    max_det: int = 100
    order: Literal["topk_then_thr", "thr_then_topk"] = "topk_then_thr"
    # What topk_per_level counts. pairs: the (anchor, class) pairs with the highest S (iadet,
    # torchvision, MMDetection 3). anchors: the anchors with the highest S over their classes,
    # then every class of them is thresholded (the authors' `max_scores.topk(nms_pre)`; the
    # paper configs). Both orders select the same candidates in either mode.
    candidates: Literal["pairs", "anchors"] = "pairs"
    # Suppression: hard (class-wise NMS on S, the paper), soft_linear / soft_gaussian
    # (Soft-NMS, Bodla et al. 2017: S of later boxes decays by 1 - IoU where IoU >= nms_iou, or by
    # exp(-IoU^2 / soft_nms_sigma); below soft_nms_min_score a box is dropped), iou_guided
    # (IoU-Net: visit by predicted IoU, the kept box takes its cluster's highest S; needs the
    # IoU branch; with alpha 1, S = p as in IoU-Net).
    nms: Literal["hard", "soft_linear", "soft_gaussian", "iou_guided"] = "hard"
    soft_nms_sigma: float = 0.5
    soft_nms_min_score: float = 0.05  # MMDetection's Soft-NMS configs (mmcv's default: 0.001)
    # Inference speed-ups used by iadet.infer / iadet.eval (not by evaluation during training):
    fuse_bn: bool = False  # fold BatchNorm into the convs: same detections, ~10 % faster on CPU
    channels_last: bool = False  # NHWC weights: same detections, faster oneDNN/cuDNN convs
    amp: Literal["off", "bf16", "fp16"] = "off"  # autocast for the network; post-processing stays fp32

    def __post_init__(self) -> None:
        if isinstance(self.alpha, str) and self.alpha.lower() == "none":
            self.alpha = None
        if self.alpha is not None:
            _check(0.0 <= self.alpha <= 1.0, "alpha", "must be in [0, 1] or null/none",
                   self.alpha)
        _check(0.0 <= self.score_thr <= 1.0, "score_thr", "must be in [0, 1]", self.score_thr)
        _check(0.0 <= self.nms_iou <= 1.0, "nms_iou", "must be in [0, 1]", self.nms_iou)
        _check_positive(self, "topk_per_level", "max_det", "soft_nms_sigma")
        _check(0.0 <= self.soft_nms_min_score <= 1.0, "soft_nms_min_score", "must be in [0, 1]",
               self.soft_nms_min_score)
        _check(self.candidates in ("pairs", "anchors"), "candidates",
               "must be 'pairs' (top-k (anchor, class) pairs) or 'anchors' (top-k anchors, authors)",
               self.candidates)


@dataclass
class AssignerConfig:
    """Anchor assignment: max-IoU (SPEC section 2, the paper) or ATSS."""

    # max_iou: the thresholds below; atss (Zhang et al. 2020): per ground truth the atss_topk
    # locations of each level nearest its centre, positive at IoU >= their mean + std, centre inside.
    type: Literal["max_iou", "atss"] = "max_iou"
    atss_topk: int = 9
    # anchor: atss_topk counts anchors (mmdetection; on 9 anchors per location, k = 9 is one
    # location per level); location: it counts locations, all anchors of each (the ATSS authors'
    # code, the configs/family ATSS config). The default reproduces runs made before the choice.
    atss_topk_unit: Literal["anchor", "location"] = "anchor"
    pos_iou_thr: float = 0.5
    neg_iou_thr: float = 0.4
    min_pos_iou: float = 0.0
    # gt: each ground truth claims the anchors of its highest IoU (authors, MMDetection);
    # torchvision: those anchors go to their own best ground truth; none: no such rule.
    low_quality: Literal["gt", "torchvision", "none"] = "gt"
    ignore_iof_thr: float = 0.5  # anchors inside crowd boxes (data.crowd: ignore)

    def __post_init__(self) -> None:
        _check(0.0 <= self.neg_iou_thr <= self.pos_iou_thr <= 1.0, "neg_iou_thr",
               "need 0 <= neg_iou_thr <= pos_iou_thr <= 1", (self.neg_iou_thr, self.pos_iou_thr))
        _check_positive(self, "atss_topk")
        _check(0.0 <= self.ignore_iof_thr <= 1.0, "ignore_iof_thr",
               "must be in [0, 1] (0: crowd regions ignore no anchor)", self.ignore_iof_thr)


@dataclass
class LossConfig:
    """Eq. 1-6: focal classification, smooth L1 regression, BCE IoU loss on positives."""

    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    reg_loss: Literal["smooth_l1", "l1", "giou"] = "smooth_l1"
    smooth_l1_beta: float = 0.11
    iou_loss: Literal["bce", "l2"] = "bce"  # Table 2
    iou_loss_weight: float = 1.0
    # false: the IoU target is detached (paper's plain rows); true: the "dagger" rows, the IoU
    # loss's gradient flows through the target IoU into the regression branch (Eq. 5).
    iou_target_grad: bool = False
    normalize: Literal["batch", "image"] = "batch"  # image: torchvision's per-image mean
    # Classification loss: focal (Eq. 1), qfl (GFL's Quality Focal Loss) or vfl (VarifocalNet):
    # the class output itself learns the detached IoU of the decoded box at the true class.
    cls_loss: Literal["focal", "qfl", "vfl"] = "focal"
    qfl_beta: float = 2.0
    vfl_alpha: float = 0.75
    vfl_gamma: float = 2.0
    # What the quality branch (model.head.iou_branch) learns: iou (Eq. 4) or FCOS centerness.
    quality_target: Literal["iou", "centerness"] = "iou"

    def __post_init__(self) -> None:
        _check(0.0 <= self.focal_alpha <= 1.0, "focal_alpha", "must be in [0, 1]", self.focal_alpha)
        _check(self.focal_gamma >= 0 and self.smooth_l1_beta >= 0 and self.iou_loss_weight >= 0,
               "focal_gamma", "focal_gamma, smooth_l1_beta and iou_loss_weight must be >= 0",
               (self.focal_gamma, self.smooth_l1_beta, self.iou_loss_weight))
        _check(self.qfl_beta >= 0 and self.vfl_gamma >= 0 and 0.0 <= self.vfl_alpha, "qfl_beta",
               "qfl_beta, vfl_gamma and vfl_alpha must be >= 0", (self.qfl_beta, self.vfl_gamma, self.vfl_alpha))
        _check(not (self.quality_target == "centerness" and self.iou_target_grad), "iou_target_grad",
               "must be false with quality_target centerness (its target has no gradient path)", self.iou_target_grad)


@dataclass
class ModelConfig:
    """Everything ``build_model`` needs; ``num_classes`` counts foreground classes."""

    num_classes: int = 80
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    box_coder: BoxCoderConfig = field(default_factory=BoxCoderConfig)
    test: TestConfig = field(default_factory=TestConfig)
    assigner: AssignerConfig = field(default_factory=AssignerConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        _check_positive(self, "num_classes")
        _check(self.test.nms != "iou_guided" or self.head.iou_branch, "test.nms",
               "iou_guided visits boxes by their predicted IoU: set model.head.iou_branch true", self.test.nms)


@dataclass
class InputConfig:
    """Keep-ratio resize to fit max_size x min_size, normalise RGB in [0, 255], pad."""

    min_size: int = 800
    max_size: int = 1333
    mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    size_divisor: int = 32

    def __post_init__(self) -> None:
        _check_positive(self, "min_size", "max_size", "size_divisor")
        _check(len(self.mean) == 3, "mean", "must have 3 values (R, G, B)", self.mean)
        _check(len(self.std) == 3 and all(s > 0 for s in self.std), "std",
               "must have 3 positive values (R, G, B)", self.std)


@dataclass
class DatasetConfig:
    """One split: a COCO-format JSON + image folder, a VOC devkit, or the synthetic set."""

    type: Literal["coco", "voc", "synthetic"] = "coco"
    ann_file: Optional[str] = None  # coco: annotation JSON
    image_dir: Optional[str] = None  # coco: image folder
    voc_root: Optional[str] = None  # voc: the VOCdevkit folder
    voc_sources: list[str] = field(default_factory=lambda: ["2007/trainval", "2012/trainval"])

    def __post_init__(self) -> None:
        for source in self.voc_sources:
            _check(isinstance(source, str) and source.count("/") == 1, "voc_sources",
                   "entries look like '2007/trainval'", source)


@dataclass
class SyntheticConfig:
    """The embedded synthetic shapes dataset (``iadet.data.synthetic``), generated on first use."""

    cache_dir: str = "data/synthetic"
    num_train: int = 2000
    num_val: int = 300
    height: int = 320
    width: int = 320
    seed: int = 0
    num_classes: Optional[int] = None  # the first N shape classes; null: all 9
    max_objects: int = 10
    min_object_size: float = 10.0  # pixels; sides are log-uniform up to 0.7 x the short side
    empty_fraction: float = 0.05
    difficulty: float = 1.0  # 0..1: background texture, clutter, low-contrast/two-tone/blurred objects, noise

    def __post_init__(self) -> None:
        _check(0.0 <= self.difficulty <= 1.0, "difficulty", "must be in [0, 1]", self.difficulty)
        for name in ("num_train", "num_val"):
            _check(getattr(self, name) >= 0, name, "must be >= 0 (images in the split)", getattr(self, name))
        for name in ("height", "width"):
            _check(getattr(self, name) >= 32, name, "must be >= 32 (pixels)", getattr(self, name))
        _check(self.max_objects >= 1, "max_objects",
               "must be >= 1 (for images without objects set empty_fraction: 1)", self.max_objects)
        _check(0.0 <= self.empty_fraction <= 1.0, "empty_fraction", "must be in [0, 1]", self.empty_fraction)


@dataclass
class DataConfig:
    """Datasets and how they are read (SPEC section 2)."""

    # Paths come from configs/_base_/datasets/*.yaml; a section's defaults are the class's own.
    train: DatasetConfig = field(default_factory=DatasetConfig)
    val: DatasetConfig = field(default_factory=DatasetConfig)
    test: DatasetConfig = field(default_factory=DatasetConfig)  # `iadet.eval --split test` (e.g. test-dev)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    crowd: Literal["drop", "ignore"] = "drop"  # authors drop crowd boxes in training
    filter_empty: bool = False  # drop training images without objects (authors, paper configs: true)
    # VOC objects marked difficult, in training (evaluation always ignores them). ignore: they
    # become ignore regions, anchors on them are neither positive nor negative. negative: they
    # are left out of the targets, so anchors on them are negatives (the authors: with_crowd
    # False, no gt_bboxes_ignore reaches the assigner; the paper's VOC configs).
    voc_difficult: Literal["ignore", "negative"] = "ignore"
    skip_bad_images: bool = False  # skip (with a warning) instead of stopping on a bad image
    flip_prob: float = 0.5
    num_workers: int = 2

    def __post_init__(self) -> None:
        _check(0.0 <= self.flip_prob <= 1.0, "flip_prob", "must be in [0, 1]", self.flip_prob)
        _check(self.voc_difficult in ("ignore", "negative"), "voc_difficult",
               "must be 'ignore' (ignore regions) or 'negative' (left out: anchors on them are negatives)",
               self.voc_difficult)
        _check(self.num_workers >= 0, "num_workers", "must be >= 0", self.num_workers)


@dataclass
class TrainConfig:
    """Optimisation (SPEC section 2): SGD, lr 0.01 per 16 images, warm-up, steps, 12 epochs."""

    optimizer: Literal["SGD", "AdamW"] = "SGD"
    lr: float = 0.01  # for base_batch_size images; scaled linearly to the real total batch
    base_batch_size: int = 16
    scale_lr: bool = True  # linear scaling rule
    momentum: float = 0.9
    weight_decay: float = 1.0e-4
    batch_size: int = 4  # images per process (GPU); the total batch is batch_size * world size
    epochs: int = 12
    max_iters: Optional[int] = None  # iteration-based schedule: lr_steps are then iterations
    lr_steps: list[int] = field(default_factory=lambda: [8, 11])  # epochs (or iterations)
    lr_gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 0.3333333333333333  # the warm-up starts at lr * warmup_ratio
    grad_clip: Optional[float] = 35.0  # max L2 norm of all gradients; null: no clipping
    amp: Literal["off", "bf16", "fp16"] = "off"
    sync_bn: bool = False  # convert trainable BatchNorm to SyncBatchNorm under DDP
    seed: int = 0
    eval_interval: int = 1  # evaluate every N epochs (0: only at the end)
    final_eval: bool = True  # evaluate after the last iteration (false: a separate `iadet.eval` follows)
    eval_backend: Literal["fast", "pycocotools"] = "fast"  # COCO evaluator (equal numbers; iadet's is faster)
    checkpoint_interval: int = 0  # also checkpoint every N iterations (0: per epoch only)
    nonfinite: Literal["stop", "skip"] = "stop"  # a non-finite loss stops the run, or skips its batch (counted)
    log_interval: int = 20
    work_dir: Optional[str] = None  # default work_dirs/<config name>

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr", "must be positive", self.lr)
        _check(self.lr_gamma > 0, "lr_gamma", "must be positive (the lr is multiplied by it at each step)",
               self.lr_gamma)
        _check_positive(self, "base_batch_size", "batch_size", "epochs", "log_interval")
        _check(self.max_iters is None or self.max_iters > 0, "max_iters", "must be positive or null",
               self.max_iters)
        _check(self.weight_decay >= 0 and self.momentum >= 0, "weight_decay",
               "weight_decay and momentum must be >= 0", (self.weight_decay, self.momentum))
        _check(self.warmup_iters >= 0 and 0 < self.warmup_ratio <= 1, "warmup_ratio",
               "need warmup_iters >= 0 and 0 < warmup_ratio <= 1", (self.warmup_iters, self.warmup_ratio))
        _check(self.grad_clip is None or self.grad_clip > 0, "grad_clip", "must be positive or null",
               self.grad_clip)
        _check(self.eval_interval >= 0 and self.checkpoint_interval >= 0, "eval_interval",
               "eval_interval and checkpoint_interval must be >= 0", (self.eval_interval, self.checkpoint_interval))


@dataclass
class Config:
    """Root of an iadet configuration. ``Config()`` is the paper's IoU-aware RetinaNet R50.

    The file a config came from is not part of it: ``iadet.config.config_files(path)``
    lists the files ``load_config(path)`` merges, and ``dump_config`` records the result.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
