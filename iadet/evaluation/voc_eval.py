"""Classic PASCAL VOC detection metrics (VOC07 11-point and VOC2010+ "area" AP).

Semantics are those of the official VOC devkit as ported to Python by py-faster-rcnn's
``voc_eval.py`` (also followed by Detectron2's ``PascalVOCDetectionEvaluator`` and
MMDetection's ``eval_map``):

* per class, the detections of all images are sorted by score, descending (ties keep
  the input order: a stable sort, where the devkit's order for ties is unspecified);
* each detection is compared with the ground-truth boxes of *its class* in *its image*
  and takes the one of largest IoU (the first one on ties), whether or not that box is
  already matched;
* if that IoU is strictly greater than ``iou_thr`` (devkit: ``ovmax > ovthresh``): a
  difficult box makes the detection ignored (neither TP nor FP, but it stays in the
  ranking, so it repeats the precision of its predecessor); an unmatched box makes it a
  TP and marks the box matched; an already matched box makes it an FP (duplicate).
  Otherwise (IoU <= ``iou_thr``, or no box of that class in the image) it is an FP;
* ``npos`` = number of non-difficult ground-truth boxes of the class; recall =
  cumsum(tp) / npos, precision = cumsum(tp) / max(cumsum(tp) + cumsum(fp), eps).

VOC07 11-point AP is the mean over t = 0, 0.1, ..., 1 of the largest precision at recall
>= t (0 if none). The thresholds are ``np.arange(0.0, 1.1, 0.1)`` exactly as in the
Python ports, so 0.3, 0.6 and 0.7 are really 0.30000000000000004, 0.6000000000000001 and
0.7000000000000001: a recall of exactly 3/10 does not reach "0.3". VOC2010+ AP is the area
under the precision envelope (sentinels appended, precision made monotone from the right,
summed over the recall steps).

IoU convention. The devkit's coordinates are 1-based inclusive pixel indices and its
widths are ``xmax - xmin + 1``. iadet's boxes are continuous: ``x1 = xmin - 1``,
``x2 = xmax`` (see :mod:`iadet.data.voc`), so ``x2 - x1`` is the devkit's width and the
intersection ``min(x2) - max(x1)`` equals the devkit's ``min(xmax) - max(xmin) + 1``. Plain
continuous IoU with no "+1" is therefore *identical* to the devkit's IoU on the original
coordinates; :func:`pairwise_iou` computes it.

Inputs: the ground truth is a COCO-format dict (``images``, ``annotations`` with
``bbox`` = [x, y, w, h] and ``iscrowd`` = 1 for difficult objects, ``categories``), e.g.
``VOCDetection.to_coco_dict()``, or a ``pycocotools.coco.COCO``; the detections are COCO
results ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` (other keys ignored).
"""
from typing import Dict, List, Sequence

import numpy as np

__all__ = ["voc_ap", "pairwise_iou", "evaluate_voc", "format_voc"]

# the Python devkit ports' 11 recall thresholds, floating-point error included (module doc)
VOC07_RECALL_THRESHOLDS = np.arange(0.0, 1.1, 0.1)


