"""Run a detector over a dataset and score it with pycocotools (COCO box AP).

Metrics are returned in percent, named as the paper prints them:
``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl``.
"""
import contextlib
import io
from typing import Dict, List, Optional, Tuple

import torch
from tqdm import tqdm

from iadet.data.loading import build_dataloader
from iadet.engine.distributed import all_gather_objects

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@torch.no_grad()
def predict_dataset(model, dataset, batch_size: int = 4, num_workers: int = 0, device=None,
                    distributed: Optional[Tuple[int, int]] = None, progress: bool = True,
                    amp_dtype: Optional[torch.dtype] = None) -> List[Dict]:
    """Detections for every image of ``dataset`` as COCO results.

    Returns (on every rank, gathered) a list of ``{"image_id", "category_id", "bbox"
    [x, y, w, h] in original image pixels, "score"}`` plus ``"iou"`` (predicted IoU) when the
    model has the IoU branch. Under torchrun each rank runs its shard of the images.
    """
    net = model.module if hasattr(model, "module") else model
    was_training = net.training
    net.eval()
    device = device or next(net.parameters()).device
    loader = build_dataloader(dataset, batch_size, num_workers=num_workers, shuffle=False,
                              aspect_ratio_grouping=False, distributed=distributed)
    results = []
    rank = distributed[0] if distributed else 0
    for batch in tqdm(loader, desc="eval", unit="batch", disable=not progress or rank != 0, leave=False):
        images = batch["images"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            dets = net.detect(images, batch["image_sizes"])
        for det, target in zip(dets, batch["targets"]):
            sy, sx = target["scale_factor"]
            boxes = det["boxes"].float().cpu() / torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
            xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
            scores = det["scores"].float().cpu().tolist()
            labels = det["labels"].cpu().tolist()
            ious = det["ious"].float().cpu().tolist() if "ious" in det else None
            for k in range(len(scores)):
                r = {"image_id": int(target["image_id"]), "category_id": int(dataset.label_to_cat_id[labels[k]]),
                     "bbox": [round(v, 3) for v in xywh[k]], "score": round(scores[k], 5)}
                if ious is not None:
                    r["iou"] = round(ious[k], 5)
                results.append(r)
    net.train(was_training)
    return [r for part in all_gather_objects(results) for r in part]


def coco_ground_truth(dataset):
    """The pycocotools ``COCO`` index of a dataset's ground truth (COCO or VOC reader)."""
    if hasattr(dataset, "coco"):
        return dataset.coco
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = dataset.to_coco_dict()
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_metrics(coco_gt, results: List[Dict], verbose: bool = False) -> Dict[str, float]:
    """pycocotools box metrics (in percent) of ``results`` against ``coco_gt``.

    No detections at all gives zeros (pycocotools cannot load an empty result list).
    """
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {name: 0.0 for name in COCO_STAT_NAMES}
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        dt = coco_gt.loadRes([{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in results])
        ev = COCOeval(coco_gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        print(sink.getvalue().split("DONE", 2)[-1].strip())
    # pycocotools reports -1 where a size range has no ground truth; keep -1 rather than -100
    return {name: (round(float(v) * 100, 2) if v >= 0 else -1.0) for name, v in zip(COCO_STAT_NAMES, ev.stats)}


def format_metrics(metrics: Dict[str, float]) -> str:
    """A one-table string of the metrics."""
    names = [n for n in COCO_STAT_NAMES if n in metrics]
    head = " | ".join(f"{n:>6}" for n in names)
    vals = " | ".join(f"{metrics[n]:6.2f}" for n in names)
    return f"| {head} |\n| {vals} |"
