"""NMS and COCO evaluation rows of scripts/bench.py: iadet's batched NMS against torchvision's
on clustered boxes (bench_nms.py's inputs), and iadet's COCO box evaluator against
pycocotools and faster-coco-eval (bench_eval.py's data and timing functions).
"""
import contextlib
import copy
import io

import torch
import torchvision

from bench_common import GOALS, alternate, make_row


class NmsEvalRows:
    """``row_*`` methods of the Bench (bench.py), which provides ``args``, ``device``,
    ``eval_images``, ``rows`` and ``log``."""

    def row_nms(self):
        from iadet.ops.nms import batched_nms
        from tests.ops.test_nms import clustered_detections, per_class_torchvision_nms

        for num_boxes in (1000, 5000, 20000):
            generator = torch.Generator().manual_seed(num_boxes)  # bench_nms.py's inputs (seed 0)
            boxes, scores, labels = (t.to(self.device) for t in clustered_detections(num_boxes, 80, generator))
            runners = {"iadet": lambda: batched_nms(boxes, scores, labels, 0.5),
                       "torchvision": lambda: torchvision.ops.batched_nms(boxes, scores, labels, 0.5)}
            times, results = alternate(runners, max(self.args.repeats, 9), self.device, warmup=2)
            if torch.equal(results["iadet"], results["torchvision"]):
                check = f"identical keeps ({results['iadet'].numel()})"
            elif torch.equal(results["iadet"], per_class_torchvision_nms(boxes, scores, labels, 0.5)):
                check = "differs from batched_nms' coordinate-offset trick, equal to per-class torchvision nms"
            else:
                check = "DIFFERENT keeps"
            self.rows.append(make_row(f"nms_{num_boxes // 1000}k", f"batched NMS, {num_boxes} boxes, 80 classes",
                                      times["iadet"], times["torchvision"], "torchvision.ops.batched_nms",
                                      GOALS["nms"], check))

    def row_coco_eval(self):
        import numpy as np

        import bench_eval  # scripts/bench_eval.py
        from iadet.evaluation.fast_coco import CocoBoxEvaluator
        from pycocotools.coco import COCO

        dataset, results = bench_eval.synthetic_coco(self.eval_images, 100, 0)
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = copy.deepcopy(dataset)
            gt.createIndex()
        evaluator = CocoBoxEvaluator(gt)
        runners = {"iadet": lambda: bench_eval.time_fast(evaluator, results),
                   "pycocotools": lambda: bench_eval.time_pycocotools(gt, results)}
        try:
            from faster_coco_eval import COCO as FasterCOCO

            with contextlib.redirect_stdout(io.StringIO()):
                fgt = FasterCOCO(copy.deepcopy(dataset))
            runners["faster-coco-eval"] = lambda: bench_eval.time_faster_coco_eval(fgt, results)
        except ImportError:
            self.log("coco_eval: faster-coco-eval not installed, that row is skipped")
        # pycocotools takes ~40 s per evaluation at full size: two alternations are enough for a 60x gap.
        repeats = max(1, min(self.args.repeats, 2))
        # bench_eval's runners time themselves (result list -> 12 stats); keep their own timings.
        times = {name: [] for name in runners}
        stats = {}
        names = list(runners)
        for rep in range(repeats):
            for name in (names if rep % 2 == 0 else names[::-1]):
                seconds, _, stats[name] = runners[name]()
                times[name].append(seconds)
                self.log(f"  coco_eval {name}: {seconds:.2f}s")
        what = f"COCO box evaluation, {self.eval_images} images x 100 detections (bench_eval.py data)"
        for ref, key in (("pycocotools", "coco_eval_pycocotools"), ("faster-coco-eval", "coco_eval_faster")):
            if ref not in runners:
                continue
            diff = float(np.max(np.abs(stats["iadet"] - stats[ref])))
            self.rows.append(make_row(key, what, times["iadet"], times[ref], ref, GOALS[key],
                                      f"max stat diff vs {ref} {diff:.1e}"))
