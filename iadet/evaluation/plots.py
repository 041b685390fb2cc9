"""The paper's Fig. 4 (detection confidence vs IoU_eval), an IoU calibration plot and the
α sweep of Tables 3/4, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Conventions:

* boxes are ``xyxy`` in absolute pixels, continuous (width = x2 - x1, no "+1"), numpy
  arrays or torch tensors; IoUs come from :func:`iadet.ops.boxes.box_iou` in float64;
* IoU_eval (Fig. 4) = per detection, the largest IoU with a ground-truth box of the *same*
  class in its image; IoU_truth (Table 6's upper bound, SPEC §3) = the largest IoU with
  *any* ground-truth box of the image, class ignored. Both are 0 when there is no such box;
* correlations are computed on finite (confidence, IoU) pairs only; a coefficient that is
  undefined (fewer than 2 points, or a constant input) is ``None`` so it serialises to JSON
  ``null``;
* every plot function writes one PNG (parent folders created; drawn to a temporary file
  next to ``out_path`` and renamed over it, so a reader never sees half a file), frees
  the figure and returns plain Python numbers for a metrics JSON.
"""
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from iadet.ops.boxes import box_iou

__all__ = ["iou_eval", "iou_truth", "results_iou_eval_truth", "iou_eval_truth_arrays", "correlations", "plot_confidence_vs_iou",
           "plot_iou_calibration", "plot_alpha_sweep"]

PathLike = Union[str, os.PathLike]
ALPHA_SWEEP_METRICS = ("AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90")


# --------------------------------------------------------------------------- IoU_eval / IoU_truth
def _boxes(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x.detach().cpu() if torch.is_tensor(x) else x, dtype=np.float64)).reshape(-1, 4)


def _labels(x) -> np.ndarray:
    return np.asarray(x.detach().cpu() if torch.is_tensor(x) else x).reshape(-1)


def _max_iou(det_boxes, gt_boxes, mask: Optional[np.ndarray] = None) -> np.ndarray:
    det, gt = _boxes(det_boxes), _boxes(gt_boxes)
    if len(det) == 0 or len(gt) == 0:
        return np.zeros(len(det))
    iou = torch.nan_to_num(box_iou(det, gt), nan=0.0).numpy()  # 0/0 of two empty boxes -> 0
    if mask is not None:
        iou = np.where(mask, iou, 0.0)
    return iou.max(axis=1)


def iou_eval(det_boxes, det_labels, gt_boxes, gt_labels) -> np.ndarray:
    """IoU_eval of one image's (N,) detections: largest IoU with a same-class gt, else 0."""
    det_labels, gt_labels = _labels(det_labels), _labels(gt_labels)
    return _max_iou(det_boxes, gt_boxes, det_labels[:, None] == gt_labels[None, :])


def iou_truth(det_boxes, gt_boxes) -> np.ndarray:
    """IoU_truth of one image's (N,) detections: largest IoU with any gt box, else 0."""
    return _max_iou(det_boxes, gt_boxes)


