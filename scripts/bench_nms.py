"""Benchmark iadet.ops.nms.batched_nms against torchvision.ops.batched_nms.

For 1k / 5k / 20k detector-like boxes (jittered copies of a few objects, 80 classes) it
times both implementations alternately in this process and prints the median times, the
ratio iadet / torchvision and whether the kept indices are identical.

    python scripts/bench_nms.py                      # CPU, about 10 s
    python scripts/bench_nms.py --device cuda        # when a GPU is available
    python scripts/bench_nms.py --threads 1          # steadier timings on a busy machine

For <= 1000 boxes on CPU, torchvision.ops.batched_nms offsets each class's coordinates,
which can flip borderline IoUs; a mismatch there is also checked against per-class
torchvision.ops.nms (what iadet computes) and reported as such.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iadet.ops.nms import batched_nms  # noqa: E402


def clustered_detections(num_boxes: int, num_classes: int, generator: torch.Generator,
                         jitter: float = 0.15, image_size=(800, 1333)):
    """Detector-like output: (N, 4) float32 xyxy boxes, (N,) distinct scores, (N,) labels."""
    height, width = image_size
    num_objects = max(1, num_boxes // 40)
    center_x = torch.rand(num_objects, generator=generator) * width
    center_y = torch.rand(num_objects, generator=generator) * height
    size = torch.exp(torch.rand(num_objects, generator=generator) * 3.3 + 2.7)  # ~15-400 px
    aspect = torch.exp(torch.rand(num_objects, generator=generator) * 1.4 - 0.7)
    object_w, object_h = size * aspect.sqrt(), size / aspect.sqrt()
    object_class = torch.randint(num_classes, (num_objects,), generator=generator)
    owner = torch.randint(num_objects, (num_boxes,), generator=generator)
    noise = torch.randn(num_boxes, 4, generator=generator) * jitter
    box_w, box_h = object_w[owner], object_h[owner]
    x1 = center_x[owner] - box_w / 2 + noise[:, 0] * box_w
    y1 = center_y[owner] - box_h / 2 + noise[:, 1] * box_h
    x2 = x1 + box_w * torch.exp(noise[:, 2])
    y2 = y1 + box_h * torch.exp(noise[:, 3])
    boxes = torch.stack([x1.clamp(0, width), y1.clamp(0, height),
                         x2.clamp(0, width), y2.clamp(0, height)], dim=1)
    relabel = torch.rand(num_boxes, generator=generator) < 0.2
    labels = torch.where(relabel, torch.randint(num_classes, (num_boxes,), generator=generator),
                         object_class[owner])
    scores = (torch.randperm(num_boxes, generator=generator).float() + 1) / (num_boxes + 1)
    return boxes, scores, labels


def per_class_torchvision_nms(boxes, scores, labels, iou_threshold):
    """torchvision.ops.nms on each class separately, merged by decreasing score."""
    keep_mask = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for label in torch.unique(labels):
        members = torch.where(labels == label)[0]
        kept_members = torchvision.ops.nms(boxes[members], scores[members], iou_threshold)
        keep_mask[members[kept_members]] = True
    kept = torch.where(keep_mask)[0]
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def timed(function, device):
    """(result, seconds) of one call, synchronising CUDA around it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--sizes", default="1000,5000,20000", help="comma-separated box counts")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--iou-threshold", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but torch.cuda.is_available() is False")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(f"device={device} threads={torch.get_num_threads()} classes={args.classes} "
          f"iou_threshold={args.iou_threshold} repeats={args.repeats} "
          f"torch={torch.__version__} torchvision={torchvision.__version__}")
    print(f"{'boxes':>6} {'kept':>6} {'iadet ms':>9} {'tv ms':>9} {'iadet/tv':>9}  identical")
    for num_boxes in [int(size) for size in args.sizes.split(",")]:
        generator = torch.Generator().manual_seed(args.seed + num_boxes)
        boxes, scores, labels = (tensor.to(device) for tensor in
                                 clustered_detections(num_boxes, args.classes, generator))
        run_iadet = lambda: batched_nms(boxes, scores, labels, args.iou_threshold)  # noqa: E731
        run_torchvision = lambda: torchvision.ops.batched_nms(  # noqa: E731
            boxes, scores, labels, args.iou_threshold)
        kept_iadet, kept_torchvision = run_iadet(), run_torchvision()  # warm-up
        iadet_times, torchvision_times = [], []
        for _ in range(args.repeats):  # alternate so that machine load hits both alike
            iadet_times.append(timed(run_iadet, device)[1])
            torchvision_times.append(timed(run_torchvision, device)[1])
        iadet_ms = 1e3 * statistics.median(iadet_times)
        torchvision_ms = 1e3 * statistics.median(torchvision_times)
        identical = "yes" if torch.equal(kept_iadet, kept_torchvision) else "NO"
        if identical == "NO":
            reference = per_class_torchvision_nms(boxes, scores, labels, args.iou_threshold)
            identical += (" (equal to per-class torchvision nms)"
                          if torch.equal(kept_iadet, reference) else " (also differs per class)")
        print(f"{num_boxes:>6} {kept_iadet.numel():>6} {iadet_ms:>9.2f} {torchvision_ms:>9.2f} "
              f"{iadet_ms / torchvision_ms:>9.2f}  {identical}")


if __name__ == "__main__":
    main()
