"""The fast COCO box evaluator against pycocotools: equal metrics (and equal COCOeval arrays).

Real data: COCO128 val ground truth with synthetic detections (jitter, duplicates, wrong
classes, false positives, score ties, emptied images, crowd regions, > 100 detections).
Hand-made cases on a tiny in-memory ground truth cover the corners one by one.
"""
import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from iadet.evaluation.fast_coco import CocoBoxEvaluator
from iadet.evaluation.metrics import COCO_STAT_NAMES, evaluate_coco, format_metrics, format_per_class
from tests.conftest import COCO128

VAL_JSON = COCO128 / "annotations" / "instances_val2017.json"
TOL = 0.01  # points (metrics are in percent)


# --------------------------------------------------------------------------- helpers
def make_gt(dataset: dict) -> COCO:
    gt = COCO()
    gt.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def reference_arrays(gt: COCO, results):
    """COCOeval's accumulated arrays (non-empty results only)."""
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "bbox")
        ev.evaluate()
        ev.accumulate()
    return ev.eval


def assert_same(gt: COCO, results, check_arrays=True):
    """Both back-ends give the same metrics (and the fast arrays equal COCOeval's); returns the fast metrics."""
    fast = evaluate_coco(gt, results, backend="fast")
    ref = evaluate_coco(gt, results, backend="pycocotools")
    assert set(fast) == set(ref) == set(COCO_STAT_NAMES) | {"per_class"}
    for name in COCO_STAT_NAMES:
        assert abs(fast[name] - ref[name]) <= TOL, (name, fast[name], ref[name])
    assert [c["category_id"] for c in fast["per_class"]] == [c["category_id"] for c in ref["per_class"]]
    for f, r in zip(fast["per_class"], ref["per_class"]):
        assert f["name"] == r["name"]
        for key in ("AP", "AP50", "AP75"):
            assert abs(f[key] - r[key]) <= TOL, (f["name"], key, f[key], r[key])
    if check_arrays and results:
        arrays = CocoBoxEvaluator(gt).evaluate(results)
        ev = reference_arrays(gt, results)
        np.testing.assert_array_equal(arrays.precision, ev["precision"])
        np.testing.assert_array_equal(arrays.recall, ev["recall"])
        np.testing.assert_array_equal(arrays.scores, ev["scores"])
    return fast


def det(image_id, category_id, bbox, score, **extra):
    return {"image_id": image_id, "category_id": category_id, "bbox": [float(v) for v in bbox], "score": score, **extra}


# --------------------------------------------------------------------------- COCO128 with synthetic detections
def load_coco128() -> dict:
    if not VAL_JSON.is_file():
        pytest.skip(f"COCO128 annotations not found at {VAL_JSON}")
    return json.loads(VAL_JSON.read_text())


def synthetic_results(dataset: dict, rng: np.random.Generator):
    """Detections built from the ground truth: every kind of true / false / ignored positive."""
    cat_ids = [c["id"] for c in dataset["categories"]]
    sizes = {im["id"]: (im["width"], im["height"]) for im in dataset["images"]}
    results = []

    def score():  # coarse scores on purpose: many ties
        return float(np.round(rng.uniform(0.01, 1.0), 1 if rng.random() < 0.4 else 4))

    def jitter(b, s):
        x, y, w, h = b
        dx, dy, sw, sh = rng.normal(0, s, 4)
        return [x + dx * w, y + dy * h, w * np.exp(sw), h * np.exp(sh)]

    for a in dataset["annotations"]:
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):  # misses, hits, duplicates
            box = jitter(a["bbox"], rng.choice([0.02, 0.08, 0.2]))
            results.append(det(a["image_id"], a["category_id"], box, score(), iou=0.5))  # extra keys are ignored
        if rng.random() < 0.15:  # right box, wrong class
            results.append(det(a["image_id"], int(rng.choice(cat_ids)), jitter(a["bbox"], 0.05), score()))
    for im_id, (w, h) in sizes.items():
        for _ in range(rng.integers(0, 12)):  # false positives of every size
            bw, bh = rng.uniform(2, w / 2), rng.uniform(2, h / 2)
            box = [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh]
            results.append(det(im_id, int(rng.choice(cat_ids)), box, score()))
    crowded = int(rng.choice(list(sizes)))  # > 100 detections of one class on one image
    results += [det(crowded, cat_ids[0], [*rng.uniform(0, 300, 2), 60, 80], score()) for _ in range(130)]
    emptied = set(rng.choice(list(sizes), size=len(sizes) // 10, replace=False).tolist())
    return [r for r in results if r["image_id"] not in emptied]


def with_crowds(dataset: dict, rng: np.random.Generator) -> dict:
    """A copy of ``dataset`` with ~8% of its ground truth marked iscrowd=1 (some of them enlarged)."""
    data = copy.deepcopy(dataset)
    for a in data["annotations"]:
        if rng.random() < 0.08:
            a["iscrowd"] = 1
            if rng.random() < 0.5:
                x, y, w, h = a["bbox"]
                a["bbox"] = [max(0.0, x - w / 2), max(0.0, y - h / 2), 2 * w, 2 * h]
    return data


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_coco128_synthetic_detections_match_pycocotools(seed):
    rng = np.random.default_rng(seed)
    dataset = load_coco128()
    if seed % 2:
        dataset = with_crowds(dataset, rng)
    # the exact COCOeval-array comparison runs pycocotools a second time: two seeds are enough
    assert_same(make_gt(dataset), synthetic_results(dataset, rng), check_arrays=seed < 2)


def test_coco128_perfect_and_empty_detections():
    dataset = load_coco128()
    gt = make_gt(dataset)
    perfect = [det(a["image_id"], a["category_id"], a["bbox"], 1.0) for a in dataset["annotations"]]
    metrics = assert_same(gt, perfect)
    assert metrics["AP"] == metrics["AP50"] == 100.0
    empty = assert_same(gt, [])
    assert {empty[n] for n in COCO_STAT_NAMES} <= {0.0, -1.0}


# --------------------------------------------------------------------------- tiny hand-made ground truth
CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 7, "name": "never"}]


def tiny_dataset(first_id=1):
    """4 images; class 1: a small, a medium and a large box + a crowd region; class 2: two boxes; class 7: none."""
    boxes = [(1, 1, [10, 10, 20, 20], 0), (1, 1, [100, 100, 50, 50], 0), (1, 1, [200, 10, 150, 150], 0),
             (2, 1, [0, 0, 300, 300], 1), (2, 1, [320, 320, 40, 40], 0),
             (1, 2, [50, 300, 60, 40], 0), (4, 2, [10, 10, 100, 80], 0)]
    anns = [{"id": first_id + i, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": crowd}
            for i, (im, c, b, crowd) in enumerate(boxes)]
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in (1, 2, 3, 4)]
    return {"images": images, "annotations": anns, "categories": CATS}


@pytest.fixture
def tiny_gt():
    return make_gt(tiny_dataset())


def per_class(metrics):
    return {c["name"]: c for c in metrics["per_class"]}


def test_no_detections_gives_zero_where_gt_exists(tiny_gt):
    metrics = assert_same(tiny_gt, [])
    assert all(metrics[n] == 0.0 for n in COCO_STAT_NAMES)
    classes = per_class(metrics)
    assert classes["cat"]["AP"] == classes["dog"]["AP"] == 0.0 and classes["never"]["AP"] == -1.0


def test_empty_size_range_is_minus_one():
    data = tiny_dataset()
    data["annotations"] = [a for a in data["annotations"] if a["area"] > 32 ** 2]  # no small objects
    gt = make_gt(data)
    metrics = assert_same(gt, [det(1, 1, [100, 100, 50, 50], 0.9), det(1, 1, [12, 12, 20, 20], 0.8)])
    assert metrics["APs"] == metrics["ARs"] == -1.0 and metrics["APm"] > 0
    assert assert_same(gt, [])["APs"] == -1.0


def test_area_ranges_and_unmatched_detections_outside_the_range(tiny_gt):
    results = [det(1, 1, [10, 10, 20, 20], 0.9), det(1, 1, [101, 99, 50, 52], 0.8), det(1, 1, [200, 10, 150, 150], 0.3),
               det(1, 1, [400, 300, 10, 10], 0.95), det(1, 1, [400, 50, 200, 200], 0.7),
               det(2, 1, [320, 330, 40, 32], 0.6)]
    metrics = assert_same(tiny_gt, results)
    assert metrics["APs"] < 100.0 and metrics["ARl"] == 100.0


def test_class_without_detections_and_image_without_gt(tiny_gt):
    results = [det(1, 1, [10, 10, 20, 20], 0.9), det(3, 1, [10, 10, 20, 20], 0.95), det(3, 2, [5, 5, 50, 50], 0.4)]
    classes = per_class(assert_same(tiny_gt, results))
    assert classes["dog"]["AP"] == 0.0 and 0 < classes["cat"]["AP"] < 100


def test_class_without_gt_is_minus_one(tiny_gt):
    results = [det(1, 7, [10, 10, 20, 20], 0.9), det(1, 1, [10, 10, 20, 20], 0.5), det(1, 99, [10, 10, 20, 20], 0.5)]
    classes = per_class(assert_same(tiny_gt, results))
    assert classes["never"] == {"category_id": 7, "name": "never", "AP": -1.0, "AP50": -1.0, "AP75": -1.0}


def test_crowd_region_absorbs_detections(tiny_gt):
    # inside the crowd box: IoU = intersection / detection area = 1 -> ignored, as often as it happens
    results = [det(2, 1, [10 * i, 10 * i, 30, 30], 0.9 - 0.01 * i) for i in range(8)]
    results += [det(2, 1, [320, 320, 40, 40], 0.5), det(2, 1, [250, 250, 100, 100], 0.95),
                det(2, 1, [321, 321, 40, 40], 0.4)]
    metrics = assert_same(tiny_gt, results)
    assert metrics["AP50"] > 0


