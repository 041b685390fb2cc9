"""Evaluate a detector, or a results file: COCO/VOC metrics, α sweeps, the IoU_truth upper bound.

Model evaluation (runs inference on the config's split; sharded under torchrun)::

    python -m iadet.eval --config CFG --checkpoint CKPT [--split val|test] [--out DIR]
        [--alphas none,1.0,0.9,...,0.3] [--iou-source predicted|truth|both] [--plots DIR]

Offline evaluation of a COCO results file::

    python -m iadet.eval --ann GT.json --results RES.json [--json-out M.json]

Writes (model mode, in ``--out``, default ``work_dirs/<config name>/eval_<split>``):
``results.json`` (COCO results at the configured α: category ids, ``[x, y, w, h]``, ready
for a test-dev submission), ``metrics.json``, and with a sweep ``alpha_sweep.md`` /
``alpha_sweep.json``. A split without annotations (test-dev) writes the results only.
"""
import argparse
import json
import sys
import time
from pathlib import Path


from iadet.config import ConfigError, load_config

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m iadet.eval", description=__doc__.splitlines()[0])
    model = p.add_argument_group("model evaluation")
    model.add_argument("--config", help="YAML config of the model and dataset")
    model.add_argument("--checkpoint", help="weights: an iadet checkpoint or a converted file")
    model.add_argument("--opts", nargs="*", default=[], help="config overrides key=value")
    model.add_argument("--split", default="val", choices=("val", "test"), help="data.val or data.test")
    model.add_argument("--out", default=None, help="output folder (default work_dirs/<config name>/eval_<split>)")
    model.add_argument("--alphas", default=None,
                       help="α sweep, e.g. 'none,1.0,0.9,0.8,0.7,0.6,0.5,0.4,0.3' (default: the config's α)")
    model.add_argument("--iou-source", default="predicted", choices=("predicted", "truth", "both"),
                       help="IoU in Eq. 7: the predicted IoU, IoU_truth (upper bound, Table 6), or both")
    model.add_argument("--plots", default=None, help="folder for Fig. 4, calibration and sweep plots")
    model.add_argument("--batch-size", type=int, default=4)
    model.add_argument("--num-workers", type=int, default=None, help="default: data.num_workers")
    model.add_argument("--amp", default=None, choices=("off", "bf16", "fp16"),
                       help="autocast dtype for the network (default: the config's model.test.amp)")
    model.add_argument("--device", default="auto", help="auto | cpu | cuda")
    model.add_argument("--no-progress", action="store_true")
    offline = p.add_argument_group("offline evaluation of a results file")
    offline.add_argument("--ann", help="COCO-format ground-truth JSON")
    offline.add_argument("--results", help="COCO results JSON (list of {image_id, category_id, bbox, score})")
    offline.add_argument("--json-out", default=None, help="write the metrics JSON here")
    p.add_argument("--backend", default="pycocotools", choices=("pycocotools", "fast"),
                   help="COCO evaluator for the reported metrics (sweep rows use --sweep-backend)")
    p.add_argument("--sweep-backend", default="fast", choices=("pycocotools", "fast"),
                   help="COCO evaluator for the α-sweep rows (iadet's is equal and much faster)")
    args = p.parse_args(argv)
    if bool(args.ann) != bool(args.results):
        p.error("offline evaluation needs both --ann and --results")
    if not args.ann and not args.config:
        p.error("give --config (and --checkpoint) to evaluate a model, or --ann and --results")
    return args


def print_metrics(metrics, title):
    from iadet.evaluation.metrics import format_metrics, format_per_class

    print(f"\n{title}")
    print(format_metrics(metrics))
    if metrics.get("per_class"):
        print("\nper class:")
        print(format_per_class(metrics))


