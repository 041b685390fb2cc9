"""What an anchor assignment gives each object, by COCO size: how many positive anchors, their
IoU with it, and how many anchors of IoU >= 0.5 with it are trained as background. One table
row per rule (a set of config overrides), on the same training images, without augmentation.

    python -m iadet.tools.assignment_stats --config configs/mini/family/iou_aware_aligned_grad.yaml \\
        --images 300 --rule "max-IoU=" --rule "ATSS, k in anchors=model.assigner.type=atss" \\
        --rule "ATSS, k in locations=model.assigner.type=atss model.assigner.atss_topk_unit=location"

Issue 16 used it to see why ATSS with its 9 candidates counted in anchors (one location per
level on RetinaNet's 9 anchors) trains worse than counted in locations, as the ATSS authors do.
"""
import argparse
import math
import warnings
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from iadet.ops.boxes import box_iou

# COCO's object sizes (area in pixels of the image the network sees)
SIZES = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2), ("large", 96.0 ** 2, math.inf))
HIGH_IOU = 0.5


def object_stats(matched: Tensor, gt_boxes: Tensor, anchors: Tensor) -> List[Tuple[str, int, List[float], int]]:
    """Per ground truth of one image: (its size, its number of positive anchors, their IoUs with
    it, the anchors of IoU >= 0.5 with it that are background). ``matched``: (M,) assignment codes
    (k >= 0 positive for ground truth k, -1 background, -2 ignored)."""
    if len(gt_boxes) == 0:
        return []
    iou = box_iou(gt_boxes.float(), anchors.float())                          # (K, M)
    area = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    rows = []
    for k in range(len(gt_boxes)):
        size = next(name for name, low, high in SIZES if low <= float(area[k]) < high)
        positive = matched == k
        background = (matched == -1) & (iou[k] >= HIGH_IOU)
        rows.append((size, int(positive.sum()), iou[k][positive].tolist(), int(background.sum())))
    return rows


def summarise(rows: Sequence[Tuple[str, int, List[float], int]]) -> List[List]:
    """Per size (and all): objects, mean positives, objects without one, mean IoU of the
    positives, mean background anchors of IoU >= 0.5."""
    table = []
    for name in [s[0] for s in SIZES] + ["all"]:
        mine = [r for r in rows if name in (r[0], "all")]
        if not mine:
            continue
        ious = [v for r in mine for v in r[2]]
        table.append([name, len(mine), sum(r[1] for r in mine) / len(mine), sum(r[1] == 0 for r in mine),
                      sum(ious) / len(ious) if ious else None, sum(r[3] for r in mine) / len(mine)])
    return table


def _anchors(cfg, model, height: int, width: int) -> Tuple[Tensor, List[int]]:
    """The anchors of an image padded to the size divisor, on the network's own pyramid sizes."""
    from iadet.export import pyramid_sizes

    d = cfg.input.size_divisor
    padded = (math.ceil(height / d) * d, math.ceil(width / d) * d)
    levels = model.anchor_generator.grid_anchors(pyramid_sizes(model, padded), padded)
    return torch.cat(levels), [len(level) for level in levels]


def rule_stats(config: str, opts: List[str], images: int) -> List[List]:
    from iadet import builder
    from iadet.config import load_config

    cfg = load_config(config, opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rule is chosen on purpose here
        assigner = builder.build_criterion(cfg).assigner
    dataset = builder.build_dataset(cfg, "train", train_transforms=False)
    model = builder.build_detector(cfg)
    rows = []
    for i in range(min(images, len(dataset))):
        image, target = dataset[i]
        anchors, per_level = _anchors(cfg, model, *image.shape[-2:])
        ignore = [target["ignore_boxes"]] if "ignore_boxes" in target else None
        matched = assigner.assign(anchors, [target["boxes"]], ignore, num_anchors_per_level=per_level).matched_idx[0]
        rows += object_stats(matched, target["boxes"], anchors)
    return summarise(rows)


def _format(value) -> str:
    return "–" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def main(argv=None) -> int:
    from iadet.machine import cpu_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--images", type=int, default=300, help="the first N training images")
    p.add_argument("--rule", action="append", default=[],
                   help="'title=key=value key=value ...' (repeatable; 'title=' alone: the config as it is)")
    args = p.parse_args(argv)
    rules: Dict[str, List[str]] = {}
    for rule in args.rule or ["config="]:
        title, sep, opts = rule.partition("=")
        if not sep or not title:
            p.error(f"--rule {rule!r}: expected 'title=overrides'")
        rules[title] = opts.split()
    print(f"{args.config}, first {args.images} training images, CPU {cpu_model()}\n")
    print("| rule | size | objects | positives per object | objects without one | IoU of positives "
          f"| background anchors of IoU >= {HIGH_IOU} per object |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for title, opts in rules.items():
        for row in rule_stats(args.config, opts, args.images):
            print("| " + " | ".join([title] + [_format(v) for v in row]) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
