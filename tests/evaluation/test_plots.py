"""IoU_eval / IoU_truth, correlations and the Fig. 4 / calibration / α-sweep plots."""
import math

import numpy as np
import pytest
import torch

from iadet.evaluation.plots import (correlations, iou_eval, iou_truth, plot_alpha_sweep, plot_confidence_vs_iou,
                                    plot_iou_calibration, results_iou_eval_truth)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 100 and data[:8] == PNG_MAGIC


# --------------------------------------------------------------------------- IoU_eval / IoU_truth
GT_BOXES = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], dtype=np.float64)
GT_LABELS = np.array([0, 1])
DET_BOXES = np.array([[0, 0, 10, 10],    # equals gt 0 (class 0)
                      [20, 0, 30, 10],   # equals gt 1, but predicted as class 0
                      [0, 0, 10, 5],     # half of gt 0: IoU 0.5
                      [50, 50, 60, 60]], dtype=np.float64)  # touches nothing
DET_LABELS = np.array([0, 0, 0, 1])


def test_iou_eval_same_class_only():
    got = iou_eval(DET_BOXES, DET_LABELS, GT_BOXES, GT_LABELS)
    # det 1 sits on the class-1 gt but is class 0: its best class-0 IoU is with gt 0 -> 0
    np.testing.assert_allclose(got, [1.0, 0.0, 0.5, 0.0])
    assert got[0] == 1.0


def test_iou_truth_ignores_class():
    got = iou_truth(DET_BOXES, GT_BOXES)
    np.testing.assert_allclose(got, [1.0, 1.0, 0.5, 0.0])


def test_iou_no_gt_and_no_detections():
    np.testing.assert_array_equal(iou_eval(DET_BOXES, DET_LABELS, np.zeros((0, 4)), []), np.zeros(4))
    np.testing.assert_array_equal(iou_truth(DET_BOXES, np.zeros((0, 4))), np.zeros(4))
    assert iou_eval(np.zeros((0, 4)), [], GT_BOXES, GT_LABELS).shape == (0,)
    assert iou_truth(np.zeros((0, 4)), GT_BOXES).shape == (0,)


def test_iou_accepts_torch():
    got = iou_eval(torch.tensor(DET_BOXES, dtype=torch.float32), torch.tensor(DET_LABELS),
                   torch.tensor(GT_BOXES), torch.tensor(GT_LABELS))
    np.testing.assert_allclose(got, [1.0, 0.0, 0.5, 0.0], atol=1e-6)
    assert isinstance(got, np.ndarray)


def test_results_iou_eval_truth_from_coco_dicts():
    gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1}, {"id": 2}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 0, 10, 10], "iscrowd": 0},
                          {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 1}]}
    results = [{"image_id": 1, "category_id": 1, "bbox": [20, 0, 10, 10], "score": 0.9},
               {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 5], "score": 0.8},
               {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.7}]
    ev, tr = results_iou_eval_truth(gt, results)
    np.testing.assert_allclose(ev, [0.0, 0.5, 0.0])  # the image-2 box is crowd: left out
    np.testing.assert_allclose(tr, [1.0, 0.5, 0.0])
    ev, tr = results_iou_eval_truth(gt, results, include_crowd=True)
    np.testing.assert_allclose(ev, [0.0, 0.5, 1.0])


# --------------------------------------------------------------------------- correlations
def test_correlations_monotone():
    x = np.linspace(0, 1, 50)
    c = correlations(x, x ** 3)  # monotone, not linear
    assert c["spearman"] == pytest.approx(1.0)
    assert 0.9 < c["pearson"] < 1.0
    assert c["n"] == 50
    assert correlations(x, -x)["spearman"] == pytest.approx(-1.0)


def test_correlations_hand_case():
    # x = [1, 2, 3, 10], y = [1, 2, 3, 4]; means 4 and 2.5
    # dx = [-3, -2, -1, 6], dy = [-1.5, -.5, .5, 1.5]; sum dx*dy = 14, sum dx^2 = 50, sum dy^2 = 5
    # Pearson = 14 / sqrt(250); ranks of x are [1, 2, 3, 4] -> Spearman 1
    c = correlations([1, 2, 3, 10], [1, 2, 3, 4])
    assert c["pearson"] == pytest.approx(14 / math.sqrt(250))
    assert c["spearman"] == pytest.approx(1.0)
    # ties: x ranks [1, 2.5, 2.5, 4] (average), y ranks [1, 2, 3, 4]; centred at 2.5:
    # [-1.5, 0, 0, 1.5] . [-1.5, -.5, .5, 1.5] = 4.5 ; norms^2 4.5 and 5 -> 4.5 / sqrt(22.5)
    c = correlations([5, 7, 7, 9], [0.1, 0.2, 0.3, 0.4])
    assert c["spearman"] == pytest.approx(4.5 / math.sqrt(22.5))


def test_correlations_undefined_and_nonfinite():
    assert correlations([], []) == {"pearson": None, "spearman": None, "n": 0}
    assert correlations([0.5], [0.2])["pearson"] is None
    assert correlations([1, 1, 1], [0.1, 0.2, 0.3])["spearman"] is None
    c = correlations([1, 2, np.nan, 3], [1, 2, 5, 3])
    assert c["n"] == 3 and c["pearson"] == pytest.approx(1.0)