def evaluate_file(args) -> dict:
    """``--ann`` + ``--results``: metrics of a results file."""
    from iadet.data.coco import load_coco_index
    from iadet.evaluation.metrics import check_coco_results, evaluate_coco

    results_path = Path(args.results)
    if not results_path.is_file():
        raise FileNotFoundError(f"--results file not found: {results_path}")
    try:
        results = json.loads(results_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{results_path}: not valid JSON ({exc})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{results_path}: not a text (JSON) file") from None
    gt = load_coco_index(args.ann)
    check_coco_results(results, gt, results_path)  # one line naming the entry and the key
    metrics = evaluate_coco(gt, results, backend=args.backend)
    print_metrics(metrics, f"{results_path} ({len(results)} detections) against {args.ann}, {args.backend}:")
    if args.json_out:
        from iadet.io import atomic_write_text
        atomic_write_text(json.dumps(metrics, indent=2), Path(args.json_out))
        print(f"metrics written to {args.json_out}")
    return metrics


def evaluate_model(args) -> dict:
    """``--config`` + ``--checkpoint``: inference, metrics, sweeps and plots."""
    import iadet
    from iadet.builder import build_dataset, inference_amp_dtype, prepare_for_inference
    from iadet.checkpoint import load_detector_weights
    from iadet.data.voc import VOCDetection
    from iadet.distributed import init_distributed
    from iadet.evaluation.analysis import confidence_analysis, format_sweep, sweep_table, write_sweep
    from iadet.evaluation.metrics import evaluate_coco
    from iadet.evaluation.predict import alpha_name, coco_ground_truth, parse_alphas, predict_alphas
    from iadet.io import atomic_write_text

    cfg = load_config(args.config, args.opts)
    alphas = parse_alphas(args.alphas) if args.alphas else [cfg.model.test.alpha]
    sources = ["predicted", "truth"] if args.iou_source == "both" else [args.iou_source]
    dist = init_distributed(args.device)
    dataset = build_dataset(cfg, args.split, train_transforms=False)
    model = iadet.build_detector(cfg)
    if args.checkpoint:
        load_detector_weights(model, args.checkpoint)
    elif dist.is_main:
        print("warning: no --checkpoint: evaluating RANDOM weights", file=sys.stderr)
    if "predicted" in sources and not model.head.has_iou_branch and alphas != [cfg.model.test.alpha]:
        print("note: the model has no IoU branch: every α gives S = p", file=sys.stderr)
    model.to(dist.device)
    prepare_for_inference(model, cfg)  # model.test.fuse_bn / channels_last
    start = time.time()
    detections = predict_alphas(
        model, dataset, alphas, sources, batch_size=args.batch_size,
        num_workers=cfg.data.num_workers if args.num_workers is None else args.num_workers,
        device=dist.device, distributed=(dist.rank, dist.world_size) if dist.distributed else None,
        progress=not args.no_progress, amp_dtype=inference_amp_dtype(cfg, args.amp))
    if not dist.is_main:
        return {}
    out_dir = Path(args.out or Path("work_dirs") / Path(args.config).stem / f"eval_{args.split}")
    out_dir.mkdir(parents=True, exist_ok=True)
    primary_key = (sources[0], alphas[0] if cfg.model.test.alpha not in alphas else cfg.model.test.alpha)
    primary = detections[primary_key]
    results_path = out_dir / "results.json"
    atomic_write_text(json.dumps(primary.to_coco_results(extra=False)), results_path)
    print(f"\n{len(dataset)} images in {time.time() - start:.1f} s; {len(primary)} detections at "
          f"α={alpha_name(primary_key[1])} ({primary_key[0]} IoU) written to {results_path}")
    gt = coco_ground_truth(dataset)
    if not gt.dataset.get("annotations"):
        print(f"the {args.split} split has no annotations (test-dev?): no metrics; submit {results_path} "
              "to the evaluation server")
        return {}
    report = {"config": args.config, "checkpoint": args.checkpoint, "split": args.split,
              "backend": args.backend, "iou_source": primary_key[0], "alpha": alpha_name(primary_key[1]),
              "num_images": len(dataset), "num_detections": len(primary)}
    metrics = evaluate_coco(gt, primary.to_coco_results(extra=False), backend=args.backend)
    report.update(metrics)
    print_metrics(metrics, f"COCO box metrics ({args.backend}), α={report['alpha']}:")
    if isinstance(dataset, VOCDetection):  # Table 5 reports COCO-style AP; the classic mAP@0.5 too
        from iadet.evaluation.voc_eval import evaluate_voc, format_voc
        for name, use_07 in (("voc07_11point", True), ("voc_area", False)):
            report[name] = evaluate_voc(gt.dataset, primary.to_coco_results(extra=False), use_07_metric=use_07)
            print(f"\nVOC mAP@0.5 ({name}):\n{format_voc(report[name])}")
    if len(detections) > 1 or args.plots:
        from iadet.evaluation.fast_coco import CocoBoxEvaluator
        indexed = CocoBoxEvaluator(gt)  # the ground truth indexed once for every row
        rows = sweep_table(detections, lambda res: evaluate_coco(indexed, res, backend=args.sweep_backend))
        report["alpha_sweep"] = rows
        if len(detections) > 1:
            header = (f"α sweep of `{args.config}` ({args.checkpoint}) on the {args.split} split, "
                      f"{len(dataset)} images, evaluator: {args.sweep_backend}")
            md, _ = write_sweep(rows, out_dir, header)
            print(f"\n{header}\n\n{format_sweep(rows)}\nwritten to {md}")
        report["analysis"] = confidence_analysis(gt, detections, rows, Path(args.plots) if args.plots else None)
        for c in report["analysis"]["confidence_vs_iou_eval"]:
            pearson, spearman = (("n/a" if v is None else f"{v:.3f}") for v in (c["pearson"], c["spearman"]))
            print(f"{c['panel']}: Pearson {pearson}, Spearman {spearman} (n={c['n']})")
        if args.plots:
            print(f"plots written to {args.plots}")
    atomic_write_text(json.dumps(report, indent=2), out_dir / "metrics.json")
    print(f"metrics written to {out_dir / 'metrics.json'}")
    return report


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from iadet.data.loading import error_message
    from iadet.distributed import cleanup
    try:
        return evaluate_file(args) if args.ann else evaluate_model(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {error_message(exc)}", file=sys.stderr)  # one line, also from a loader worker
        sys.exit(2)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
