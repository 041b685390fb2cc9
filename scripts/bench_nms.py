"""Benchmark iadet.ops.nms.batched_nms against torchvision.ops.batched_nms.

For 1k / 5k / 20k detector-like boxes (jittered copies of a few objects, 80 classes) it
times both implementations alternately in this process and prints the median times, the
ratio iadet / torchvision and whether the kept indices are identical.

    python scripts/bench_nms.py                      # CPU, about 10 s
    python scripts/bench_nms.py --device cuda        # when a GPU is available
    python scripts/bench_nms.py --threads 1          # steadier timings on a busy machine
    python scripts/bench_nms.py --json-out nms.json  # also the rows and the machine as JSON

For <= 1000 boxes on CPU, torchvision.ops.batched_nms offsets each class's coordinates,
which can flip borderline IoUs; a mismatch there is also checked against per-class
torchvision.ops.nms (what iadet computes) and reported as such.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_machine import cpu_info, cpu_line  # noqa: E402
from iadet.ops.nms import batched_nms  # noqa: E402
from tests.ops.test_nms import clustered_detections, per_class_torchvision_nms  # noqa: E402  (shared with the tests)


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
    parser.add_argument("--json-out", default=None, help="write the rows and the machine here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but torch.cuda.is_available() is False")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(f"device={device} threads={torch.get_num_threads()} classes={args.classes} "
          f"iou_threshold={args.iou_threshold} repeats={args.repeats} "
          f"torch={torch.__version__} torchvision={torchvision.__version__}")
    print(cpu_line() + (f"; GPU: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    print(f"{'boxes':>6} {'kept':>6} {'iadet ms':>9} {'tv ms':>9} {'iadet/tv':>9}  identical")
    rows = []
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
        rows.append({"boxes": num_boxes, "kept": kept_iadet.numel(), "iadet_ms": iadet_ms,
                     "torchvision_ms": torchvision_ms, "ratio": iadet_ms / torchvision_ms, "identical": identical})
    if args.json_out:
        machine = {**cpu_info(), "device": str(device), "threads": torch.get_num_threads(),
                   "torch": torch.__version__, "torchvision": torchvision.__version__}
        if device.type == "cuda":
            machine["gpu"] = torch.cuda.get_device_name(device)
        Path(args.json_out).write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=2))
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
