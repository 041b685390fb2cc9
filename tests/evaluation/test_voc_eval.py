"""PASCAL VOC metrics: hand-computed cases and a devkit-style loop reference."""
import numpy as np
import pytest

from iadet.evaluation.voc_eval import evaluate_voc, format_voc, pairwise_iou, voc_ap


def _gt(images, anns, cats):
    """COCO-format gt from (image_id, category_id, [x, y, w, h], difficult) tuples."""
    return {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 200} for i in images],
            "annotations": [{"id": k + 1, "image_id": img, "category_id": c, "bbox": list(b), "area": b[2] * b[3],
                             "iscrowd": int(d)} for k, (img, c, b, d) in enumerate(anns)],
            "categories": [{"id": c, "name": n} for c, n in cats]}


def _det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score}


def _per_class(metrics):
    return {row["name"]: row for row in metrics["per_class"]}


# --------------------------------------------------------------------------- voc_ap
def test_voc_ap_simple_curves():
    rec = [0.25, 0.5, 0.5, 0.75]
    prec = [1.0, 1.0, 2 / 3, 0.75]
    # 11-point: t = 0 .. 0.5 (6 thresholds) -> max precision 1; t = 0.6, 0.7 -> only
    # recall 0.75 qualifies -> 0.75; t = 0.8, 0.9, 1.0 -> nothing -> 0.
    assert voc_ap(rec, prec, True) == pytest.approx((6 * 1.0 + 2 * 0.75) / 11)
    # area: envelope over [0, .25, .5, .5, .75, 1] is [1, 1, 1, .75, .75, 0];
    # steps 0->.25 (x1), .25->.5 (x1), .5->.75 (x.75), .75->1 (x0) -> .6875
    assert voc_ap(rec, prec, False) == pytest.approx(0.6875)


def test_voc_ap_perfect_and_empty():
    assert voc_ap([0.5, 1.0], [1.0, 1.0], True) == pytest.approx(1.0)
    assert voc_ap([0.5, 1.0], [1.0, 1.0], False) == pytest.approx(1.0)
    assert voc_ap([], [], True) == 0.0
    assert voc_ap([], [], False) == 0.0


def test_voc_ap_07_uses_numpy_arange_thresholds():
    # The Python devkit ports' thresholds come from np.arange(0, 1.1, 0.1): the 4th is
    # 0.30000000000000004, so a recall of exactly 0.3 only reaches t = 0, 0.1, 0.2.
    assert voc_ap([0.3], [1.0], True) == pytest.approx(3 / 11)
    assert voc_ap([0.5], [1.0], True) == pytest.approx(6 / 11)  # 5 * 0.1 == 0.5 exactly


# --------------------------------------------------------------------------- IoU convention
def _devkit_iou(bb, gt):
    """The devkit's overlap on 1-based inclusive [xmin, ymin, xmax, ymax] boxes ("+1")."""
    iw = max(min(bb[2], gt[2]) - max(bb[0], gt[0]) + 1.0, 0.0)
    ih = max(min(bb[3], gt[3]) - max(bb[1], gt[1]) + 1.0, 0.0)
    inter = iw * ih
    union = (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0) + (gt[2] - gt[0] + 1.0) * (gt[3] - gt[1] + 1.0) - inter
    return inter / union


def _to_continuous(box):
    xmin, ymin, xmax, ymax = box
    return [xmin - 1.0, ymin - 1.0, xmax, ymax]


@pytest.mark.parametrize("a, b", [((1, 1, 10, 10), (5, 3, 14, 12)),
                                  ((1, 1, 1, 1), (1, 1, 2, 2)),       # one-pixel box
                                  ((3, 3, 20, 40), (21, 3, 30, 40)),  # adjacent, no overlap
                                  ((10, 20, 110, 60), (10, 20, 110, 60))])
def test_continuous_iou_equals_devkit_inclusive_iou(a, b):
    ours = pairwise_iou([_to_continuous(a)], [_to_continuous(b)])[0, 0]
    assert ours == pytest.approx(_devkit_iou(a, b), abs=1e-12)


