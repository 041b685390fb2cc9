"""The paper's analyses of one model: α sweeps (Tables 3/4), the IoU_truth upper bound
(Table 6), and detection confidence versus localisation accuracy (Fig. 4).

Inputs are the :class:`~iadet.evaluation.predict.Detections` of one network pass for each
(IoU source, α) (see :func:`~iadet.evaluation.predict.predict_alphas`).
"""
import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from iadet.evaluation.predict import Detections, alpha_name
from iadet.io import atomic_write_text

# The paper's columns (Tables 3, 4 and 6), in its order.
PAPER_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AP60", "AP70", "AP80", "AP90")
SOURCE_TITLES = {"predicted": "predicted IoU", "truth": "IoU_truth (upper bound)"}


def sweep_table(detections: Dict[Tuple[str, Optional[float]], Detections],
                evaluate: Callable[[List[Dict]], Dict]) -> List[Dict]:
    """One row per (IoU source, α): ``{"iou_source", "alpha", <metrics>}``, in the given order.

    ``evaluate`` maps COCO result dicts to a metrics dict (e.g. ``evaluate_coco`` with the
    ground truth bound); ``per_class`` tables are dropped from the rows.
    """
    rows = []
    for (source, alpha), dets in detections.items():
        metrics = evaluate(dets.to_coco_results(extra=False))
        rows.append({"iou_source": source, "alpha": alpha_name(alpha),
                     **{k: v for k, v in metrics.items() if k != "per_class"}})
    return rows


def best_row(rows: List[Dict], source: str) -> Optional[Dict]:
    """The row of ``source`` with the highest AP (the paper's "optimal α"), or None."""
    candidates = [r for r in rows if r["iou_source"] == source]
    return max(candidates, key=lambda r: r["AP"]) if candidates else None


def format_sweep(rows: List[Dict], baseline: Optional[Dict] = None) -> str:
    """Markdown tables in the paper's layout, one per IoU source: α | AP | AP50 | ... | AP90.

    ``baseline``: optional metrics of a plain RetinaNet, printed as the first row.
    """
    columns = [c for c in PAPER_COLUMNS if rows and c in rows[0]]
    blocks = []
    for source in dict.fromkeys(r["iou_source"] for r in rows):
        lines = [f"**{SOURCE_TITLES.get(source, source)}**", "",
                 "| α | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
        if baseline is not None:
            lines.append("| baseline | " + " | ".join(f"{baseline[c]:.2f}" for c in columns) + " |")
        best = best_row(rows, source)
        for r in (r for r in rows if r["iou_source"] == source):
            mark = " (best AP)" if r is best else ""
            lines.append(f"| {r['alpha']}{mark} | " + " | ".join(f"{r[c]:.2f}" for c in columns) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def write_sweep(rows: List[Dict], out_dir: Path, header: str = "") -> Tuple[Path, Path]:
    """``alpha_sweep.md`` and ``alpha_sweep.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    md, js = out_dir / "alpha_sweep.md", out_dir / "alpha_sweep.json"
    atomic_write_text((header + "\n\n" if header else "") + format_sweep(rows), md)
    atomic_write_text(json.dumps(rows, indent=2), js)
    return md, js


def detection_ious(coco_gt, dets: Detections) -> Tuple[np.ndarray, np.ndarray]:
    """Per detection: (IoU_eval, IoU_truth) against the non-crowd ground truth of its image.

    IoU_eval: largest IoU with a ground-truth box of the same class (how COCO decides true
    positives; paper §4.3). IoU_truth: largest IoU with any ground-truth box (Table 6).
    Both 0 where no such box exists.
    """
    from iadet.evaluation.plots import iou_eval_truth_arrays

    return iou_eval_truth_arrays(coco_gt, dets.image_id, dets.category_id, dets.bbox)


def confidence_analysis(coco_gt, detections: Dict[Tuple[str, Optional[float]], Detections],
                        rows: List[Dict], plot_dir: Optional[Path] = None, max_points: int = 10000) -> Dict:
    """Fig. 4 and the calibration of the predicted IoU.

    Panels (each a set of detections and its confidence, against IoU_eval):
    (a) the classification score p alone (the detections at α = 1 when swept, else p of the
    best-α detections), (b) Eq. 7 with the predicted IoU at the best α, (c) Eq. 7 with
    IoU_truth at its best α (when computed). Calibration: predicted IoU versus IoU_truth for
    the positives (detections with IoU_truth >= 0.5) of the best predicted-IoU α; a model
    without a quality branch (QFL, VFL, RetinaNet) has its class score calibrated instead
    (``calibration_estimate`` says which).
    Returns the Pearson/Spearman correlations (and calibration figures); writes
    ``confidence_vs_iou.png``, ``iou_calibration.png`` and ``alpha_sweep.png`` when
    ``plot_dir`` is given.
    """
    from iadet.evaluation import plots

    by_name = {(s, alpha_name(a)): d for (s, a), d in detections.items()}
    panels, result = [], {}
    best_pred, best_truth = best_row(rows, "predicted"), best_row(rows, "truth")
    if best_pred is not None:
        dets_p = by_name.get(("predicted", "1"), by_name[("predicted", best_pred["alpha"])])
        ev, _ = detection_ious(coco_gt, dets_p)
        panels.append(("classification score p", dets_p.cls_score, ev))
        dets = by_name[("predicted", best_pred["alpha"])]
        ev, truth = detection_ious(coco_gt, dets)
        positives = truth >= 0.5
        has_branch = bool(np.isfinite(dets.iou).all())
        if has_branch:
            panels.append((f"Eq. 7, predicted IoU, α={best_pred['alpha']}", dets.score, ev))
        # The estimate of the localisation quality: the quality branch's output (IoU, aligned
        # IoU, centerness), or without a branch the class score itself (QFL / VFL train it
        # towards the IoU; for the plain RetinaNet it is the baseline's implicit estimate).
        estimate = dets.iou if has_branch else dets.cls_score
        result["calibration_estimate"] = "quality branch" if has_branch else "class score"
        if plot_dir is not None:
            name = "iou_calibration.png" if has_branch else "cls_score_calibration.png"
            result["calibration"] = plots.plot_iou_calibration(
                estimate[positives], truth[positives], Path(plot_dir) / name)
        else:
            pred, true = estimate[positives], truth[positives]
            mae = float(np.abs(pred - true).mean()) if len(pred) else None
            result["calibration"] = {**plots.correlations(pred, true), "mae": mae}
    if best_truth is not None:
        dets = by_name[("truth", best_truth["alpha"])]
        ev, _ = detection_ious(coco_gt, dets)
        panels.append((f"Eq. 7, IoU_truth, α={best_truth['alpha']}", dets.score, ev))
    if plot_dir is not None and panels:
        corr = plots.plot_confidence_vs_iou(panels, Path(plot_dir) / "confidence_vs_iou.png", max_points=max_points)
        if len({r["alpha"] for r in rows}) > 1:
            for source in dict.fromkeys(r["iou_source"] for r in rows):
                plots.plot_alpha_sweep([r for r in rows if r["iou_source"] == source],
                                       Path(plot_dir) / f"alpha_sweep_{source}.png")
    else:
        rng = np.random.default_rng(0)
        corr = []
        for _, conf, ev in panels:
            pick = rng.permutation(len(conf))[:max_points]
            corr.append(plots.correlations(np.asarray(conf)[pick], ev[pick]))
    result["confidence_vs_iou_eval"] = [{"panel": title, **c} for (title, _, _), c in zip(panels, corr)]
    return result
