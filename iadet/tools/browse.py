"""Draw the ground truth after the training transforms, to check a dataset by eye.

    python -m iadet.tools.browse --config CFG --out DIR [--num N] [--split train|val] [--opts ...]

Writes ``DIR/<image id>.jpg``: the image as the network sees it (resized, maybe flipped;
normalisation undone) with its boxes and class names; ignore regions (crowd boxes,
difficult VOC objects) in grey.
"""
import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import iadet
from iadet.builder import build_dataset


def denormalize(image: torch.Tensor, mean, std) -> torch.Tensor:
    """(3, H, W) normalised float -> (3, H, W) uint8."""
    mean = torch.tensor(mean).view(3, 1, 1)
    std = torch.tensor(std).view(3, 1, 1)
    return (image * std + mean).round().clamp(0, 255).to(torch.uint8)


def draw_target(image: torch.Tensor, target: dict, class_names) -> torch.Tensor:
    from torchvision.utils import draw_bounding_boxes

    boxes, labels = target["boxes"], target["labels"].tolist()
    if len(boxes):
        image = draw_bounding_boxes(image, boxes, labels=[class_names[l] for l in labels], colors="lime", width=2)
    ignore = target.get("ignore_boxes")
    if ignore is not None and len(ignore):
        image = draw_bounding_boxes(image, ignore, labels=["ignore"] * len(ignore), colors="gray", width=1)
    return image


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m iadet.tools.browse", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--split", default="train", choices=["train", "val"])
    p.add_argument("--seed", type=int, default=0, help="seed of the random flips")
    p.add_argument("--opts", nargs="*", default=[])
    args = p.parse_args(argv)
    try:
        cfg = iadet.load_config(args.config, args.opts)
        dataset = build_dataset(cfg, args.split, train_transforms=True, seed=args.seed)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    from torchvision.io import write_jpeg

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    num = min(args.num, len(dataset))
    for i in tqdm(range(num), desc="browse", unit="img"):
        image, target = dataset[i]
        drawn = draw_target(denormalize(image, cfg.input.mean, cfg.input.std), target, dataset.class_names)
        write_jpeg(drawn, str(out / f"{target['image_id']}.jpg"), quality=90)
    print(f"{num} images with ground truth -> {out}")


if __name__ == "__main__":
    main()