def results_iou_eval_truth(gt, results: Sequence[dict], include_crowd: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """IoU_eval and IoU_truth of COCO results against COCO-format ground truth.

    ``gt``: a COCO-format dict or ``pycocotools.coco.COCO``; ``results``: dicts with
    ``image_id``, ``category_id`` and ``bbox`` [x, y, w, h]. Crowd / difficult boxes
    (``iscrowd=1``) are left out unless ``include_crowd``. Returns two (len(results),)
    arrays in the order of ``results``.
    """
    return iou_eval_truth_arrays(gt, [r["image_id"] for r in results], [r["category_id"] for r in results],
                                 [r["bbox"] for r in results], include_crowd)


def iou_eval_truth_arrays(gt, image_ids, category_ids, bboxes, include_crowd: bool = False
                          ) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`results_iou_eval_truth` on parallel arrays: (K,) image ids, (K,) category ids,
    (K, 4) ``[x, y, w, h]`` boxes."""
    dataset = gt.dataset if hasattr(gt, "dataset") else gt
    by_image: Dict[int, List[dict]] = {}
    for ann in dataset["annotations"]:
        if include_crowd or not ann.get("iscrowd", 0):
            by_image.setdefault(ann["image_id"], []).append(ann)
    image_ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
    category_ids = np.asarray(category_ids, dtype=np.int64).reshape(-1)
    boxes = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)
    out_eval, out_truth = np.zeros(len(image_ids)), np.zeros(len(image_ids))

    def xyxy(xywh):
        b = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
        return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)

    order = np.argsort(image_ids, kind="stable")
    for idx in np.split(order, np.flatnonzero(np.diff(image_ids[order])) + 1):
        if not len(idx):
            continue
        anns = by_image.get(int(image_ids[idx[0]]), [])
        det, gtb = xyxy(boxes[idx]), xyxy([a["bbox"] for a in anns])
        out_eval[idx] = iou_eval(det, category_ids[idx], gtb, [a["category_id"] for a in anns])
        out_truth[idx] = iou_truth(det, gtb)
    return out_eval, out_truth


# --------------------------------------------------------------------------- correlations
def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # rank of the last member of each tie group
    return (upper - (counts - 1) / 2.0)[inverse]


def _pearson(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    if len(x) < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    if not denom > 0:
        return None
    return float(np.clip(np.sum(dx * dy) / denom, -1.0, 1.0))


def correlations(confidence, iou) -> dict:
    """Pearson and Spearman (average ranks for ties) correlation of two 1-D arrays.

    Non-finite pairs are dropped; ``n`` is the number of pairs used. Undefined
    coefficients are ``None``.
    """
    x = np.asarray(confidence, dtype=np.float64).reshape(-1)
    y = np.asarray(iou, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"confidence and iou differ in length: {x.size} vs {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    spearman = _pearson(_average_ranks(x), _average_ranks(y)) if len(x) >= 2 else None
    return {"pearson": _pearson(x, y), "spearman": spearman, "n": int(len(x))}


# --------------------------------------------------------------------------- plotting helpers
def _new_figure(ncols: int = 1, width: float = 4.2, height: float = 4.0):
    fig = Figure(figsize=(width * ncols, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(fig: Figure, out_path: PathLike) -> None:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
        fig.clear()


def _sample(n: int, max_points: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` items, without replacement."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _message(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.4")


# --------------------------------------------------------------------------- Fig. 4
def plot_confidence_vs_iou(panels: Sequence[Tuple[str, object, object]], out_path: PathLike,
                           max_points: int = 10000, seed: int = 0) -> List[dict]:
    """Fig. 4: one scatter per ``(title, confidence, iou_eval)`` panel, x = IoU_eval, y = confidence.

    At most ``max_points`` detections per panel are drawn, sampled without replacement by a
    generator seeded with ``seed`` afresh for each panel (panels of equal length thus show
    the same detections). Pearson and Spearman, computed on the sampled points, are printed
    in each panel and returned: ``[{"title", "pearson", "spearman", "n", "n_total"}]``.
    """
    fig, axes = _new_figure(max(len(panels), 1))
    stats = []
    if not panels:
        _message(axes[0], "no panels")
    for ax, (title, confidence, iou) in zip(axes, panels):
        conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
        iou = np.asarray(iou, dtype=np.float64).reshape(-1)
        if conf.shape != iou.shape:
            raise ValueError(f"panel {title!r}: {conf.size} confidences but {iou.size} IoUs")
        idx = _sample(len(conf), max_points, seed)
        corr = correlations(conf[idx], iou[idx])
        stats.append({"title": title, **corr, "n_total": int(len(conf))})
        if len(idx):
            ax.scatter(iou[idx], conf[idx], s=2, alpha=0.25, linewidths=0, rasterized=True)
            ax.text(0.03, 0.97, f"Pearson {_fmt(corr['pearson'])}\nSpearman {_fmt(corr['spearman'])}\n"
                    f"n = {corr['n']}", transform=ax.transAxes, va="top", ha="left", fontsize=9,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
        else:
            _message(ax, "no detections")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="IoU_eval", ylabel="detection confidence", title=title)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    _save(fig, out_path)
    return stats


# --------------------------------------------------------------------------- calibration
def plot_iou_calibration(pred_iou, true_iou, out_path: PathLike, bins: int = 10,
                         max_points: int = 10000, seed: int = 0) -> dict:
    """Predicted IoU vs true IoU of positive detections, with per-bin mean ± std and y = x.

    The caller chooses the positives (e.g. detections with IoU_eval > 0, or the positive
    anchors of a batch); pairs with a non-finite value are dropped. Bins split predicted
    IoU in [0, 1] into ``bins`` equal intervals (values outside are clipped into the end
    bins). Statistics use all points; the scatter shows at most ``max_points`` (seeded).

    Returns ``{"n", "mae", "mean_pred", "mean_true", "pearson", "spearman", "bins":
    [{"lo", "hi", "count", "mean_pred", "mean_true", "std_true"}]}`` (empty-bin and
    no-data statistics are ``None``).
    """
    pred = np.asarray(pred_iou, dtype=np.float64).reshape(-1)
    true = np.asarray(true_iou, dtype=np.float64).reshape(-1)
    if pred.shape != true.shape:
        raise ValueError(f"{pred.size} predicted IoUs but {true.size} true IoUs")
    keep = np.isfinite(pred) & np.isfinite(true)
    pred, true = pred[keep], true[keep]
    n = int(len(pred))
    corr = correlations(pred, true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.floor(pred * bins).astype(np.int64), 0, bins - 1)
    bin_stats = []
    for b in range(bins):
        sel = which == b
        count = int(sel.sum())
        bin_stats.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count,
                          "mean_pred": float(pred[sel].mean()) if count else None,
                          "mean_true": float(true[sel].mean()) if count else None,
                          "std_true": float(true[sel].std()) if count else None})

    def mean(v):
        return float(v.mean()) if n else None

    result = {"n": n, "mae": mean(np.abs(pred - true)), "mean_pred": mean(pred), "mean_true": mean(true),
              "pearson": corr["pearson"], "spearman": corr["spearman"], "bins": bin_stats}

    fig, (ax,) = _new_figure(1, width=5.0, height=5.0)
    ax.plot([0, 1], [0, 1], "--", color="0.5", lw=1, label="y = x")
    if n:
        idx = _sample(n, max_points, seed)
        ax.scatter(pred[idx], true[idx], s=2, alpha=0.2, linewidths=0, rasterized=True, label="detections")
        full = [s for s in bin_stats if s["count"]]
        ax.errorbar([s["mean_pred"] for s in full], [s["mean_true"] for s in full],
                    yerr=[s["std_true"] for s in full], fmt="o-", color="C3", capsize=3,
                    label="bin mean ± std")
        ax.text(0.97, 0.03, f"MAE {result['mae']:.3f}\nPearson {_fmt(corr['pearson'])}\n"
                f"Spearman {_fmt(corr['spearman'])}\nn = {n}", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=9, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
        legend = ax.legend(loc="upper left", fontsize=8)
        for handle in getattr(legend, "legend_handles", None) or legend.legendHandles:  # matplotlib >= 3.7 / older
            if hasattr(handle, "set_sizes"):  # the scatter's 2-pt dots: visible in the legend
                handle.set_sizes([12])
                handle.set_alpha(0.8)
    else:
        _message(ax, "no positive detections")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted IoU", ylabel="true IoU", title="IoU calibration")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    _save(fig, out_path)
    return result


# --------------------------------------------------------------------------- α sweep
def _alpha_value(alpha) -> Optional[float]:
    """Float α, or None for the "none" row (S = p · IoU, no α)."""
    if alpha is None or (isinstance(alpha, str) and alpha.strip().lower() == "none"):
        return None
    return float(alpha)


def plot_alpha_sweep(table: Sequence[dict], out_path: PathLike,
                     metrics: Sequence[str] = ALPHA_SWEEP_METRICS) -> dict:
    """AP metrics against α (Tables 3/4): one panel per metric of ``metrics`` in the table.

    Rows are ``{"alpha": float | None | "none", "AP": ..., ...}`` (α may be a numeric
    string). Each panel has its own y scale, since the metrics move by fractions of a
    point around very different levels. Numeric α rows are a line in increasing α, the
    best α starred. The "none" row (S = p · IoU) has no α, so it is drawn as a horizontal
    dashed line across the panel.

    Returns ``{"metrics": [plotted names], "best": {metric: {"alpha", "value"}} over numeric
    α, "none": {metric: value} or None}``.
    """
    numeric = sorted(((_alpha_value(r["alpha"]), r) for r in table if _alpha_value(r["alpha"]) is not None),
                     key=lambda pair: pair[0])
    none_rows = [r for r in table if _alpha_value(r["alpha"]) is None]
    none_row = none_rows[0] if none_rows else None
    present = [m for m in metrics if any(m in r and r[m] is not None for r in table)]

    fig, axes = _new_figure(max(len(present), 1), width=3.6, height=3.6)
    best: Dict[str, dict] = {}
    if not present:
        _message(axes[0], "no results")
    for k, (ax, name) in enumerate(zip(axes, present)):
        color = f"C{k % 10}"
        pts = [(a, float(r[name])) for a, r in numeric if r.get(name) is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "o-", color=color, ms=4, label="Eq. 7, α")
            j = int(np.argmax(ys))
            best[name] = {"alpha": float(xs[j]), "value": float(ys[j])}
            ax.plot([xs[j]], [ys[j]], "*", color="k", ms=10, label=f"best α = {xs[j]:g}")
            ax.set_xlim(min(xs) - 0.05, max(xs) + 0.05)
        if none_row is not None and none_row.get(name) is not None:
            ax.axhline(float(none_row[name]), color=color, ls="--", lw=1, label="none: S = p·IoU")
        ax.set(xlabel=r"$\alpha$  ($S = p^{\alpha}\cdot IoU^{1-\alpha}$)", ylabel=f"{name} (%)", title=name)
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    _save(fig, out_path)
    none = None if none_row is None else {m: float(none_row[m]) for m in present if none_row.get(m) is not None}
    return {"metrics": present, "best": best, "none": none}
