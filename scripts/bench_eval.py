"""Benchmark iadet's fast COCO box evaluator against pycocotools (and faster-coco-eval when installed).

A synthetic COCO-style ground truth (80 categories, ~7 objects per image with a realistic
size spread, ~1% crowd) and ``--dets`` detections per image (jittered ground truth, duplicates,
wrong classes, false positives) are built once; then, in this process and alternating, each
back-end is timed end to end from the list of result dicts to the 12 stats:

* pycocotools: ``loadRes`` + ``evaluate`` + ``accumulate`` + ``summarize`` (loadRes *included*;
  building the COCO index of the ground truth is not, it is shared by every evaluation);
* iadet fast: ``CocoBoxEvaluator(gt)`` built once outside the timing (the ground-truth index,
  like pycocotools' ``COCO(gt)``), then ``evaluate(results)`` + ``summarize``;
* faster-coco-eval: its ``loadRes`` + ``evaluate`` + ``accumulate`` + ``summarize`` on its own
  ``COCO`` index of the same ground truth.

Prints median / min / max seconds, the ratio to iadet, and the largest stat difference.

    PYTHONPATH=. python scripts/bench_eval.py --images 5000 --dets 100 --repeats 3
"""
import argparse
import contextlib
import copy
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_machine, also when imported by bench.py
from bench_machine import cpu_info, cpu_line  # noqa: E402
from iadet.evaluation.fast_coco import CocoBoxEvaluator, summarize  # noqa: E402

KEYS = ("image_id", "category_id", "bbox", "score")


def synthetic_coco(num_images: int, dets_per_image: int, seed: int = 0):
    """(gt dataset dict, result dicts): ~7 gts / image over 80 classes, ``dets_per_image`` detections each."""
    rng = np.random.default_rng(seed)
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, 81)]
    class_freq = rng.pareto(1.0, 80) + 0.05  # a few frequent classes, a long tail
    class_freq /= class_freq.sum()
    images, anns, results = [], [], []
    for img_id in range(1, num_images + 1):
        W, H = int(rng.integers(480, 641)), int(rng.integers(360, 641))
        images.append({"id": img_id, "file_name": f"{img_id:012d}.jpg", "width": W, "height": H})
        img_gts = []
        for _ in range(min(int(rng.poisson(7)) + 1, 60)):
            side = float(np.exp(rng.uniform(np.log(6), np.log(400))))  # sqrt(area) from 6 to 400 px
            aspect = float(np.exp(rng.normal(0, 0.5)))
            w, h = min(side * aspect, W - 1), min(side / aspect, H - 1)
            x, y = float(rng.uniform(0, W - w)), float(rng.uniform(0, H - h))
            gt = {"id": len(anns) + 1, "image_id": img_id, "category_id": int(rng.choice(80, p=class_freq)) + 1,
                  "bbox": [x, y, w, h], "area": w * h * float(rng.uniform(0.5, 0.9)),  # a mask covers part of its box
                  "iscrowd": int(rng.random() < 0.01)}
            anns.append(gt)
            img_gts.append(gt)
        dets = []
        for gt in img_gts:  # hits, misses, duplicates, some with the wrong class
            for _ in range(int(rng.choice([0, 1, 1, 1, 2, 3]))):
                x, y, w, h = gt["bbox"]
                s = float(rng.choice([0.03, 0.1, 0.25]))
                dx, dy, sw, sh = rng.normal(0, s, 4)
                box = [x + dx * w, y + dy * h, w * np.exp(sw), h * np.exp(sh)]
                cat = gt["category_id"] if rng.random() > 0.1 else int(rng.integers(1, 81))
                dets.append((cat, box, float(rng.beta(5, 2))))
        while len(dets) < dets_per_image:  # false positives near and far
            w, h = float(rng.uniform(4, W / 2)), float(rng.uniform(4, H / 2))
            dets.append((int(rng.choice(80, p=class_freq)) + 1, [rng.uniform(0, W - w), rng.uniform(0, H - h), w, h],
                         float(rng.beta(1, 5))))
        for cat, box, score in dets[:dets_per_image]:
            results.append({"image_id": img_id, "category_id": cat, "bbox": [round(float(v), 2) for v in box],
                            "score": round(score, 5)})
    return {"images": images, "annotations": anns, "categories": categories}, results