def test_correlations_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.random(200)
    y = np.round(x + 0.3 * rng.random(200), 1)  # many ties
    c = correlations(x, y)
    assert c["pearson"] == pytest.approx(stats.pearsonr(x, y)[0])
    assert c["spearman"] == pytest.approx(stats.spearmanr(x, y)[0])


# --------------------------------------------------------------------------- plots
def test_plot_confidence_vs_iou(tmp_path):
    rng = np.random.default_rng(0)
    iou = rng.random(500)
    panels = [("RetinaNet", rng.random(500), iou),
              ("IoU-aware, predicted IoU", 0.7 * iou + 0.3 * rng.random(500), iou),
              ("IoU-aware, IoU_truth", iou, iou)]
    out = tmp_path / "sub" / "fig4.png"
    stats = plot_confidence_vs_iou(panels, out, max_points=200, seed=0)
    assert _is_png(out)
    assert [s["title"] for s in stats] == [p[0] for p in panels]
    for s in stats:
        assert set(s) >= {"pearson", "spearman", "n", "n_total"}
        assert s["n"] == 200 and s["n_total"] == 500
    assert stats[2]["pearson"] == pytest.approx(1.0)
    assert abs(stats[0]["pearson"]) < 0.3 < stats[1]["pearson"]
    # same seed, same sample
    assert plot_confidence_vs_iou(panels, out, max_points=200, seed=0) == stats
    assert not [p for p in out.parent.iterdir() if p.name != "fig4.png"]  # no temporary left


def test_plot_confidence_vs_iou_empty(tmp_path):
    stats = plot_confidence_vs_iou([("empty", [], [])], tmp_path / "a.png")
    assert _is_png(tmp_path / "a.png")
    assert stats == [{"title": "empty", "pearson": None, "spearman": None, "n": 0, "n_total": 0}]
    assert plot_confidence_vs_iou([], tmp_path / "b.png") == []
    assert _is_png(tmp_path / "b.png")


def test_plot_iou_calibration(tmp_path):
    rng = np.random.default_rng(1)
    true = rng.uniform(0.4, 1.0, 1000)
    pred = np.clip(true + rng.normal(0, 0.05, 1000), 0, 1)
    pred[0] = np.nan  # dropped
    out = tmp_path / "calib.png"
    res = plot_iou_calibration(pred, true, out, bins=5, max_points=300)
    assert _is_png(out)
    assert set(res) == {"n", "mae", "mean_pred", "mean_true", "pearson", "spearman", "bins"}
    assert res["n"] == 999
    assert len(res["bins"]) == 5 and sum(b["count"] for b in res["bins"]) == 999
    assert res["bins"][0]["count"] == 0 and res["bins"][0]["mean_true"] is None  # pred < 0.2: none
    assert res["mae"] == pytest.approx(np.nanmean(np.abs(pred - true)))
    assert res["pearson"] > 0.9
    full = [b for b in res["bins"] if b["count"]]
    assert all(b["lo"] <= b["mean_pred"] <= b["hi"] for b in full)


def test_plot_iou_calibration_bins_by_hand(tmp_path):
    res = plot_iou_calibration([0.1, 0.2, 0.6, 1.0], [0.3, 0.5, 0.6, 0.8], tmp_path / "c.png", bins=2)
    lo, hi = res["bins"]
    assert (lo["count"], hi["count"]) == (2, 2)  # predicted 1.0 falls in the last bin
    assert lo["mean_true"] == pytest.approx(0.4) and lo["std_true"] == pytest.approx(0.1)
    assert hi["mean_pred"] == pytest.approx(0.8) and hi["mean_true"] == pytest.approx(0.7)
    assert res["mae"] == pytest.approx((0.2 + 0.3 + 0.0 + 0.2) / 4)


def test_plot_iou_calibration_empty(tmp_path):
    res = plot_iou_calibration([], [], tmp_path / "e.png")
    assert _is_png(tmp_path / "e.png")
    assert res["n"] == 0 and res["mae"] is None and res["pearson"] is None
    assert all(b["count"] == 0 for b in res["bins"])


def test_plot_alpha_sweep(tmp_path):
    table = [{"alpha": a, "AP": 35 + 2 * a - 2 * a * a, "AP50": 55 - a, "AP75": 37 + a, "AP90": 8 + 3 * a}
             for a in (1.0, 0.0, 0.3, 0.5, 0.7)]
    table.append({"alpha": "none", "AP": 35.9, "AP50": 54.0, "AP75": 38.5, "AP90": 9.0})
    out = tmp_path / "alpha.png"
    res = plot_alpha_sweep(table, out)
    assert _is_png(out)
    assert res["metrics"] == ["AP", "AP50", "AP75", "AP90"]
    assert res["best"]["AP"] == {"alpha": 0.5, "value": pytest.approx(35.5)}
    assert res["best"]["AP50"]["alpha"] == 0.0 and res["best"]["AP75"]["alpha"] == 1.0
    assert res["none"] == {"AP": 35.9, "AP50": 54.0, "AP75": 38.5, "AP90": 9.0}
    res = plot_alpha_sweep([{"alpha": None, "AP": 1.0}, {"alpha": "0.5", "AP": 2.0}], tmp_path / "b.png")
    assert res == {"metrics": ["AP"], "best": {"AP": {"alpha": 0.5, "value": 2.0}}, "none": {"AP": 1.0}}


def test_plot_alpha_sweep_empty(tmp_path):
    res = plot_alpha_sweep([], tmp_path / "e.png")
    assert _is_png(tmp_path / "e.png")
    assert res == {"metrics": [], "best": {}, "none": None}
