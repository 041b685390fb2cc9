"""A vectorised re-implementation of pycocotools' COCO box evaluation (``COCOeval``, ``bbox``).

:class:`CocoBoxEvaluator` indexes a ground truth once and then scores any number of result
sets against it. It reproduces ``COCOeval(gt, gt.loadRes(results), "bbox")`` with default
parameters -- ``evaluate()``, ``accumulate()`` and ``summarize()`` -- value for value:

* IoU thresholds ``linspace(.5, .95, 10)``, 101 recall points ``linspace(0, 1, 101)``,
  ``maxDets`` (1, 10, 100), area ranges all / small / medium / large (ground truth area is the
  annotation's ``area`` field; a detection's area is ``w * h`` of its box, as ``loadRes`` sets
  it), one category at a time (``useCats=1``);
* IoU as pycocotools' C ``bbIou``: with a crowd ground truth the union is the detection area;
* per (image, category) only the 100 best-scored detections are kept (stable sort on
  ``-score``, so ties keep the order of the result list); the greedy matching of
  ``evaluateImg``: detections in score order take the still unmatched regular ground truth of
  highest IoU >= threshold (equal IoUs: the later annotation wins), or, when there is none, the
  best ignored one (crowd, or area outside the range); crowd ground truth can be matched many
  times; a detection matched to ignored ground truth is ignored, an unmatched one whose area is
  outside the range too;
* ``accumulate``: per category the detections of all images in (score desc, image id, rank)
  order, cumulative TP / FP, precision envelope, ``searchsorted(recall, recThrs, "left")``,
  -1 where a category / area range has no regular ground truth.

Array conventions (as ``COCOeval.eval``): ``precision`` and ``scores`` are (T, R, K, A, M),
``recall`` is (T, K, A, M); T = IoU thresholds, R = recall points, K = categories in sorted
id order, A = area ranges, M = maxDets.

How it is vectorised: results are sorted once by (category, -score, image) and once more
(stably) by image. Every kept detection is paired with the ground truth of its (image,
category) and only pairs with IoU >= 0.5 are kept. The greedy matching is a loop over the
*step* -- the index of a detection among those of its (image, category) that have such a pair,
a few dozen at most -- handling all groups, the 10 thresholds and the 4 area ranges at once;
the choice of ground truth is one ``maximum.reduceat`` over an exact integer key (regular
first, then IoU rank, then annotation order). ``accumulate`` needs no loop over categories:
each (area, threshold, category) list is reduced to its true positives, whose precision
and envelope are computed with cumulative sums and a block ``maximum.reduceat``.
"""
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import List, Sequence, Tuple

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RANGES = ((0.0, 1e5 ** 2), (0.0, 32.0 ** 2), (32.0 ** 2, 96.0 ** 2), (96.0 ** 2, 1e5 ** 2))
AREA_LABELS = ("all", "small", "medium", "large")


@dataclass
class CocoEvalArrays:
    """What ``COCOeval.accumulate`` stores in ``eval``: precision / scores (T, R, K, A, M), recall (T, K, A, M).

    ``category_ids`` are the K category ids in the order of the K axis (sorted).
    """
    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray


def box_iou_pairs(det_boxes: np.ndarray, gt_boxes: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """IoU of paired ``[x, y, w, h]`` boxes (row i of each), bit-identical to pycocotools' ``bbIou``.

    With a crowd ground truth the "union" is the detection's area. Non-overlapping pairs give 0.
    """
    dx, dy, dw, dh = det_boxes.T
    gx, gy, gw, gh = gt_boxes.T
    w = np.fmin(dw + dx, gw + gx) - np.fmax(dx, gx)
    h = np.fmin(dh + dy, gh + gy) - np.fmax(dy, gy)
    inter = w * h
    det_area = dw * dh
    union = np.where(gt_crowd, det_area, det_area + gw * gh - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def _lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Positions of ``ids`` in the sorted unique array ``sorted_ids`` and whether each was found."""
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    pos = np.searchsorted(sorted_ids, ids).clip(0, len(sorted_ids) - 1)
    return pos, sorted_ids[pos] == ids


def _group_starts(keys: np.ndarray) -> np.ndarray:
    """For a sorted key array, the index of the first element of each element's run of equal keys."""
    n = len(keys)
    is_first = np.ones(n, bool)
    is_first[1:] = keys[1:] != keys[:-1]
    return np.maximum.accumulate(np.where(is_first, np.arange(n), 0)) if n else np.zeros(0, np.int64)


class CocoBoxEvaluator:
    """COCO box evaluation against one indexed ground truth (a ``pycocotools.coco.COCO``).

    Build once, then call :meth:`evaluate` (list of result dicts) or :meth:`evaluate_arrays`
    (numpy arrays) for every result set. Images are ``sorted(gt.getImgIds())``, categories
    ``sorted(gt.getCatIds())``, ground truth those of ``gt.getAnnIds(imgIds, catIds)`` -- the
    selection and order ``COCOeval`` uses. A missing ``iscrowd`` reads as 0, a missing ``area``
    as ``w * h``.
    """

    def __init__(self, coco_gt):
        self.coco_gt = coco_gt
        img_list = sorted(coco_gt.getImgIds())
        cat_list = sorted(coco_gt.getCatIds())
        self.image_ids = np.unique(np.asarray(img_list))
        self.category_ids = np.unique(np.asarray(cat_list))
        anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=img_list, catIds=cat_list)) if img_list else []
        boxes = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        area = np.array([a["area"] if "area" in a else a["bbox"][2] * a["bbox"][3] for a in anns], np.float64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
        ann_ids = np.array([a["id"] for a in anns])
        img_idx, _ = _lookup(self.image_ids, np.asarray([a["image_id"] for a in anns]))
        cat_idx, _ = _lookup(self.category_ids, np.asarray([a["category_id"] for a in anns]))
        order = np.lexsort((cat_idx, img_idx))  # stable: annotation order within (image, category)
        K = len(self.category_ids)
        self.gt_boxes, self.gt_crowd, self.gt_cat = boxes[order], crowd[order], cat_idx[order]
        # pycocotools stores the matched gt *id* and tests it for non-zero: a match to id 0 counts as none
        self.gt_id_nonzero = (ann_ids[order] != 0) if len(anns) else np.zeros(0, bool)
        self.gt_group_key = img_idx[order].astype(np.int64) * K + cat_idx[order]
        gt_area = area[order]
        # (A, G): ignored in area range a = crowd or area outside [lo, hi]
        self.gt_ignore = np.stack([self.gt_crowd | (gt_area < lo) | (gt_area > hi) for lo, hi in AREA_RANGES])
        # (K, A): number of regular ("npig") ground truths per category and area range
        self.num_regular = np.stack([np.bincount(self.gt_cat[~ig], minlength=K) for ig in self.gt_ignore], 1)

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def results_to_arrays(results: Sequence[dict]):
        """(image_ids, category_ids, boxes (N, 4) xywh float64, scores float64) of COCO result dicts."""
        n = len(results)
        image_ids = np.array(list(map(itemgetter("image_id"), results)))
        category_ids = np.array(list(map(itemgetter("category_id"), results)))
        boxes = np.fromiter(chain.from_iterable(map(itemgetter("bbox"), results)), np.float64, count=4 * n)
        scores = np.fromiter(map(itemgetter("score"), results), np.float64, count=n)
        return image_ids, category_ids, boxes.reshape(n, 4), scores

    def evaluate(self, results: Sequence[dict]) -> CocoEvalArrays:
        """Evaluate COCO result dicts (``image_id``, ``category_id``, ``bbox`` xywh, ``score``; other keys ignored)."""
        return self.evaluate_arrays(*self.results_to_arrays(results))

    def evaluate_arrays(self, image_ids, category_ids, boxes, scores) -> CocoEvalArrays:
        """Evaluate detections given as arrays; raises ValueError for an image id not in the ground truth.

        Detections of a category that is not in the ground truth are dropped (as COCOeval does).
        """
        image_ids, category_ids = np.asarray(image_ids), np.asarray(category_ids)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        img_idx, found = _lookup(self.image_ids, image_ids)
        if not found.all():
            missing = image_ids[np.flatnonzero(~found)[0]]
            raise ValueError(f"result image_id {missing!r} is not an image of the ground truth "
                             f"(pycocotools' loadRes would fail: 'Results do not correspond to current coco set')")
        cat_idx, known = _lookup(self.category_ids, category_ids)
        img_idx, cat_idx, boxes, scores = img_idx[known], cat_idx[known], boxes[known], scores[known]

        # accumulate's order: per category, score desc, then image (id order), then list order;
        # lexsort is stable, so equal scores keep the result-list order as pycocotools' mergesort
        acc = np.lexsort((img_idx, -scores, cat_idx))
        # evaluateImg's order: per (image, category), score desc, then list order (a stable re-sort on image)
        small = img_idx.astype(np.int16) if len(self.image_ids) <= np.iinfo(np.int16).max else img_idx
        grp = acc[np.argsort(small[acc], kind="stable")]
        group_key = img_idx[grp].astype(np.int64) * len(self.category_ids) + cat_idx[grp]
        rank_in_group = np.arange(len(grp)) - _group_starts(group_key)
        keep = rank_in_group < MAX_DETS[-1]  # maxDets[-1] best per (image, category)
        rank = np.empty(len(grp), np.int64)
        rank[grp] = rank_in_group
        acc = acc[rank[acc] < MAX_DETS[-1]]
        grp, group_key = grp[keep], group_key[keep]
        position = np.empty(len(rank), np.int64)  # of each detection in accumulate order
        position[acc] = np.arange(len(acc))
        status = self._match(group_key, boxes[grp], position[grp])
        area = boxes[acc, 2] * boxes[acc, 3]
        return self._accumulate(cat_idx[acc], rank[acc], scores[acc], area, status)

    # ------------------------------------------------------------------ evaluateImg
    def _match(self, group_key: np.ndarray, boxes: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Greedy matching of the kept detections, given sorted by (image, category, rank).

        Returns ``status`` (A, T, N) uint8 with detections at ``position`` (accumulate order):
        1 = matched to a regular gt (a true positive), 2 = matched to an ignored gt (ignored),
        0 = unmatched (a false positive, or ignored when its area is outside the range).
        """
        A, T, N = len(AREA_RANGES), len(IOU_THRESHOLDS), len(group_key)
        status = np.zeros((A, T, N), np.uint8)
        thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)
        # ground truth of each detection's (image, category): gt indices [g_start, g_start + g_count)
        g_start = np.searchsorted(self.gt_group_key, group_key, "left")
        g_count = np.searchsorted(self.gt_group_key, group_key, "right") - g_start
        pair_det, pair_gt, iou = self._candidate_pairs(boxes, g_start, g_count, thresholds.min())
        if not len(pair_det):
            return status
        # step = index of the detection among its group's detections that have a candidate pair
        new_det = np.ones(len(pair_det), bool)
        new_det[1:] = pair_det[1:] != pair_det[:-1]
        cand = pair_det[new_det]
        cand_step = np.arange(len(cand)) - _group_starts(group_key[cand])
        pair_step = cand_step[np.cumsum(new_det) - 1]
        # exact choice key: regular gt first, then higher IoU, then later annotation (pycocotools' >=)
        slot = pair_gt - g_start[pair_det]
        n_slots = int(g_count.max())
        _, iou_rank = np.unique(iou, return_inverse=True)
        n_ranks = int(iou_rank.max()) + 1
        regular = ~self.gt_ignore[:, pair_gt]                                  # (A, P)
        key = (regular * n_ranks + iou_rank.reshape(1, -1)) * n_slots + slot   # (A, P) int64
        above = iou[None, :] >= thresholds[:, None]                             # (T, P)
        available = np.ones((A, T, len(self.gt_boxes)), bool)  # non-crowd gt not yet matched
        by_step = np.argsort(pair_step, kind="stable")
        bounds = np.searchsorted(pair_step[by_step], np.arange(int(pair_step.max()) + 2))
        for step in range(len(bounds) - 1):
            pairs = by_step[bounds[step]:bounds[step + 1]]
            ok = above[:, pairs][None] if step == 0 else available[:, :, pair_gt[pairs]] & above[:, pairs][None]
            starts = np.flatnonzero(new_det[pairs])
            best = np.maximum.reduceat(np.where(ok, key[:, None, pairs], -1), starts, axis=2)  # (A, T, d)
            dets = pair_det[pairs[starts]]
            hit = best >= 0
            best_gt = g_start[dets] + np.where(hit, best % n_slots, 0)
            to_ignored = best < n_ranks * n_slots
            # pycocotools stores the matched gt *id*: a regular match to gt id 0 reads as unmatched
            status[:, :, position[dets]] = np.where(hit & to_ignored, 2, hit & self.gt_id_nonzero[best_gt])
            a_i, t_i, d_i = np.nonzero(hit & ~self.gt_crowd[best_gt])
            available[a_i, t_i, best_gt[a_i, t_i, d_i]] = False
        return status

    def _candidate_pairs(self, boxes, g_start, g_count, min_iou, chunk=1 << 22):
        """(detection, gt, IoU) for every detection and gt of its group with IoU >= ``min_iou``.

        Pairs below every threshold can never match. Detections are taken in chunks of about
        ``chunk`` pairs, so crowded groups do not blow up the memory. Sorted by (detection, gt).
        """
        found = []
        pairs_before = np.concatenate([[0], np.cumsum(g_count)])
        lo = 0
        while lo < len(g_count):
            hi = max(int(np.searchsorted(pairs_before, pairs_before[lo] + chunk, "right")) - 1, lo + 1)
            count = g_count[lo:hi]
            pair_det = np.repeat(np.arange(lo, hi), count)
            first_pair = pairs_before[lo:hi] - pairs_before[lo]  # of each detection, in this chunk
            pair_gt = np.arange(len(pair_det)) - np.repeat(first_pair - g_start[lo:hi], count)
            iou = box_iou_pairs(boxes[pair_det], self.gt_boxes[pair_gt], self.gt_crowd[pair_gt])
            keep = iou >= min_iou
            found.append((pair_det[keep], pair_gt[keep], iou[keep]))
            lo = hi
        if not found:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        return tuple(np.concatenate(parts) for parts in zip(*found))

    # ------------------------------------------------------------------ accumulate
    def _recall_counts(self) -> np.ndarray:
        """(K, A, R): the least TP count c with float(c / npig) >= recThr -- searchsorted on rc, in integers."""
        n = np.maximum(self.num_regular, 1)[:, :, None].astype(np.int64)
        c = np.maximum(np.ceil(RECALL_THRESHOLDS * n).astype(np.int64) - 2, 0)
        for _ in range(4):  # float(c / n) is monotone in c and ceil(r * n) is off by at most one
            c += (c / n) < RECALL_THRESHOLDS
        return c

    def _accumulate(self, cat, rank, score, area, status) -> CocoEvalArrays:
        """COCOeval.accumulate from the detections in accumulate order (category, score desc, image, rank).

        A "list" is one (area range, IoU threshold, category): G = A * T * K lists, in that order.
        Only true positives matter for the precision envelope (from one true positive to the next
        precision can only drop), so each list is reduced to its true positives: the i-th has precision
        i / (i + false positives before it), and the envelope at recall point r is the max
        precision over the true positives from the c_r-th on (c_r: :meth:`_recall_counts`).
        """
        A, T, R, M = len(AREA_RANGES), len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(MAX_DETS)
        K = len(self.category_ids)
        L, N, G = A * T, len(cat), A * T * K
        precision, recall, scores = -np.ones((T, R, K, A, M)), -np.ones((T, K, A, M)), -np.ones((T, R, K, A, M))
        npig = np.repeat(self.num_regular.T[:, None, :], T, axis=1).reshape(G)
        need = np.repeat(self._recall_counts().transpose(1, 0, 2)[:, None], T, axis=1).reshape(G, R)
        in_range = np.stack([~((area < lo) | (area > hi)) for lo, hi in AREA_RANGES])  # (A, N)
        lane, pos = np.nonzero(status.reshape(L, N))  # matched (lane = area x threshold, detection), sorted
        to_regular = status.reshape(L, N)[lane, pos] == 1
        for m, max_det in enumerate(MAX_DETS):
            kept = rank < max_det
            tp_list, tp_precision, tp_score = _true_positives(cat, score, kept, in_range, lane, pos, to_regular, K)
            n_tp = np.bincount(tp_list, minlength=G)
            q, ss = _at_recall_points(tp_precision, tp_score, n_tp, need)
            # recall point 0 (need 0) reads the list's first detection, true positive or not
            top = np.flatnonzero(kept)
            top = np.append(score[top], 0.0)[np.searchsorted(cat[top], np.arange(K))]
            has_dets = np.bincount(cat[kept], minlength=K) > 0
            ss = np.where((need == 0) & np.tile(has_dets, L)[:, None], np.tile(top, L)[:, None], ss)
            rec = n_tp / np.maximum(npig, 1)
            absent = npig == 0
            q[absent], ss[absent], rec[absent] = -1.0, -1.0, -1.0
            precision[..., m] = q.reshape(A, T, K, R).transpose(1, 3, 2, 0)
            scores[..., m] = ss.reshape(A, T, K, R).transpose(1, 3, 2, 0)
            recall[..., m] = rec.reshape(A, T, K).transpose(1, 2, 0)
        return CocoEvalArrays(precision, recall, scores, self.category_ids.copy())


def _true_positives(cat, score, kept, in_range, lane, pos, to_regular, K):
    """The true positives of every list, grouped by list (lane * K + category), in score order.

    ``cat``, ``score``, ``kept`` (rank < maxDet), ``in_range`` (A, N): per detection in accumulate order;
    ``lane``, ``pos``: the matched (lane, detection) pairs, sorted; ``to_regular``: matched to a
    regular gt (true positive) rather than an ignored one. Returns (list, precision, score) per
    true positive, precision computed exactly as pycocotools' ``tp / (fp + tp + eps)``.
    """
    T = len(IOU_THRESHOLDS)
    # an unmatched detection is a false positive iff it is in the area range: count those before
    # each position, within its category, then subtract the matched ones among them
    fp_if_unmatched = in_range & kept
    before = np.cumsum(fp_if_unmatched, axis=1) - fp_if_unmatched
    before -= before[:, np.searchsorted(cat, np.arange(K))[cat]]
    sel = kept[pos]
    lane, pos, is_tp = lane[sel], pos[sel], to_regular[sel]
    area_range = lane // T
    group = lane * K + cat[pos]
    first = _group_starts(group)
    was_fp = fp_if_unmatched[area_range, pos]
    matched_before = np.cumsum(was_fp) - was_fp
    matched_before -= matched_before[first]
    tp = np.cumsum(is_tp)
    tp -= tp[first] - is_tp[first]
    fp = before[area_range, pos] - matched_before
    tp, fp = tp[is_tp].astype(np.float64), fp[is_tp].astype(np.float64)
    return group[is_tp], tp / (fp + tp + np.spacing(1)), score[pos[is_tp]]


def _at_recall_points(tp_precision, tp_score, n_tp, need):
    """(G, R) envelope precision and score at the recall points, from the true positives of each list.

    ``need`` (G, R): true positives needed to reach each recall point. Precision = max over the
    true positives need, need + 1, ... (1-based; need 0 reads as 1), 0 if the list has fewer;
    score = the need-th true positive's (0 when need is 0 or out of reach; the caller fills need 0).
    A max over the blocks between consecutive recall points (``maximum.reduceat``), then a
    suffix max over the R points: exact, and linear in the number of true positives.
    """
    G, R = need.shape
    first = np.cumsum(n_tp) - n_tp
    start = first[:, None] + np.minimum(np.maximum(need, 1) - 1, n_tp[:, None])   # in [first, first + n_tp]
    bounds = np.concatenate([start, (first + n_tp)[:, None]], axis=1)          # (G, R + 1), non-decreasing
    block_max = np.maximum.reduceat(np.append(tp_precision, -np.inf), bounds.ravel()).reshape(G, R + 1)[:, :R]
    block_max[bounds[:, :R] == bounds[:, 1:]] = -np.inf                       # empty blocks
    precision = np.maximum(np.maximum.accumulate(block_max[:, ::-1], axis=1)[:, ::-1], 0.0)
    reached = (need >= 1) & (need <= n_tp[:, None])
    score = np.append(tp_score, 0.0)[np.where(reached, first[:, None] + need - 1, -1)]
    return precision, score


# ---------------------------------------------------------------------- summarize
def mean_valid(values: np.ndarray) -> float:
    """Mean of the entries > -1, or -1 when there are none (COCOeval.summarize's rule)."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def summarize(arrays: CocoEvalArrays) -> List[float]:
    """The 12 ``COCOeval.stats`` (fractions, -1 where undefined) of accumulated arrays, as summarize() computes them."""
    p, r = arrays.precision, arrays.recall

    def ap(iou=None, area="all", max_dets=100):
        s = p if iou is None else p[np.where(iou == IOU_THRESHOLDS)[0]]
        return mean_valid(s[:, :, :, [AREA_LABELS.index(area)], [MAX_DETS.index(max_dets)]])

    def ar(area="all", max_dets=100):
        return mean_valid(r[:, :, [AREA_LABELS.index(area)], [MAX_DETS.index(max_dets)]])

    return [ap(), ap(iou=0.5), ap(iou=0.75), ap(area="small"), ap(area="medium"), ap(area="large"),
            ar(max_dets=1), ar(max_dets=10), ar(), ar("small"), ar("medium"), ar("large")]