def voc_ap(recall, precision, use_07_metric: bool) -> float:
    """Average precision (a fraction in [0, 1]) of one class from its recall/precision curve.

    ``recall`` and ``precision`` are the cumulative curves over the ranked detections
    (same length, recall non-decreasing). ``use_07_metric``: VOC07 11-point interpolation;
    otherwise the VOC2010+ area under the precision envelope. Empty curves give 0.
    """
    rec = np.asarray(recall, dtype=np.float64).ravel()
    prec = np.asarray(precision, dtype=np.float64).ravel()
    if rec.shape != prec.shape:
        raise ValueError(f"recall and precision differ in length: {rec.size} vs {prec.size}")
    if use_07_metric:
        ap = 0.0
        for t in VOC07_RECALL_THRESHOLDS:
            reached = rec >= t
            ap += (prec[reached].max() if reached.any() else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope, from the right
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def pairwise_iou(boxes1, boxes2) -> np.ndarray:
    """IoU of (N, 4) and (M, 4) continuous xyxy boxes -> (N, M) float64, no "+1".

    Equal to the devkit's "+1" IoU on the VOC 1-based inclusive coordinates (module doc).
    A pair whose union is empty (two degenerate boxes) has IoU 0.
    """
    a = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def _xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _ground_truth(gt) -> Dict[str, list]:
    dataset = gt.dataset if hasattr(gt, "dataset") else gt
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise ValueError(f"ground truth has no {key!r}: expected a COCO-format dict or a pycocotools COCO")
    return dataset


def _match_detections(gt_boxes, gt_cats, gt_img, det_boxes, det_cats, det_img):
    """Best same-class gt of each detection in its image -> (max IoU, gt row or -1).

    Vectorised per image: one IoU matrix between the image's detections and gt boxes,
    other-class pairs masked to -1 so they never win. Detections with no gt of their class
    in their image get IoU -inf (devkit: ``ovmax = -inf``) and gt row -1.
    """
    ovmax = np.full(len(det_boxes), -np.inf)
    jmax = np.full(len(det_boxes), -1, dtype=np.int64)
    if len(det_boxes) == 0 or len(gt_boxes) == 0:
        return ovmax, jmax
    gt_order = np.argsort(gt_img, kind="stable")  # annotation order kept within an image
    gt_sorted_img = gt_img[gt_order]
    det_order = np.argsort(det_img, kind="stable")
    det_sorted_img = det_img[det_order]
    images, det_starts = np.unique(det_sorted_img, return_index=True)
    det_ends = np.append(det_starts[1:], len(det_order))
    gt_starts = np.searchsorted(gt_sorted_img, images, side="left")
    gt_ends = np.searchsorted(gt_sorted_img, images, side="right")
    for d0, d1, g0, g1 in zip(det_starts, det_ends, gt_starts, gt_ends):
        if g0 == g1:
            continue
        dets, gts = det_order[d0:d1], gt_order[g0:g1]
        iou = pairwise_iou(det_boxes[dets], gt_boxes[gts])
        same = det_cats[dets][:, None] == gt_cats[gts][None, :]
        iou = np.where(same, iou, -1.0)
        best = iou.argmax(axis=1)
        best_iou = iou[np.arange(len(dets)), best]
        has = best_iou >= 0  # some gt of the class exists in the image
        ovmax[dets[has]] = best_iou[has]
        jmax[dets[has]] = gts[best[has]]
    return ovmax, jmax


def _class_tp_fp(scores, ovmax, jmax, gt_difficult, iou_thr):
    """tp, fp (float arrays in descending-score order) of one class's detections."""
    order = np.argsort(-scores, kind="stable")
    ovmax, jmax = ovmax[order], jmax[order]
    hit = ovmax > iou_thr  # strict, as the devkit
    difficult = np.zeros(len(order), dtype=bool)
    difficult[hit] = gt_difficult[jmax[hit]]
    claim = hit & ~difficult
    tp = np.zeros(len(order))
    # the first (highest-scoring) claim of each gt box is the TP, later ones are duplicates
    _, first = np.unique(jmax[claim], return_index=True)
    tp[np.flatnonzero(claim)[first]] = 1.0
    fp = np.where(difficult, 0.0, 1.0) - tp
    return tp, fp


def evaluate_voc(gt, results: Sequence[dict], iou_thr: float = 0.5, use_07_metric: bool = True) -> dict:
    """PASCAL VOC AP per class and mAP, in percent (2 decimals).

    Args:
        gt: COCO-format ground truth dict (difficult objects ``iscrowd=1``) or a
            ``pycocotools.coco.COCO``.
        results: COCO result dicts; an ``image_id`` or ``category_id`` the ground truth
            does not list raises ``ValueError`` (as ``COCO.loadRes`` refuses them).
        iou_thr: a detection needs IoU > ``iou_thr`` (strictly) to match.
        use_07_metric: VOC07 11-point AP (default, the VOC2007 test protocol) or the
            VOC2010+ area AP.

    Returns:
        ``{"mAP", "metric", "iou_thr", "per_class": [{"category_id", "name", "AP",
        "num_gt", "num_det"}]}``, ``per_class`` in the order of ``gt["categories"]``.
        ``num_gt`` counts non-difficult boxes. A class without any is reported with AP -1.0
        and left out of the mean; a class with boxes but no detections has AP 0. ``mAP`` is
        the mean of the unrounded APs, then rounded (0.0 when no class has ground truth).
    """
    dataset = _ground_truth(gt)
    categories = list(dataset["categories"])
    cat_ids = np.array([c["id"] for c in categories], dtype=np.int64)
    image_ids = {img["id"] for img in dataset["images"]}
    anns = dataset["annotations"]

    gt_boxes = _xywh_to_xyxy([a["bbox"] for a in anns])
    gt_cats = np.array([a["category_id"] for a in anns], dtype=np.int64)
    gt_img = np.array([a["image_id"] for a in anns], dtype=np.int64)
    gt_difficult = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)

    det_boxes = _xywh_to_xyxy([r["bbox"] for r in results])
    det_cats = np.array([r["category_id"] for r in results], dtype=np.int64)
    det_img = np.array([r["image_id"] for r in results], dtype=np.int64)
    det_scores = np.array([r["score"] for r in results], dtype=np.float64)
    unknown_images = set(det_img.tolist()) - image_ids
    if unknown_images:
        raise ValueError(f"results refer to images not in the ground truth: {sorted(unknown_images)[:10]}")
    unknown_cats = set(det_cats.tolist()) - set(cat_ids.tolist())
    if unknown_cats:
        raise ValueError(f"results refer to categories not in the ground truth: {sorted(unknown_cats)}")

    ovmax, jmax = _match_detections(gt_boxes, gt_cats, gt_img, det_boxes, det_cats, det_img)
    per_class, aps = [], []
    for cat in categories:
        cid = cat["id"]
        npos = int(np.sum((gt_cats == cid) & ~gt_difficult))
        mine = det_cats == cid
        if npos == 0:
            ap = -1.0
        else:
            tp, fp = _class_tp_fp(det_scores[mine], ovmax[mine], jmax[mine], gt_difficult, iou_thr)
            tp, fp = np.cumsum(tp), np.cumsum(fp)
            recall = tp / float(npos)
            precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
            ap = voc_ap(recall, precision, use_07_metric)
            aps.append(ap)
        per_class.append({"category_id": cid, "name": cat.get("name", str(cid)),
                          "AP": round(100.0 * ap, 2) if ap >= 0 else -1.0,
                          "num_gt": npos, "num_det": int(mine.sum())})
    mean = float(np.mean(aps)) if aps else 0.0
    return {"mAP": round(100.0 * mean, 2), "metric": "VOC07 11-point" if use_07_metric else "VOC area",
            "iou_thr": float(iou_thr), "per_class": per_class}


def format_voc(metrics: dict) -> str:
    """A Markdown table of :func:`evaluate_voc`'s result: one row per class, then mAP."""
    head = f"{metrics.get('metric', 'VOC')} AP at IoU > {metrics.get('iou_thr', 0.5)}"
    lines: List[str] = [head, "", "| class | #gt | AP |", "| --- | ---: | ---: |"]
    for row in metrics["per_class"]:
        ap = "n/a" if row["AP"] < 0 else f"{row['AP']:.2f}"
        lines.append(f"| {row['name']} | {row['num_gt']} | {ap} |")
    lines.append(f"| **mAP** | | **{metrics['mAP']:.2f}** |")
    return "\n".join(lines)