# --------------------------------------------------------------------------- the hand case
# Classes a (1), b (2), c (3). Boxes [x, y, w, h].
# image 1: A1 = a [0,0,10,10]; A2 = a [20,20,10,10] difficult; B1 = b [0,0,10,10]
# image 2: A3 = a [0,0,10,10]; B2 = b [50,50,10,10]
# class a: npos = 2 (A1, A3; A2 is difficult)
#   d1 .9 img1 on A1            -> TP   (A1 matched)
#   d2 .8 img1 [1,0,10,10]      -> IoU 90/110 with A1, already matched -> FP (duplicate)
#   d3 .7 img1 on A2 (difficult) -> ignored: tp 0, fp 0
#   d4 .6 img2 far away         -> FP
#   d5 .5 img2 on A3            -> TP
#   tp = [1,0,0,0,1], fp = [0,1,0,1,0]; cum tp = [1,1,1,1,2], cum fp = [0,1,1,2,2]
#   recall = [.5,.5,.5,.5,1], precision = [1, 1/2, 1/2, 1/3, 2/4]
#   11-point: t = 0..0.5 (6) -> 1; t = 0.6..1.0 (5) -> 0.5 ; AP = 8.5/11 = 77.27 %
#   area: mrec [0,.5,.5,.5,.5,1,1], envelope [1,1,.5,.5,.5,.5,0] -> .5*1 + .5*.5 = 75 %
# class b: npos = 2 (B1, B2; B2 is missed)
#   e1 .9 img1 on B1 -> TP ; e2 .3 img2 on A3's place (no b there) -> FP
#   recall = [.5,.5], precision = [1, .5]
#   11-point: t = 0..0.5 (6) -> 1, others 0 -> 6/11 = 54.55 %
#   area: .5 * 1 + .5 * 0 = 50 %
# class c: no ground truth, one detection -> AP -1, left out of the mean
# mAP 07 = (8.5/11 + 6/11) / 2 = 14.5/22 = 65.91 % ; mAP area = (75 + 50) / 2 = 62.5 %
CATS = [(1, "a"), (2, "b"), (3, "c")]
HAND_GT = _gt([1, 2], [(1, 1, [0, 0, 10, 10], False), (1, 1, [20, 20, 10, 10], True), (1, 2, [0, 0, 10, 10], False),
                       (2, 1, [0, 0, 10, 10], False), (2, 2, [50, 50, 10, 10], False)], CATS)
HAND_DETS = [_det(2, 1, [0, 0, 10, 10], 0.5), _det(1, 1, [1, 0, 10, 10], 0.8), _det(1, 1, [0, 0, 10, 10], 0.9),
             _det(2, 1, [100, 100, 10, 10], 0.6), _det(1, 1, [20, 20, 10, 10], 0.7),
             _det(1, 2, [0, 0, 10, 10], 0.9), _det(2, 2, [0, 0, 10, 10], 0.3), _det(1, 3, [0, 0, 5, 5], 0.99)]


def test_hand_case_voc07():
    m = evaluate_voc(HAND_GT, HAND_DETS, use_07_metric=True)
    pc = _per_class(m)
    assert pc["a"]["AP"] == pytest.approx(round(100 * 8.5 / 11, 2))
    assert pc["b"]["AP"] == pytest.approx(round(100 * 6 / 11, 2))
    assert pc["c"]["AP"] == -1.0
    assert (pc["a"]["num_gt"], pc["b"]["num_gt"], pc["c"]["num_gt"]) == (2, 2, 0)
    assert (pc["a"]["num_det"], pc["b"]["num_det"], pc["c"]["num_det"]) == (5, 2, 1)
    assert m["mAP"] == pytest.approx(65.91)


def test_hand_case_area():
    m = evaluate_voc(HAND_GT, HAND_DETS, use_07_metric=False)
    pc = _per_class(m)
    assert pc["a"]["AP"] == pytest.approx(75.0)
    assert pc["b"]["AP"] == pytest.approx(50.0)
    assert pc["c"]["AP"] == -1.0
    assert m["mAP"] == pytest.approx(62.5)


def test_accepts_pycocotools_coco_and_extra_keys():
    coco_mod = pytest.importorskip("pycocotools.coco")
    import contextlib
    import copy
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        coco = coco_mod.COCO()
        coco.dataset = copy.deepcopy(HAND_GT)
        coco.createIndex()
    dets = [dict(d, iou=0.7) for d in HAND_DETS]
    assert evaluate_voc(coco, dets)["mAP"] == pytest.approx(65.91)


