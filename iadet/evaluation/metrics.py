"""COCO box metrics of a result list: one entry point, two interchangeable back-ends.

``evaluate_coco(coco_gt, results, backend="fast")`` returns, in percent rounded to 2 decimals,
the 12 ``COCOeval`` stats plus AP at IoU .60 / .70 / .80 / .90 (named :data:`COCO_STAT_NAMES`),
and ``"per_class"``: one ``{"category_id", "name", "AP", "AP50", "AP75"}`` per category of the
ground truth (``coco_gt.getCatIds()`` order). -1.0 marks a value pycocotools reports as -1:
no regular (non-crowd, in-range) ground truth in that size range / class.

Back-ends: ``"fast"`` (:class:`iadet.evaluation.fast_coco.CocoBoxEvaluator`, vectorised numpy,
same numbers) and ``"pycocotools"`` (the reference ``COCOeval``). ``coco_gt`` may be a
``pycocotools.coco.COCO`` or a ``CocoBoxEvaluator`` built from one -- pass the evaluator to
reuse its ground-truth index across many result sets.

``check_coco_results(results, coco_gt, source)`` validates a results list read from a file
(``python -m iadet.eval --ann --results``) with one-line errors naming the entry and the key.
"""
import contextlib
import io
from typing import TYPE_CHECKING, Dict, List, Sequence, Union

import numpy as np

from iadet.evaluation.fast_coco import IOU_THRESHOLDS, CocoBoxEvaluator, CocoEvalArrays, mean_valid, summarize

if TYPE_CHECKING:
    from pycocotools.coco import COCO

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
                   "AP60", "AP70", "AP80", "AP90")
BACKENDS = ("fast", "pycocotools")
_EXTRA_AP = {"AP60": 0.6, "AP70": 0.7, "AP80": 0.8, "AP90": 0.9}
_RESULT_KEYS = ("image_id", "category_id", "bbox", "score")


def _percent(value: float) -> float:
    """pycocotools' fraction -> percent with 2 decimals; -1 (undefined) stays -1.0."""
    return round(100 * float(value), 2) if value > -1 else -1.0


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
             int: "an integer", float: "a number"}
    return names.get(type(value), type(value).__name__)


