"""Data-loading throughput: iadet's pipeline vs a plain PIL + torchvision.transforms one.

Both read the same COCO128 images in the same order, resize them to fit 1333 x 800 (keep
ratio), flip with probability 0.5, normalise with the ImageNet statistics, and form padded
batches with the same collate; both run in this process, with 0 and 2 loader workers.

* iadet: ``CocoDetection`` (torchvision.io decode, targets with boxes) +
  ``build_train_transforms`` (uint8 bilinear resize, flip, in-place normalise) +
  ``build_dataloader`` (aspect-ratio grouping).
* reference: ``PIL.Image.open(...).convert("RGB")`` + torchvision.transforms v1
  ``Resize(800, max_size=1333)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``
  (images only, no boxes) in a plain DataLoader.

Throughput is images per second after the first batch (worker start-up excluded).
Usage: ``python scripts/bench_data.py [--data PATH] [--workers 0 2] [--batch-size 2] [--threads N] [--json-out F]``.
Expect well under two minutes on two CPU cores.
"""
import argparse
import functools
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_machine import cpu_info, cpu_line  # noqa: E402
from iadet.data.coco import CocoDetection  # noqa: E402
from iadet.data.loading import build_dataloader, collate_detection  # noqa: E402
from iadet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_train_transforms  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"


class PILReference(Dataset):
    """The same images through PIL and torchvision.transforms v1 (no boxes)."""

    def __init__(self, dataset: CocoDetection, min_size: int, max_size: int):
        from torchvision import transforms as T

        self.paths = [dataset.image_dir / dataset.get_image_info(i)["file_name"] for i in range(len(dataset))]
        self.transform = T.Compose([
            T.Resize(min_size, max_size=max_size, interpolation=T.InterpolationMode.BILINEAR),
            T.RandomHorizontalFlip(0.5),
            T.ToTensor(),
            T.Normalize([m / 255 for m in IMAGENET_MEAN], [s / 255 for s in IMAGENET_STD]),
        ])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            image = self.transform(im.convert("RGB"))
        return image, {"image_id": i}


def images_per_second(loader) -> float:
    it = iter(loader)
    next(it)  # worker start-up and first batch excluded
    n, start = 0, time.perf_counter()
    for batch in it:
        n += batch["images"].shape[0]
    return n / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="COCO128 folder")
    parser.add_argument("--split", default="train2017")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads of this process (workers always use 1); default: torch's")
    parser.add_argument("--json-out", default=None, help="write the rows and the machine here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    ann_file = args.data / "annotations" / f"instances_{args.split}.json"
    dataset = CocoDetection(ann_file, args.data / args.split,
                            transforms=build_train_transforms(args.min_size, args.max_size, flip_prob=0.5, seed=0))
    reference = PILReference(dataset, args.min_size, args.max_size)
    collate = functools.partial(collate_detection, size_divisor=32)
    print(f"{len(dataset)} images of {ann_file}, resize to fit {args.max_size}x{args.min_size}, "
          f"batch {args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for workers in args.workers:
        ours = images_per_second(build_dataloader(dataset, args.batch_size, num_workers=workers, shuffle=False,
                                                  seed=0))
        ref = images_per_second(DataLoader(reference, batch_size=args.batch_size, num_workers=workers,
                                           collate_fn=collate))
        rows.append((workers, ours, ref))
    print(f"\n| workers | iadet (img/s) | PIL + torchvision.transforms (img/s) | ratio |")
    print("| ---: | ---: | ---: | ---: |")
    for workers, ours, ref in rows:
        print(f"| {workers} | {ours:.1f} | {ref:.1f} | {ours / ref:.2f}x |")
    print(cpu_line() + f"; {torch.get_num_threads()} torch threads")
    if args.json_out:
        machine = {**cpu_info(), "threads": torch.get_num_threads(), "torch": torch.__version__}
        payload = {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()},
                   "rows": [{"workers": w, "iadet_img_s": o, "reference_img_s": r, "ratio": o / r} for w, o, r in rows]}
        Path(args.json_out).write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