def test_detection_on_difficult_is_neither_tp_nor_fp():
    gt = _gt([1], [(1, 1, [0, 0, 10, 10], False), (1, 1, [50, 50, 10, 10], True)], [(1, "a")])
    # the difficult hit ranks first: were it an FP, precision at the TP would be 1/2
    dets = [_det(1, 1, [50, 50, 10, 10], 0.9), _det(1, 1, [0, 0, 10, 10], 0.8)]
    assert evaluate_voc(gt, dets)["mAP"] == pytest.approx(100.0)
    assert evaluate_voc(gt, dets, use_07_metric=False)["mAP"] == pytest.approx(100.0)
    # only the difficult hit: npos 1, tp 0, fp 0 -> recall 0 and precision 0 -> AP 0
    assert evaluate_voc(gt, dets[:1])["mAP"] == 0.0


def test_iou_exactly_at_threshold_is_fp():
    gt = _gt([1], [(1, 1, [0, 0, 10, 10], False)], [(1, "a")])
    at = _det(1, 1, [0, 0, 10, 5], 0.9)       # IoU = 50 / 100 = 0.5 exactly
    above = _det(1, 1, [0, 0, 10, 5.5], 0.9)  # IoU = 0.55
    assert pairwise_iou([[0, 0, 10, 5]], [[0, 0, 10, 10]])[0, 0] == 0.5
    assert evaluate_voc(gt, [at])["mAP"] == 0.0
    assert evaluate_voc(gt, [above])["mAP"] == pytest.approx(100.0)
    assert evaluate_voc(gt, [at], iou_thr=0.49)["mAP"] == pytest.approx(100.0)


def test_no_detections_at_all():
    m = evaluate_voc(HAND_GT, [])
    pc = _per_class(m)
    assert (pc["a"]["AP"], pc["b"]["AP"], pc["c"]["AP"]) == (0.0, 0.0, -1.0)
    assert m["mAP"] == 0.0
    assert evaluate_voc(HAND_GT, [], use_07_metric=False)["mAP"] == 0.0


def test_class_without_gt_is_excluded_from_mean():
    gt = _gt([1], [(1, 1, [0, 0, 10, 10], False), (1, 2, [0, 0, 10, 10], True)], [(1, "a"), (2, "b"), (3, "c")])
    dets = [_det(1, 1, [0, 0, 10, 10], 0.9), _det(1, 3, [0, 0, 10, 10], 0.9), _det(1, 2, [0, 0, 10, 10], 0.9)]
    m = evaluate_voc(gt, dets)
    pc = _per_class(m)
    assert pc["a"]["AP"] == pytest.approx(100.0)
    assert pc["b"]["AP"] == -1.0  # only a difficult box: no positives
    assert pc["c"]["AP"] == -1.0
    assert m["mAP"] == pytest.approx(100.0)
    empty = evaluate_voc(_gt([1], [], [(1, "a")]), [])
    assert empty["mAP"] == 0.0 and empty["per_class"][0]["AP"] == -1.0


def test_detections_on_image_without_gt_are_fp():
    gt = _gt([1, 3], [(1, 1, [0, 0, 10, 10], False)], [(1, "a")])
    dets = [_det(3, 1, [0, 0, 10, 10], 0.9), _det(1, 1, [0, 0, 10, 10], 0.5)]
    # tp = [0, 1], fp = [1, 0]: recall [0, 1], precision [0, 1/2]
    # 11-point: every t reaches recall 1 -> 0.5 ; area: 1 * 0.5
    assert evaluate_voc(gt, dets)["mAP"] == pytest.approx(50.0)
    assert evaluate_voc(gt, dets, use_07_metric=False)["mAP"] == pytest.approx(50.0)
    only_fp = evaluate_voc(gt, dets[:1])
    assert only_fp["mAP"] == 0.0


def test_unknown_image_or_category_raises():
    with pytest.raises(ValueError, match="images"):
        evaluate_voc(HAND_GT, [_det(99, 1, [0, 0, 1, 1], 0.5)])
    with pytest.raises(ValueError, match="categories"):
        evaluate_voc(HAND_GT, [_det(1, 99, [0, 0, 1, 1], 0.5)])


# --------------------------------------------------------------------------- loop reference
def _devkit_reference(objects, dets, classes, ovthresh, use_07):
    """py-faster-rcnn's voc_eval loop, on 1-based inclusive boxes with "+1" widths.

    objects: {image: [(cls, [xmin, ymin, xmax, ymax], difficult)]};
    dets: [(image, cls, [xmin, ymin, xmax, ymax], score)].
    """
    aps = {}
    for cls in classes:
        recs = {img: {"bbox": [o[1] for o in objs if o[0] == cls], "difficult": [o[2] for o in objs if o[0] == cls]}
                for img, objs in objects.items()}
        for r in recs.values():
            r["det"] = [False] * len(r["bbox"])
        npos = sum(not d for r in recs.values() for d in r["difficult"])
        mine = sorted([d for d in dets if d[1] == cls], key=lambda d: -d[3])
        tp, fp = np.zeros(len(mine)), np.zeros(len(mine))
        for k, (img, _, bb, _) in enumerate(mine):
            r = recs[img]
            ovmax, jmax = -np.inf, -1
            for j, g in enumerate(r["bbox"]):
                ov = _devkit_iou(bb, g)
                if ov > ovmax:
                    ovmax, jmax = ov, j
            if ovmax > ovthresh:
                if not r["difficult"][jmax]:
                    if not r["det"][jmax]:
                        tp[k], r["det"][jmax] = 1.0, True
                    else:
                        fp[k] = 1.0
            else:
                fp[k] = 1.0
        if npos == 0:
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec, prec = tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        if use_07:
            ap = sum((prec[rec >= t].max() if (rec >= t).any() else 0.0) / 11 for t in np.arange(0.0, 1.1, 0.1))
        else:
            mrec, mpre = np.r_[0.0, rec, 1.0], np.r_[0.0, prec, 0.0]
            for i in range(len(mpre) - 1, 0, -1):
                mpre[i - 1] = max(mpre[i - 1], mpre[i])
            i = np.where(mrec[1:] != mrec[:-1])[0]
            ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
        aps[cls] = ap
    return aps


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_07", [True, False])
def test_matches_devkit_loop_on_random_data(seed, use_07):
    rng = np.random.default_rng(seed)
    classes, images = [1, 2, 3], list(range(1, 9))

    def inclusive_box(near=None):
        if near is None:
            x, y = rng.integers(1, 60, size=2)
            w, h = rng.integers(4, 25, size=2)
            return [int(x), int(y), int(x + w - 1), int(y + h - 1)]
        # jitter a gt's corners so that detections overlap it around the threshold
        x1, y1, x2, y2 = (int(v + rng.integers(-2, 3)) for v in near)
        return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]

    objects = {img: [(int(rng.choice(classes)), inclusive_box(), bool(rng.random() < 0.2))
                     for _ in range(rng.integers(0, 5))] for img in images}
    objects[images[0]] = []  # an image without gt
    dets = []
    for img in images:
        for _ in range(rng.integers(0, 16)):
            objs = objects[img]
            if objs and rng.random() < 0.7:
                cls, g, _ = objs[rng.integers(len(objs))]
                box = inclusive_box(g)
                cls = cls if rng.random() < 0.85 else int(rng.choice(classes))
            else:
                cls, box = int(rng.choice(classes)), inclusive_box()
            dets.append((img, cls, box, float(rng.random())))

    def xywh(box):
        x1, y1, x2, y2 = _to_continuous(box)
        return [x1, y1, x2 - x1, y2 - y1]

    gt = _gt(images, [(img, c, xywh(b), d) for img, objs in objects.items() for c, b, d in objs],
             [(c, f"c{c}") for c in classes])
    results = [_det(img, c, xywh(b), s) for img, c, b, s in dets]
    ref = _devkit_reference(objects, dets, classes, 0.5, use_07)
    m = evaluate_voc(gt, results, use_07_metric=use_07)
    for row in m["per_class"]:
        if row["category_id"] in ref:
            assert row["AP"] == pytest.approx(round(100 * ref[row["category_id"]], 2), abs=1e-9)
        else:
            assert row["AP"] == -1.0
    assert m["mAP"] == pytest.approx(round(100 * float(np.mean(list(ref.values()))), 2), abs=1e-9)


def test_format_voc_is_a_markdown_table():
    text = format_voc(evaluate_voc(HAND_GT, HAND_DETS))
    assert "| a | 2 | 77.27 |" in text
    assert "| c | 0 | n/a |" in text
    assert "**65.91**" in text
