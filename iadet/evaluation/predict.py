"""Run a detector over a dataset once and keep its detections for one or many α.

One network pass per batch; the post-processing (Eq. 7 scoring, top-k, NMS) then runs once
for every requested α and for every source of the IoU in Eq. 7:

- ``"predicted"``: the IoU branch's prediction (the paper's Tables 3 and 4);
- ``"truth"``: IoU_truth, the largest IoU of the decoded box with *any* ground-truth box of
  the image, ignoring class (the upper bound of Table 6; SPEC §3).

So the detections for one α are exactly what a plain evaluation at that α gives (the same
post-processor, on the same head outputs), and a sweep costs one forward pass, not one per α.

Detections are kept as numpy arrays (:class:`Detections`), in original image pixels, and
turned into COCO result dicts only when evaluated or written.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from iadet.data.loading import build_dataloader
from iadet.distributed import all_gather_objects
from iadet.ops.boxes import box_iou, clip_boxes

Alpha = Optional[Union[float, str]]  # a number in [0, 1], None (S = p * IoU) or "default"
IOU_SOURCES = ("predicted", "truth")


def parse_alphas(text: str) -> List[Optional[float]]:
    """``"none,1.0,0.9"`` -> ``[None, 1.0, 0.9]`` (α values for a sweep), checked."""
    alphas = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if item.lower() == "none":
            alphas.append(None)
            continue
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"--alphas: {item!r} is neither a number in [0, 1] nor 'none'") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"--alphas: {value} is outside [0, 1]")
        alphas.append(value)
    if not alphas:
        raise ValueError("--alphas: give at least one value, e.g. 'none,1.0,0.5'")
    return list(dict.fromkeys(alphas))  # drop repeats, keep order


def alpha_name(alpha: Optional[float]) -> str:
    """How an α is printed and keyed: ``"none"`` or ``"0.5"``."""
    return "none" if alpha is None else f"{alpha:g}"


@dataclass
class Detections:
    """Detections of a dataset as parallel arrays (K = number of detections).

    ``bbox`` is COCO ``[x, y, w, h]`` in original image pixels; ``score`` the reported
    confidence S; ``cls_score`` the class probability p; ``iou`` the IoU used in Eq. 7
    (predicted or IoU_truth; NaN without one).
    """

    image_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    category_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    bbox: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    score: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    cls_score: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    iou: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.score)

    @staticmethod
    def concat(parts: Sequence["Detections"]) -> "Detections":
        if not parts:
            return Detections()
        return Detections(*(np.concatenate([getattr(p, name) for p in parts])
                            for name in ("image_id", "category_id", "bbox", "score", "cls_score", "iou")))

    def to_coco_results(self, extra: bool = True) -> List[Dict]:
        """COCO result dicts (``image_id, category_id, bbox, score``; with ``extra`` also
        ``cls_score`` and ``iou``), rounded to 1/1000 px and 5 decimals like the authors'."""
        bbox = np.round(self.bbox.astype(np.float64), 3).tolist()
        score = np.round(self.score.astype(np.float64), 5).tolist()
        results = [{"image_id": i, "category_id": c, "bbox": b, "score": s}
                   for i, c, b, s in zip(self.image_id.tolist(), self.category_id.tolist(), bbox, score)]
        if extra:
            for r, p, q in zip(results, np.round(self.cls_score.astype(np.float64), 5).tolist(),
                               np.round(self.iou.astype(np.float64), 5).tolist()):
                r["cls_score"] = p
                if q == q:  # not NaN
                    r["iou"] = q
        return results


def iou_truth_per_anchor(head_out: Dict[str, Tensor], box_coder, image_sizes, gt_boxes: Sequence[Tensor]) -> Tensor:
    """(N, M) IoU_truth of every anchor's decoded, clipped box: the largest IoU with any
    ground-truth box of its image, class-agnostic; 0 for an image without ground truth.

    ``gt_boxes``: per image (G, 4) xyxy in the same (resized input) pixels as the boxes.
    """
    anchors = head_out["anchors"]
    boxes = box_coder.decode(head_out["bbox_deltas"].float(), anchors.float())
    sizes = torch.as_tensor(image_sizes, dtype=boxes.dtype, device=boxes.device).reshape(-1, 2)
    boxes = clip_boxes(boxes, sizes[:, None, 0], sizes[:, None, 1])
    truth = boxes.new_zeros(boxes.shape[:2])
    for i, gt in enumerate(gt_boxes):  # one (M, G) IoU matrix per image
        if len(gt):
            truth[i] = box_iou(boxes[i], gt.to(boxes)).amax(1)
    return truth