def test_score_ties_across_images_and_within_an_image(tiny_gt):
    results = [det(3, 1, [0, 0, 30, 30], 0.5), det(1, 1, [10, 10, 20, 20], 0.5), det(1, 1, [11, 11, 20, 20], 0.5),
               det(1, 2, [50, 300, 60, 40], 0.5), det(4, 2, [400, 400, 60, 40], 0.5), det(4, 2, [10, 10, 100, 80], 0.5),
               det(1, 1, [100, 100, 50, 50], 0.5), det(2, 1, [320, 320, 40, 40], 0.5)]
    assert_same(tiny_gt, results)
    assert_same(tiny_gt, results[::-1])


def test_iou_exactly_at_threshold_and_equal_iou_ties():
    data = tiny_dataset()
    data["annotations"] += [{"id": i, "image_id": 3, "category_id": 1, "bbox": [0, y, 10, 20], "area": 200,
                             "iscrowd": 0} for i, y in ((50, 0), (51, 10))]
    gt = make_gt(data)
    # [0, 0, 10, 10] vs [0, 0, 10, 20]: IoU exactly 0.5; [0, 5, 10, 20] overlaps both gts with IoU 15/25
    assert_same(gt, [det(3, 1, [0, 0, 10, 10], 0.9), det(3, 1, [0, 5, 10, 20], 0.8), det(3, 1, [0, 5, 10, 20], 0.7)])
    assert_same(gt, [det(3, 1, [0, 5, 10, 20], 0.9), det(3, 1, [0, 0, 10, 10], 0.8)])


def test_more_than_100_detections_on_an_image(tiny_gt):
    rng = np.random.default_rng(0)
    results = [det(1, 1, [rng.uniform(0, 400), rng.uniform(0, 300), 50, 50], float(rng.uniform())) for _ in range(150)]
    results += [det(1, 1, [100, 100, 50, 50], 0.001), det(1, 1, [200, 10, 150, 150], 0.999)]
    results += [det(4, 2, [10, 10, 100, 80], 0.5)] + [det(4, 2, [300, 300, 20, 20], 0.5) for _ in range(120)]
    metrics = assert_same(tiny_gt, results)
    results[150]["score"] = 0.9995  # the exact medium box, now inside the top 100
    assert assert_same(tiny_gt, results)["AR100"] > metrics["AR100"]


def test_ground_truth_id_zero_quirk():
    gt = make_gt(tiny_dataset(first_id=0))  # pycocotools reads a match to gt id 0 as no match
    assert_same(gt, [det(1, 1, [10, 10, 20, 20], 0.9), det(1, 1, [100, 100, 50, 50], 0.8)])


# --------------------------------------------------------------------------- API
def test_unknown_image_id_raises_a_clear_error(tiny_gt):
    results = [det(1, 1, [10, 10, 20, 20], 0.9), det(12345, 1, [10, 10, 20, 20], 0.9)]
    for backend in ("fast", "pycocotools"):
        with pytest.raises(ValueError, match="12345"):
            evaluate_coco(tiny_gt, results, backend=backend)


def test_unknown_backend_names_the_valid_ones(tiny_gt):
    with pytest.raises(ValueError, match="pycocotools"):
        evaluate_coco(tiny_gt, [], backend="detectron")


def test_evaluator_is_reusable_and_results_are_not_modified(tiny_gt):
    evaluator = CocoBoxEvaluator(tiny_gt)
    results = [det(1, 1, [10, 10, 20, 20], 0.9, iou=0.7), det(4, 2, [10, 10, 100, 80], 0.8)]
    before = copy.deepcopy(results)
    first = evaluate_coco(evaluator, results)
    assert evaluate_coco(evaluator, results) == first == evaluate_coco(tiny_gt, results, backend="pycocotools")
    assert evaluate_coco(evaluator, results[:1]) != first
    assert results == before
    arrays = evaluator.evaluate_arrays(np.array([1, 4]), np.array([1, 2]), np.array([r["bbox"] for r in results]),
                                       np.array([0.9, 0.8]))
    np.testing.assert_array_equal(arrays.precision, evaluator.evaluate(results).precision)


def test_markdown_tables(tiny_gt):
    metrics = evaluate_coco(tiny_gt, [det(1, 1, [10, 10, 20, 20], 0.9)])
    table = format_metrics(metrics).splitlines()
    assert len(table) == 3 and table[0].split("|")[1].strip() == "AP" and "AP90" in table[0]
    rows = format_per_class(metrics).splitlines()
    assert rows[0] == "| name | AP | AP50 | AP75 |" and len(rows) == 2 + len(CATS)
    assert rows[-1].startswith("| never | -1.00")