# each runner returns (total seconds, of which reading the result list, the 12 stats)
def time_pycocotools(gt, results):
    from pycocotools.cocoeval import COCOeval

    dets = [{k: r[k] for k in KEYS} for r in results]  # loadRes writes into its input: fresh copies, untimed
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        dt = gt.loadRes(dets)
        loaded = time.perf_counter()
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        end = time.perf_counter()
    return end - start, loaded - start, np.asarray(ev.stats)


def time_fast(evaluator, results):
    start = time.perf_counter()
    arrays = evaluator.results_to_arrays(results)
    loaded = time.perf_counter()
    stats = summarize(evaluator.evaluate_arrays(*arrays))
    end = time.perf_counter()
    return end - start, loaded - start, np.asarray(stats)


def time_faster_coco_eval(gt, results):
    from faster_coco_eval import COCOeval_faster

    dets = [{k: r[k] for k in KEYS} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        dt = gt.loadRes(dets)
        loaded = time.perf_counter()
        ev = COCOeval_faster(gt, dt, "bbox", print_function=lambda *a, **k: None)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        end = time.perf_counter()
    return end - start, loaded - start, np.asarray(ev.stats[:12])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per back-end (alternating)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", help="write the timings and stats here")
    args = parser.parse_args()

    from pycocotools.coco import COCO

    t0 = time.perf_counter()
    dataset, results = synthetic_coco(args.images, args.dets, args.seed)
    print(f"synthetic data: {len(dataset['images'])} images, {len(dataset['annotations'])} gts "
          f"({sum(a['iscrowd'] for a in dataset['annotations'])} crowd), {len(results)} detections "
          f"({time.perf_counter() - t0:.1f}s to build)")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(dataset)
        gt.createIndex()
    t0 = time.perf_counter()
    evaluator = CocoBoxEvaluator(gt)
    index_s = time.perf_counter() - t0
    runners = {"pycocotools": lambda: time_pycocotools(gt, results),
               "iadet fast": lambda: time_fast(evaluator, results)}
    try:
        from faster_coco_eval import COCO as FasterCOCO

        fgt = FasterCOCO(copy.deepcopy(dataset))
        runners["faster-coco-eval"] = lambda: time_faster_coco_eval(fgt, results)
    except ImportError:
        print("faster-coco-eval not installed: skipped (pip install faster-coco-eval)")

    times = {name: [] for name in runners}
    input_times = {name: [] for name in runners}
    stats = {}
    for rep in range(args.repeats):
        for name, run in runners.items():
            seconds, input_s, stats[name] = run()
            times[name].append(seconds)
            input_times[name].append(input_s)
            print(f"  run {rep + 1}/{args.repeats} {name:<17} {seconds:8.3f}s (reading results {input_s:.3f}s)",
                  flush=True)

    fast_median = statistics.median(times["iadet fast"])
    print(f"\n{args.images} images x {args.dets} detections; iadet ground-truth index built once in {index_s:.2f}s "
          "(untimed); all times from the result list to the 12 stats (pycocotools / faster-coco-eval: loadRes "
          "included; iadet: dict -> array conversion included)\n")
    print("| back-end | median s | min s | max s | time / iadet | of which reading results (median s) "
          "| max abs stat diff vs pycocotools |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = {}
    for name, ts in times.items():
        diff = float(np.max(np.abs(stats[name] - stats["pycocotools"])))
        rows[name] = {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "times_s": ts,
                      "ratio_to_iadet": statistics.median(ts) / fast_median,
                      "reading_results_median_s": statistics.median(input_times[name]),
                      "max_abs_stat_diff": diff, "stats": stats[name].tolist()}
        print(f"| {name} | {rows[name]['median_s']:.3f} | {min(ts):.3f} | {max(ts):.3f} | "
              f"{rows[name]['ratio_to_iadet']:.2f}x | {rows[name]['reading_results_median_s']:.3f} | {diff:.2e} |")
    print(cpu_line())
    print("\nstats (pycocotools):", np.round(stats["pycocotools"], 4).tolist())
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"images": args.images, "dets_per_image": args.dets, "repeats": args.repeats,
                       "num_detections": len(results), "num_gts": len(dataset["annotations"]),
                       "iadet_index_s": index_s, "machine": cpu_info(),
                       "backends": rows}, f, indent=2)
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
