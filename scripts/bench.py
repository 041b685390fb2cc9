"""iadet against its references, measured side by side (issue 7).

Every row times an iadet path and its reference in this process, on the same inputs and the
same weights, alternating the two (order reversed every repeat) after a warm-up, and reports
median / min / max seconds, the ratio iadet / reference, the goal and whether it is met.
Where the two must agree (detections, losses, NMS keeps, COCO stats) the row also checks it.

Rows (``--only``, comma-separated; default all but the diagnostic ``fast_paths`` and
``profile``; ``--only all`` runs every row):

  r50_fp32      whole R50-FPN inference, batch 1, fp32: iadet ``model.predict`` vs torchvision
                ``RetinaNet([img])`` (eval, no_grad), both from the same float image and each
                doing its own normalise / resize / pad / post-processing; same detections.
  r50_fp32_fast the same with iadet's fp32 fast path: frozen BN folded into the convs
                (``iadet.models.fuse``) and channels-last weights; same detections.
  r50_bf16      iadet under ``torch.autocast(bfloat16)`` (head outputs cast to float32 before
                post-processing, as ``iadet.evaluation.predict`` does) vs torchvision fp32.
  r50_bf16_fast the same with BN folded and channels-last weights.
  bf16_ap       AP of the quickstart checkpoint on the synthetic val set, fp32 vs bf16 autocast.
  postprocess   decode + top-k + NMS (+ rescale to the original image) on the same head outputs:
                iadet ``PostProcessor`` vs torchvision ``postprocess_detections`` +
                ``transform.postprocess`` (and its per-level split).
  nms           1k / 5k / 20k clustered boxes, 80 classes: ``iadet.ops.nms.batched_nms`` vs
                ``torchvision.ops.batched_nms``.
  train_step    forward + losses + backward + SGD step, same weights / images / boxes.
  train_step_fast  iadet with bf16 autocast, and with channels-last weights, vs torchvision fp32.
  loss          target assignment + losses alone on the same head outputs and anchors.
  coco_eval     5,000 images x 100 detections (scripts/bench_eval.py): iadet fast evaluator vs
                pycocotools and vs faster-coco-eval.
  iou_branch    iadet with ``model.head.iou_branch`` true vs false (whole predict and forward).
  family        each option of configs/family/ (issue 15: QFL, VFL, centerness, ATSS, the aligned
                IoU branch, Soft-NMS, IoU-guided NMS) against the paper's IoU-aware RetinaNet:
                whole predict, and a training step for the trained options (bench_rows_family.py).
  deform_sampling  the aligned branch's deformable conv (one level, forward + backward): iadet's
                gather form, its CPU path, vs ``torchvision.ops.deform_conv2d``; same values.
  train_memory  peak memory of one training step (CPU: each side in a fresh subprocess, peak
                RSS above the RSS before the step; CUDA: ``max_memory_allocated``).
  fast_paths    iadet inference variants against plain iadet: inference_mode, folded BN,
                channels_last, bf16 and combinations (same detections checked for fp32 ones).
  profile       torch.profiler tables (top ops) and a per-stage breakdown of both detectors.

Examples::

    PYTHONPATH=. python scripts/bench.py                       # the issue's rows, full sizes (~8.5 min, 2 cores)
    PYTHONPATH=. python scripts/bench.py --only all --repeats 5  # plus fast_paths and profile (~15 min)
    PYTHONPATH=. python scripts/bench.py --quick --threads 1   # small sizes, a smoke run
    PYTHONPATH=. python scripts/bench.py --only nms,postprocess --repeats 9
    PYTHONPATH=. python scripts/bench.py --only family --family atss   # one method of the family row
    PYTHONPATH=. python scripts/bench.py --device cuda

The reference detector is torchvision's ``retinanet_resnet50_fpn`` as torchvision builds it
around pretrained weights (``FrozenBatchNorm2d``, layer2-4 trainable: what
``configs/compat/torchvision_retinanet_r50_fpn.yaml`` mirrors), carrying the random weights
of ``retinanet_resnet50_fpn(weights=None, weights_backbone=None)`` calibrated as
``tests/models/test_detector_torchvision.py`` does (its ``nn.BatchNorm2d`` statistics copied
into the frozen layers); iadet gets the same weights through
``iadet.convert.convert_torchvision_retinanet``.
"""
# Files: this one holds the CLI, the Bench (shared state and set-ups) and the driver;
# bench_common.py the timing, row record, table, machine info, inputs and detector pair;
# bench_rows_inference.py, bench_rows_training.py (with the --memory-child process) and
# bench_rows_nms_eval.py the rows (coco_eval reuses bench_eval.py's data and timing).
import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS.parent))  # iadet, and tests/ (the detector pair, the NMS inputs)
sys.path.insert(0, str(SCRIPTS))  # the bench_* modules

from bench_common import bench_image, detector_pair, format_table, machine_info, train_targets  # noqa: E402
from bench_rows_family import FamilyRows  # noqa: E402
from bench_rows_inference import InferenceRows  # noqa: E402
from bench_rows_nms_eval import NmsEvalRows  # noqa: E402
from bench_rows_training import TrainingRows, memory_child  # noqa: E402
from iadet.tools.reproduce import FAMILY  # noqa: E402