def _to_detections(dets, targets, dataset) -> Detections:
    parts = []
    label_to_cat = np.asarray(dataset.label_to_cat_id, dtype=np.int64)
    for det, target in zip(dets, targets):
        sy, sx = target["scale_factor"]
        boxes = det["boxes"].float().cpu() / torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).numpy()
        k = len(xywh)
        iou = det["ious"].float().cpu().numpy() if "ious" in det else np.full(k, np.nan, np.float32)
        parts.append(Detections(np.full(k, int(target["image_id"]), np.int64),
                                label_to_cat[det["labels"].cpu().numpy()], xywh,
                                det["scores"].float().cpu().numpy(), det["cls_scores"].float().cpu().numpy(), iou))
    return Detections.concat(parts)


@torch.no_grad()
def predict_alphas(model, dataset, alphas: Sequence[Alpha] = ("default",),
                   iou_sources: Sequence[str] = ("predicted",), batch_size: int = 4, num_workers: int = 0,
                   device=None, distributed: Optional[Tuple[int, int]] = None, progress: bool = True,
                   amp_dtype: Optional[torch.dtype] = None) -> Dict[Tuple[str, Alpha], Detections]:
    """Detections of every image of ``dataset`` for every (IoU source, α).

    Returns ``{(source, alpha): Detections}`` with ``alpha`` as given (``"default"`` = the
    model's configured α). Under torchrun each rank runs its shard of the images and the
    result is gathered on every rank.
    """
    for source in iou_sources:
        if source not in IOU_SOURCES:
            raise ValueError(f"iou source must be one of {IOU_SOURCES}, got {source!r}")
    net = model.module if hasattr(model, "module") else model
    was_training = net.training
    net.eval()
    device = device or next(net.parameters()).device
    loader = build_dataloader(dataset, batch_size, num_workers=num_workers, shuffle=False,
                              aspect_ratio_grouping=False, distributed=distributed)
    keys = [(source, alpha) for source in iou_sources for alpha in alphas]
    parts = {key: [] for key in keys}
    rank = distributed[0] if distributed else 0
    for batch in tqdm(loader, desc="eval", unit="batch", disable=not progress or rank != 0, leave=False):
        images = batch["images"].to(device, non_blocking=True)
        sizes = batch["image_sizes"]
        out = net.forward_float32(images, amp_dtype)
        for source in iou_sources:
            iou_prob = None
            if source == "truth":
                gt = [t["boxes"].to(device) for t in batch["targets"]]
                iou_prob = iou_truth_per_anchor(out, net.box_coder, sizes, gt)
            for alpha in alphas:
                dets = net.postprocessor(out, out["anchors"], sizes, alpha=alpha, iou_prob=iou_prob)
                parts[(source, alpha)].append(_to_detections(dets, batch["targets"], dataset))
    net.train(was_training)
    local = {key: Detections.concat(p) for key, p in parts.items()}
    if distributed is None:
        return local
    gathered = all_gather_objects(local)
    return {key: Detections.concat([g[key] for g in gathered]) for key in keys}


def predict_dataset(model, dataset, batch_size: int = 4, num_workers: int = 0, device=None,
                    distributed: Optional[Tuple[int, int]] = None, progress: bool = True,
                    amp_dtype: Optional[torch.dtype] = None, alpha: Alpha = "default") -> List[Dict]:
    """COCO result dicts (with ``cls_score`` and ``iou``) at one α: see :func:`predict_alphas`."""
    dets = predict_alphas(model, dataset, [alpha], ["predicted"], batch_size, num_workers, device,
                          distributed, progress, amp_dtype)
    return dets[("predicted", alpha)].to_coco_results()


def coco_ground_truth(dataset):
    """The pycocotools ``COCO`` index of a dataset's ground truth (COCO or VOC reader)."""
    if hasattr(dataset, "coco"):
        return dataset.coco
    import contextlib
    import io

    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = dataset.to_coco_dict()
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt
