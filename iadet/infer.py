"""Run a detector on images: ``python -m iadet.infer --config CFG --checkpoint CKPT --input IMG_OR_DIR --out DIR``.

Writes ``DIR/detections.json`` (a list of ``{"file", "boxes" [[x1, y1, x2, y2], ...] in
original image pixels, "scores", "labels" (contiguous class index), "ious" (predicted IoU,
with the IoU branch)}``) and a drawing of each image with its boxes (small images upscaled,
see :mod:`iadet.visualize`); with ``--ann COCO.json`` the drawing puts the image's ground
truth beside the predictions.
"""
import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

import iadet
from iadet.builder import inference_amp_dtype, prepare_for_inference
from iadet.checkpoint import load_detector_weights
from iadet.io import atomic_write_text, list_images, read_image_rgb
from iadet.visualize import draw_detections, save_image


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m iadet.infer", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="YAML config of the model")
    p.add_argument("--checkpoint", default=None,
                   help="weights (iadet checkpoint or converted file); omit to run with random weights")
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--score-thr", type=float, default=None,
                   help="minimum confidence S to keep (default: the config's model.test.score_thr)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default=None, choices=("off", "bf16", "fp16"),
                   help="autocast dtype for the network (default: the config's model.test.amp)")
    p.add_argument("--no-draw", action="store_true", help="do not write images with boxes drawn")
    p.add_argument("--ann", default=None,
                   help="COCO-format annotations of the input images (matched by file name): their ground "
                        "truth is drawn beside the predictions")
    p.add_argument("--draw-size", type=int, default=512,
                   help="upscale drawings so that their long side is at least this many pixels (default 512)")
    p.add_argument("--format", default="jpg", choices=("jpg", "png"), help="file format of the drawings")
    p.add_argument("--opts", nargs="*", default=[], help="config overrides key=value")
    return p.parse_args(argv)


def run(args) -> list:
    cfg = iadet.load_config(args.config, args.opts)
    model = iadet.build_detector(cfg)
    class_names, label_to_cat_id = None, None
    if args.checkpoint:
        meta = load_detector_weights(model, args.checkpoint)
        class_names, label_to_cat_id = meta.get("class_names"), meta.get("label_to_cat_id")
    else:
        warnings.warn("no --checkpoint given: the detector has RANDOM weights; its boxes mean nothing")
    model.class_names = class_names
    model.to(args.device)
    prepare_for_inference(model, cfg)  # model.test.fuse_bn / channels_last
    amp_dtype = inference_amp_dtype(cfg, args.amp)
    files = list_images(args.input)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ground_truth = None
    if args.ann and not args.no_draw:
        ground_truth, gt_names = load_ground_truth(args.ann, label_to_cat_id, class_names)
        class_names = class_names or gt_names
    missing_gt = 0
    records = []
    for path in tqdm(files, desc="infer", unit="img", disable=not sys.stderr.isatty() and len(files) < 2):
        image = read_image_rgb(path)
        det = model.predict(image.to(args.device), score_thr=args.score_thr, amp_dtype=amp_dtype)[0]
        det = {k: v.cpu() for k, v in det.items()}
        record = {"file": str(path), "boxes": det["boxes"].tolist(), "scores": det["scores"].tolist(),
                  "labels": det["labels"].tolist()}
        if "ious" in det:
            record["ious"] = det["ious"].tolist()
        records.append(record)
        if not args.no_draw:
            gt = None
            if ground_truth is not None:
                gt = ground_truth.get(path.name)
                missing_gt += gt is None
            drawn = draw_detections(image, det, class_names, ground_truth=gt, min_size=args.draw_size,
                                    score_thr=args.score_thr if args.score_thr is not None else cfg.model.test.score_thr)
            save_image(drawn, out_dir / f"{path.stem}.{args.format}")
    if missing_gt:
        warnings.warn(f"{missing_gt} of {len(files)} images are not in {args.ann}: drawn without ground truth")
    atomic_write_text(json.dumps(records), out_dir / "detections.json")
    print(f"{len(files)} images, {sum(len(r['scores']) for r in records)} detections "
          f"-> {out_dir / 'detections.json'}")
    return records


def load_ground_truth(ann_file, label_to_cat_id=None, class_names=None):
    """``({file name: {"boxes" (G, 4) xyxy, "labels" (G,), "ignore_boxes"}}, class names by
    label)`` from a COCO JSON.

    Category ids become labels through the checkpoint's ``label_to_cat_id``, else by class
    name, else in sorted id order (the default of :class:`iadet.data.coco.CocoDetection`);
    crowd annotations become ignore boxes."""
    from iadet.data.coco import load_coco_index

    coco = load_coco_index(Path(ann_file))
    cats = coco.cats
    if label_to_cat_id:
        cat_to_label = {int(c): i for i, c in enumerate(label_to_cat_id)}
    elif class_names and all(any(c["name"] == n for c in cats.values()) for n in class_names):
        by_name = {c["name"]: cid for cid, c in cats.items()}
        cat_to_label = {by_name[n]: i for i, n in enumerate(class_names)}
    else:
        cat_to_label = {cid: i for i, cid in enumerate(sorted(cats))}
    out = {}
    for image_id, info in coco.imgs.items():
        boxes, labels, ignore = [], [], []
        for ann in coco.imgToAnns.get(image_id, []):
            x, y, w, h = (float(v) for v in ann.get("bbox", (0, 0, 0, 0)))
            if ann.get("iscrowd", 0):
                ignore.append([x, y, x + w, y + h])
            elif ann["category_id"] in cat_to_label:
                boxes.append([x, y, x + w, y + h])
                labels.append(cat_to_label[ann["category_id"]])
        out[Path(str(info.get("file_name", image_id))).name] = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "ignore_boxes": torch.tensor(ignore, dtype=torch.float32).reshape(-1, 4)}
    names = [cats[cid].get("name", str(cid)) for cid, _ in sorted(cat_to_label.items(), key=lambda kv: kv[1])]
    return out, names


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