ALL_ROWS = ("r50_fp32", "r50_fp32_fast", "r50_bf16", "r50_bf16_fast", "bf16_ap", "postprocess", "nms",
            "train_step", "train_step_fast", "loss", "coco_eval", "iou_branch", "train_memory", "family",
            "deform_sampling", "fast_paths", "profile")

# diagnostic rows, not run by default (``--only all`` or naming them runs them): they add ~2.5 min
DIAGNOSTIC_ROWS = ("fast_paths", "profile")
DEFAULT_ROWS = tuple(r for r in ALL_ROWS if r not in DIAGNOSTIC_ROWS)


# ----------------------------------------------------------------------------- the bench
class Bench(InferenceRows, TrainingRows, NmsEvalRows, FamilyRows):
    """Shared state and set-ups; the ``row_<name>`` methods come from the row classes
    (bench_rows_inference.py, bench_rows_training.py, bench_rows_nms_eval.py,
    bench_rows_family.py)."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.quick = args.quick
        self.infer_size = (320, 480) if args.quick else (800, 1216)
        self.train_batch, self.train_size = (2, 256) if args.quick else (2, 512)
        self.eval_images = 500 if args.quick else 5000
        self.rows: List[Dict] = []
        self.profiles: Dict[str, str] = {}
        self._infer = None
        self._train = None

    def log(self, text: str) -> None:
        print(text, flush=True)

    # -- shared set-ups
    def infer_setup(self):
        if self._infer is None:
            image, source = bench_image(self.infer_size)
            tv, model, cfg = detector_pair(image, self.device)
            image = image.to(self.device)
            self._infer = {"image": image, "image01": image.float() / 255, "image255": image.float(),
                           "tv": tv, "model": model, "cfg": cfg, "source": source}
            self.log(f"inference input: {source}")
        return self._infer

    def train_setup(self):
        if self._train is None:
            images = [bench_image((self.train_size, self.train_size), i)[0] for i in range(self.train_batch)]
            targets, source = train_targets(self.train_batch, self.train_size)
            tv, model, cfg = detector_pair(images[0], self.device)
            images = [im.to(self.device) for im in images]
            targets = [{k: v.to(self.device) for k, v in t.items()} for t in targets]
            self._train = {"images01": [im.float() / 255 for im in images],
                           "images255": [im.float() for im in images], "targets": targets,
                           "tv": tv, "model": model, "cfg": cfg, "source": source,
                           "initial": (copy.deepcopy(tv.state_dict()), copy.deepcopy(model.state_dict()))}
            self.log(f"training input: {self.train_batch} x {self.train_size}x{self.train_size} images, "
                     f"{source} ({sum(len(t['boxes']) for t in targets)} boxes)")
        return self._train

    # -- driver
    def run(self, rows):
        for row in rows:
            self.log(f"--- {row}")
            start = time.perf_counter()
            getattr(self, f"row_{row}")()
            self.log(f"    ({time.perf_counter() - start:.1f}s)")


# ----------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side, alternating (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated rows, or 'all' (default: all but the diagnostic "
                             f"{', '.join(DIAGNOSTIC_ROWS)}): {', '.join(ALL_ROWS)}")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes for a smoke run (320x480 inference, batch 2 at 256 training, 500 images eval)")
    parser.add_argument("--family", default=None,
                        help="comma-separated methods of the family row (default: all): " + ", ".join(FAMILY))
    parser.add_argument("--json-out", default="bench.json")
    parser.add_argument("--memory-child", choices=("iadet", "torchvision"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-inputs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args.memory_child, args.memory_inputs)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but torch.cuda.is_available() is False")
    if args.only is None:
        rows = list(DEFAULT_ROWS)
    elif args.only.strip() == "all":
        rows = list(ALL_ROWS)
    else:
        rows = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ALL_ROWS]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; valid: {', '.join(ALL_ROWS)}")
    args.family = [m.strip() for m in args.family.split(",") if m.strip()] if args.family else list(FAMILY)
    unknown = [m for m in args.family if m not in FAMILY]
    if unknown:
        raise SystemExit(f"--family: unknown method(s) {unknown}; valid: {', '.join(FAMILY)}")

    torch.manual_seed(0)
    bench = Bench(args)
    info = machine_info(bench.device)
    bench.log(f"machine: {info['cpu']}" + (f", GPU {info['gpu']}" if "gpu" in info else "") +
              f"; threads {info['threads']}; torch {info['torch']}, torchvision {info['torchvision']}; "
              f"load average {info['load_average_at_start']}" + ("; QUICK sizes" if args.quick else ""))
    started = time.time()
    try:
        bench.run(rows)
    finally:
        table = format_table(bench.rows)
        print("\n" + table)
        print(f"CPU: {info['cpu']} ({info['cpu_count']} cores, {info['threads']} threads)"
              + (f"; GPU: {info['gpu']}" if "gpu" in info else ""))
        info["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        payload = {"machine": info, "args": vars(args), "quick": args.quick,
                   "sizes": {"inference": bench.infer_size, "train_batch": bench.train_batch,
                             "train_size": bench.train_size, "eval_images": bench.eval_images},
                   "seconds": time.time() - started, "rows": bench.rows, "profiles": bench.profiles,
                   "table_markdown": table}
        Path(args.json_out).write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