def check_coco_results(results, coco_gt, source="results") -> None:
    """Raise ValueError, in one line naming ``source``, the entry index and the key, unless
    ``results`` is a list of COCO result objects that ``coco_gt`` can score: integer
    ``image_id`` of one of its images and ``category_id`` of one of its categories, ``bbox``
    a list of 4 finite numbers ``[x, y, w, h]`` with ``w, h >= 0``, ``score`` a finite number.

    ``coco_gt``: a ``pycocotools.coco.COCO`` or a :class:`CocoBoxEvaluator`."""
    gt = coco_gt.coco_gt if isinstance(coco_gt, CocoBoxEvaluator) else coco_gt
    fix = "Fix the results file: a COCO results file is a JSON list of {image_id, category_id, bbox, score} objects."
    if not isinstance(results, list):
        raise ValueError(f"{source}: the top level is {_json_type(results)}, not a list. {fix}")
    image_ids, category_ids = set(gt.getImgIds()), set(gt.getCatIds())
    for index, entry in enumerate(results):
        where = f"{source}: entry {index}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is {_json_type(entry)} ({entry!r:.40}), not an object. {fix}")
        missing = [k for k in _RESULT_KEYS if k not in entry]
        if missing:
            raise ValueError(f"{where} has no '{missing[0]}' (keys: {sorted(entry)[:6]}). {fix}")
        for key, known, what in (("image_id", image_ids, "an image"), ("category_id", category_ids, "a category")):
            value = entry[key]
            if not (isinstance(value, int) and not isinstance(value, bool)):
                raise ValueError(f"{where} has {key} {value!r:.40} ({_json_type(value)}); COCO ids are integers.")
            if value not in known:
                hint = (" Results need the annotation file's category ids (e.g. 1..90 for COCO), not contiguous "
                        "labels." if key == "category_id" else "")
                raise ValueError(f"{where} has {key} {value}, which is not {what} of the ground truth "
                                 f"({len(known)} {key.split('_')[0]} ids from {min(known, default='-')} to "
                                 f"{max(known, default='-')}).{hint}")
        box = entry["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) and np.isfinite(v) for v in box)):
            raise ValueError(f"{where} has bbox {box!r:.60}; it must be 4 finite numbers [x, y, w, h].")
        if box[2] < 0 or box[3] < 0:
            raise ValueError(f"{where} has bbox {box!r:.60} with a negative width or height; COCO boxes are "
                             "[x, y, w, h], not [x1, y1, x2, y2].")
        score = entry["score"]
        if not (_is_number(score) and np.isfinite(score)):
            raise ValueError(f"{where} has score {score!r:.40}; it must be a finite number.")


def _run_pycocotools(coco_gt, results: Sequence[dict]):
    """``COCOeval`` evaluate / accumulate / summarize, stdout swallowed.

    Returns (the 12 stats, precision (T, R, K, A, M), the K category ids). An empty result list
    (which ``loadRes`` cannot load) is scored against an empty results index.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            ids = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
            if ids:
                raise ValueError(f"result image_id {sorted(ids, key=repr)[0]!r} is not an image of the ground truth")
            # copies: loadRes writes id / area / iscrowd / segmentation into the dicts it gets
            dt = coco_gt.loadRes([{k: r[k] for k in _RESULT_KEYS} for r in results])
        else:
            dt = COCO()
            dt.dataset = {"images": list(coco_gt.dataset.get("images", [])), "annotations": [],
                          "categories": list(coco_gt.dataset.get("categories", []))}
            dt.createIndex()
        ev = COCOeval(coco_gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(s) for s in ev.stats], ev.eval["precision"], np.asarray(ev.params.catIds)


def _category_index(category_ids: np.ndarray, cat_id) -> int:
    return int(np.flatnonzero(category_ids == cat_id)[0])


def _assemble(coco_gt, stats: List[float], precision: np.ndarray, category_ids: np.ndarray) -> Dict:
    """The metrics dict from the 12 stats and the (T, R, K, A, M) precision (K in ``category_ids`` order)."""
    metrics = {name: _percent(v) for name, v in zip(COCO_STAT_NAMES[:12], stats)}
    all_area_100 = precision[:, :, :, 0, -1]                                   # (T, R, K)
    for name, thr in _EXTRA_AP.items():
        t = np.flatnonzero(np.isclose(IOU_THRESHOLDS, thr))
        metrics[name] = _percent(mean_valid(all_area_100[t]))
    t50, t75 = (np.flatnonzero(np.isclose(IOU_THRESHOLDS, x)) for x in (0.5, 0.75))
    per_class = []
    for cat_id in coco_gt.getCatIds():
        k = _category_index(category_ids, cat_id)
        p = all_area_100[:, :, k]
        per_class.append({"category_id": cat_id, "name": coco_gt.cats[cat_id].get("name", str(cat_id)),
                          "AP": _percent(mean_valid(p)), "AP50": _percent(mean_valid(p[t50])),
                          "AP75": _percent(mean_valid(p[t75]))})
    metrics["per_class"] = per_class
    return metrics


def evaluate_coco(coco_gt: Union["COCO", CocoBoxEvaluator], results: Sequence[dict], backend: str = "fast") -> Dict:
    """COCO box metrics (percent) of ``results`` against ``coco_gt``; see the module docstring.

    ``results``: COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
    (extra keys are ignored and the dicts are not modified). A result whose image is not in the
    ground truth raises ValueError; no results at all gives 0 where ground truth exists.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown evaluation backend {backend!r}; valid: {', '.join(BACKENDS)}")
    evaluator = coco_gt if isinstance(coco_gt, CocoBoxEvaluator) else None
    gt = evaluator.coco_gt if evaluator is not None else coco_gt
    if backend == "pycocotools":
        stats, precision, category_ids = _run_pycocotools(gt, results)
        return _assemble(gt, stats, precision, category_ids)
    arrays: CocoEvalArrays = (evaluator or CocoBoxEvaluator(gt)).evaluate(results)
    return _assemble(gt, summarize(arrays), arrays.precision, arrays.category_ids)


def _table(header: List[str], rows: List[List[str]], label_column: bool) -> str:
    """A Markdown table; numbers right-aligned, the first column left-aligned when it holds labels."""
    align = "|" + "|".join("---" if label_column and i == 0 else "---:" for i in range(len(header))) + "|"
    lines = ["| " + " | ".join(cells) + " |" for cells in [header, *rows]]
    return "\n".join([lines[0], align, *lines[1:]])


def format_metrics(metrics: Dict) -> str:
    """A one-row Markdown table of the :data:`COCO_STAT_NAMES` present in ``metrics``."""
    names = [n for n in COCO_STAT_NAMES if n in metrics]
    return _table(names, [[f"{metrics[n]:.2f}" for n in names]], label_column=False)


def format_per_class(metrics: Dict) -> str:
    """A Markdown table ``name | AP | AP50 | AP75``, one row per class of ``metrics["per_class"]``."""
    rows = [[str(c["name"])] + [f"{c[k]:.2f}" for k in ("AP", "AP50", "AP75")] for c in metrics.get("per_class", [])]
    return _table(["name", "AP", "AP50", "AP75"], rows, label_column=True)
