"""One-pass α sweeps and IoU_truth: equal to plain post-processing, exact on hand-made cases."""
import numpy as np
import pytest
import torch

import iadet
from iadet.builder import build_dataset
from iadet.evaluation.analysis import detection_ious, format_sweep, sweep_table
from iadet.evaluation.predict import (Detections, iou_truth_per_anchor, parse_alphas, predict_alphas,
                                      predict_dataset)
from iadet.models.box_coder import DeltaBoxCoder
from iadet.models.postprocess import PostProcessor

from tests.conftest import CONFIGS
from tests.engine.test_train import tiny_opts


def test_parse_alphas():
    assert parse_alphas("none,1.0, 0.9,0.5,0.5") == [None, 1.0, 0.9, 0.5]
    for bad in ("1.5", "abc", ",", "-0.1"):
        with pytest.raises(ValueError, match="--alphas"):
            parse_alphas(bad)


@pytest.fixture(scope="module")
def tiny_model_and_data(tmp_path_factory):
    """A random-weight model whose class prior is raised so that it detects something."""
    cache = tmp_path_factory.mktemp("cache")
    cfg = iadet.load_config(CONFIGS / "quickstart.yaml", tiny_opts(cache) + ["model.test.score_thr=0.0"])
    torch.manual_seed(0)
    model = iadet.build_detector(cfg).eval()
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(0.0)  # p around 0.5: many candidates, many overlaps
    return model, build_dataset(cfg, "val")


def test_sweep_at_one_alpha_equals_a_plain_evaluation(tiny_model_and_data):
    model, dataset = tiny_model_and_data
    swept = predict_alphas(model, dataset, [None, 1.0, 0.3], ["predicted"], batch_size=2, progress=False)
    for alpha in (None, 1.0, 0.3):
        model.postprocessor.alpha = alpha
        plain = predict_dataset(model, dataset, batch_size=2, progress=False)
        got = swept[("predicted", alpha)].to_coco_results()
        assert len(plain) > 50
        key = lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"])  # noqa: E731
        assert sorted(got, key=key) == sorted(plain, key=key)
    model.postprocessor.alpha = 0.5
    # α changes the ranking: the three α do not all give the same detections
    scores = [swept[("predicted", a)].score for a in (None, 1.0, 0.3)]
    assert not np.allclose(scores[0][:20], scores[1][:20])


def test_truth_source_reports_iou_truth_and_rescored_confidence(tiny_model_and_data):
    model, dataset = tiny_model_and_data
    out = predict_alphas(model, dataset, [1.0, 0.5], ["truth"], batch_size=2, progress=False)
    gt = dataset.coco
    for alpha in (1.0, 0.5):
        dets = out[("truth", alpha)]
        _, truth = detection_ious(gt, dets)
        # the reported IoU is IoU_truth (computed in input pixels; here input = original size)
        np.testing.assert_allclose(dets.iou, truth, atol=1e-4)
        expected = dets.cls_score ** alpha * dets.iou ** (1 - alpha)
        np.testing.assert_allclose(dets.score, expected, rtol=1e-4, atol=1e-6)


def test_iou_truth_is_one_for_a_box_equal_to_a_ground_truth():
    coder = DeltaBoxCoder()
    anchors = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 50], [5, 5, 30, 30], [60, 0, 90, 10]])
    gt = torch.tensor([[22.0, 18, 41, 52], [0, 0, 10, 10]])
    deltas = torch.zeros(1, 4, 4)
    deltas[0, 1] = coder.encode(gt[:1], anchors[1:2])[0]  # anchor 1 regresses exactly onto gt 0
    head_out = {"anchors": anchors, "bbox_deltas": deltas, "cls_logits": torch.zeros(1, 4, 2),
                "num_anchors_per_level": [4]}
    truth = iou_truth_per_anchor(head_out, coder, [(100, 100)], [gt])
    assert truth[0, 0].item() == pytest.approx(1.0)  # anchor 0 is gt 1, decoded unchanged
    assert truth[0, 1].item() == pytest.approx(1.0, abs=1e-5)
    inter = (min(30, 41) - 22) * (30 - 18)  # anchor 2 vs gt 0
    union = 25 * 25 + 19 * 34 - inter
    assert truth[0, 2].item() == pytest.approx(max(inter / union, 25.0 / 625), rel=1e-5)
    assert truth[0, 3].item() == 0.0
    empty = iou_truth_per_anchor(head_out, coder, [(100, 100)], [torch.zeros(0, 4)])
    assert empty.abs().sum() == 0  # no ground truth: IoU_truth 0 everywhere

    post = PostProcessor(coder, alpha=0.5, score_thr=0.0, nms_iou=0.5)
    dets = post(head_out, anchors, [(100, 100)], iou_prob=truth)[0]
    on_gt = (dets["ious"] > 0.999)
    assert on_gt.sum() >= 2  # the two detections equal to a ground-truth box
    torch.testing.assert_close(dets["scores"][on_gt], dets["cls_scores"][on_gt] ** 0.5)


def test_detection_ious_against_coco_ground_truth(tiny_model_and_data):
    _, dataset = tiny_model_and_data
    gt = dataset.coco
    anns = [a for a in gt.dataset["annotations"] if not a.get("iscrowd", 0)][:3]
    other = [c for c in gt.getCatIds() if c != anns[0]["category_id"]][0]
    dets = Detections(np.array([a["image_id"] for a in anns] + [anns[0]["image_id"]], np.int64),
                      np.array([a["category_id"] for a in anns] + [other], np.int64),
                      np.array([a["bbox"] for a in anns] + [anns[0]["bbox"]], np.float32),
                      np.ones(4, np.float32), np.ones(4, np.float32), np.ones(4, np.float32))
    ev, truth = detection_ious(gt, dets)
    np.testing.assert_allclose(truth, 1.0, atol=1e-5)  # every box is a ground-truth box
    np.testing.assert_allclose(ev[:3], 1.0, atol=1e-5)
    assert ev[3] < 1.0  # the same box with another class: IoU_eval looks at that class only


def test_sweep_table_layout():
    def evaluate(results):
        return {"AP": 10.0 + len(results), "AP50": 20.0, "AP75": 5.0, "APs": -1.0, "APm": 1.0, "APl": 2.0,
                "AP60": 3.0, "AP70": 4.0, "AP80": 5.0, "AP90": 6.0, "per_class": []}
    one = Detections(np.zeros(1, np.int64), np.ones(1, np.int64), np.zeros((1, 4), np.float32),
                     *(np.ones(1, np.float32),) * 3)
    rows = sweep_table({("predicted", None): Detections(), ("predicted", 0.5): one}, evaluate)
    assert [(r["alpha"], r["AP"]) for r in rows] == [("none", 10.0), ("0.5", 11.0)]
    text = format_sweep(rows)
    assert "| α | AP | AP50 | AP75 | APs | APm | APl | AP60 | AP70 | AP80 | AP90 |" in text
    assert "| 0.5 (best AP) | 11.00 |" in text
