"""Run a detector on images: ``python -m iadet.infer --config CFG --checkpoint CKPT --input IMG_OR_DIR --out DIR``.

Writes ``DIR/detections.json`` (a list of ``{"file", "boxes" [[x1, y1, x2, y2], ...] in
original image pixels, "scores", "labels" (contiguous class index), "ious" (predicted IoU,
with the IoU branch)}``) and a copy of each image with its boxes drawn.
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
from iadet.visualize import draw_detections


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
    p.add_argument("--opts", nargs="*", default=[], help="config overrides key=value")
    return p.parse_args(argv)


def run(args) -> list:
    cfg = iadet.load_config(args.config, args.opts)
    model = iadet.build_detector(cfg)
    class_names = None
    if args.checkpoint:
        meta = load_detector_weights(model, args.checkpoint)
        class_names = meta.get("class_names")
    else:
        warnings.warn("no --checkpoint given: the detector has RANDOM weights; its boxes mean nothing")
    model.class_names = class_names
    model.to(args.device)
    prepare_for_inference(model, cfg)  # model.test.fuse_bn / channels_last
    amp_dtype = inference_amp_dtype(cfg, args.amp)
    files = list_images(args.input)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
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
            from torchvision.io import write_jpeg
            drawn = draw_detections(image, det, class_names)
            write_jpeg(drawn, str(out_dir / f"{path.stem}.jpg"), quality=90)
    atomic_write_text(json.dumps(records), out_dir / "detections.json")
    print(f"{len(files)} images, {sum(len(r['scores']) for r in records)} detections "
          f"-> {out_dir / 'detections.json'}")
    return records


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
