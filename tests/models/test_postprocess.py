"""Post-processing: Eq. 7 scoring, top-k and threshold, class-wise NMS, batching, empty cases."""
import math

import pytest
import torch
import torchvision

from iadet.models.box_coder import DeltaBoxCoder
from iadet.models.postprocess import PostProcessor, detection_confidence


def test_detection_confidence_eq7_by_hand():
    p = torch.tensor([[0.81, 0.25]])
    iou = torch.tensor([0.64])
    torch.testing.assert_close(detection_confidence(p, iou, 0.5), torch.tensor([[0.72, 0.4]]))
    torch.testing.assert_close(detection_confidence(p, iou, 1.0), p)
    torch.testing.assert_close(detection_confidence(p, iou, 0.0), torch.tensor([[0.64, 0.64]]))
    torch.testing.assert_close(detection_confidence(p, iou, None), p * 0.64)
    torch.testing.assert_close(detection_confidence(p, None, 0.5), p)
    torch.testing.assert_close(detection_confidence(p, iou, 0.3), p ** 0.3 * 0.64 ** 0.7)


def _logit(x):
    return math.log(x / (1 - x))


def test_hand_case_nms_and_rescoring():
    # three anchors at one level, two classes; anchors 0 and 1 overlap with IoU 0.6.
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    cls = torch.full((1, 3, 2), _logit(0.001))  # S <= sqrt(0.001) < 0.05
    cls[0, 0, 0] = _logit(0.9)
    cls[0, 1, 0] = _logit(0.8)
    cls[0, 2, 1] = _logit(0.3)
    iou = torch.tensor([[_logit(0.25), _logit(0.81), _logit(0.5)]])
    out = {"cls_logits": cls, "bbox_deltas": torch.zeros(1, 3, 4), "iou_logits": iou, "num_anchors_per_level": [3]}

    plain = PostProcessor(DeltaBoxCoder(), alpha=1.0)(out, anchors, [(100, 100)])[0]
    # alpha = 1 ranks by p: anchor 0 (0.9) suppresses anchor 1 (IoU 0.667 > 0.5)
    assert plain["labels"].tolist() == [0, 1]
    torch.testing.assert_close(plain["scores"], torch.tensor([0.9, 0.3]))
    torch.testing.assert_close(plain["boxes"][0], anchors[0])

    aware = PostProcessor(DeltaBoxCoder(), alpha=0.5)(out, anchors, [(100, 100)])[0]
    # alpha = 0.5: S0 = sqrt(0.9 * 0.25) = 0.474, S1 = sqrt(0.8 * 0.81) = 0.805 -> anchor 1 wins
    torch.testing.assert_close(aware["boxes"][0], anchors[1])
    torch.testing.assert_close(aware["scores"], torch.tensor([math.sqrt(0.8 * 0.81), math.sqrt(0.3 * 0.5)]))
    torch.testing.assert_close(aware["ious"], torch.tensor([0.81, 0.5]))
    torch.testing.assert_close(aware["cls_scores"], torch.tensor([0.8, 0.3]))


def _random_outputs(n=3, m_levels=(300, 80, 20), c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = sum(m_levels)
    xy = torch.rand(m, 2, generator=g) * 200
    anchors = torch.cat([xy, xy + 8 + torch.rand(m, 2, generator=g) * 60], 1)
    out = {"cls_logits": torch.randn(n, m, c, generator=g) * 2 - 2,
           "bbox_deltas": torch.randn(n, m, 4, generator=g) * 0.2,
           "iou_logits": torch.randn(n, m, generator=g),
           "num_anchors_per_level": list(m_levels)}
    return out, anchors


def _reference_single_image(out, anchors, i, size, pp):
    """A plain per-image, per-level implementation with torchvision's NMS."""
    scores = detection_confidence(out["cls_logits"][i].sigmoid(), out["iou_logits"][i].sigmoid(), pp.alpha)
    boxes_all, scores_all, labels_all = [], [], []
    start = 0
    for count in out["num_anchors_per_level"]:
        s = scores[start:start + count].flatten()
        keep = torch.where(s > pp.score_thr)[0]
        top = s[keep].topk(min(pp.topk_per_level, keep.numel())).indices
        idx = keep[top]
        a, lab = idx // scores.shape[1] + start, idx % scores.shape[1]
        b = pp.box_coder.decode(out["bbox_deltas"][i][a], anchors[a])
        b[:, 0::2] = b[:, 0::2].clamp(0, size[1])
        b[:, 1::2] = b[:, 1::2].clamp(0, size[0])
        boxes_all.append(b), scores_all.append(s[idx]), labels_all.append(lab)
        start += count
    b, s, lab = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
    keep = torchvision.ops.batched_nms(b, s, lab, pp.nms_iou)[:pp.max_det]
    return b[keep], s[keep], lab[keep]


@pytest.mark.parametrize("alpha", [0.5, None, 1.0])
@pytest.mark.parametrize("order", ["topk_then_thr", "thr_then_topk"])
def test_batched_equals_per_image_reference(alpha, order):
    out, anchors = _random_outputs()
    sizes = [(150, 200), (200, 120), (90, 90)]
    pp = PostProcessor(DeltaBoxCoder(), alpha=alpha, topk_per_level=100, max_det=40, order=order)
    results = pp(out, anchors, sizes)
    for i, res in enumerate(results):
        b, s, lab = _reference_single_image(out, anchors, i, sizes[i], pp)
        assert len(s) > 5
        assert torch.equal(res["labels"], lab)
        torch.testing.assert_close(res["scores"], s)
        torch.testing.assert_close(res["boxes"], b)
        assert len(res["scores"]) <= 40


def test_no_detections_and_empty_batch_rows():
    out, anchors = _random_outputs(n=2)
    out["cls_logits"][1] = -20.0  # nothing above the threshold in image 1
    results = PostProcessor(DeltaBoxCoder())(out, anchors, [(100, 100), (100, 100)])
    assert len(results[0]["scores"]) > 0
    assert results[1]["boxes"].shape == (0, 4)
    assert results[1]["labels"].dtype == torch.int64
    assert set(results[1]) == {"boxes", "scores", "labels", "cls_scores", "ious"}


def test_without_iou_branch_scores_are_probabilities():
    out, anchors = _random_outputs(n=1)
    del out["iou_logits"]
    res = PostProcessor(DeltaBoxCoder(), alpha=0.5)(out, anchors, [(300, 300)])[0]
    assert "ious" not in res
    torch.testing.assert_close(res["scores"], res["cls_scores"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        PostProcessor(DeltaBoxCoder(), alpha=1.5)
    with pytest.raises(ValueError, match="order"):
        PostProcessor(DeltaBoxCoder(), order="random")


@pytest.mark.parametrize("order", ["topk_then_thr", "thr_then_topk"])
@pytest.mark.parametrize("score_thr", [0.9, 0.5, 0.2, 0.02])  # sparse ... dense levels
@pytest.mark.parametrize("topk", [5, 40, 10_000])
@pytest.mark.parametrize("alpha, with_iou", [(1.0, False), (0.5, True), (None, True), (0.3, True), (0.05, True)])
def test_select_candidates_equals_full_topk_then_threshold(order, score_thr, topk, alpha, with_iou):
    """The sparse (bound on the logits, S of the few, threshold first) and dense (S of the
    level, one top-k) paths select exactly the set of a plain per-image, per-level ``topk``
    over the full S followed by the threshold."""
    g = torch.Generator().manual_seed(int(score_thr * 100) + topk)
    levels = [120, 30, 7]
    logits = torch.randn(4, sum(levels), 3, generator=g) * 2
    logits[1] -= 2.0  # a sparser image
    logits[2] = -30.0 + torch.rand(sum(levels), 3, generator=g)  # no candidates (for alpha >= 0.1)
    iou = torch.rand(4, sum(levels), generator=g) if with_iou else None
    scores = detection_confidence(logits.sigmoid(), iou, alpha)
    pp = PostProcessor(DeltaBoxCoder(), alpha=alpha, score_thr=score_thr, topk_per_level=topk, order=order)
    img, anchor, label, score = pp.select_candidates(logits, iou, alpha, levels)
    assert torch.equal(img, torch.sort(img, stable=True).values)  # image order
    torch.testing.assert_close(score, scores[img, anchor, label], rtol=1e-6, atol=0)
    expected = set()
    for i in range(scores.shape[0]):
        start = 0
        for count in levels:
            flat = scores[i, start:start + count].flatten()
            vals, idx = flat.topk(min(topk, flat.numel()))
            expected |= {(i, start + j // 3, j % 3) for j, v in zip(idx.tolist(), vals.tolist()) if v > score_thr}
            start += count
    got = list(zip(img.tolist(), anchor.tolist(), label.tolist()))
    assert len(got) == len(set(got)) and set(got) == expected


@pytest.mark.parametrize("alpha", [1.0, 0.9, 0.5, 0.3, 0.1, None])
@pytest.mark.parametrize("score_thr", [0.05, 0.3, 0.9])
def test_logit_bound_never_excludes_a_passing_score(alpha, score_thr):
    """S > score_thr implies logit > bound, also for logits within float rounding of the
    exact boundary and for IoUs near 0 and 1 (the bound only prefilters)."""
    g = torch.Generator().manual_seed(1)
    iou = torch.cat([torch.rand(2000, generator=g), torch.tensor([1.0, 0.999999, 1e-6, 0.0, score_thr])])
    pp = PostProcessor(DeltaBoxCoder(), alpha=alpha, score_thr=score_thr)
    bound = pp.logit_bounds(iou[None], alpha, 1, iou.numel(), iou.device)[0]  # (M, 1)
    # the exact boundary logit per anchor (float64), and logits in a band of +-1e-4 around it
    t = torch.tensor(score_thr, dtype=torch.float64)
    q = iou.double().clamp(min=1e-300)
    p_min = t / q if alpha is None else (t / q ** (1 - alpha)) ** (1 / alpha) if alpha < 1 else t.expand_as(q)
    exact = torch.logit(p_min.clamp(max=1 - 1e-15))
    offsets = torch.linspace(-1e-4, 1e-4, 41, dtype=torch.float64)
    logits = (exact[:, None] + offsets * (1 + exact.abs()[:, None])).float().nan_to_num(posinf=50.0)
    logits = torch.cat([logits, torch.randn(iou.numel(), 40, generator=g) * 6], 1)  # (M, 81)
    passing = detection_confidence(logits.sigmoid(), iou, alpha) > score_thr
    assert passing.any() and (~passing).any()
    assert (logits[passing] > bound.expand_as(logits)[passing]).all()
    # and the bound is tight: among the random logits, few pass it without passing S
    extra = ((logits > bound) & ~passing)[:, 41:]
    assert extra.float().mean() < 0.01


def test_no_logit_bound_where_s_hardly_depends_on_p():
    pp = PostProcessor(DeltaBoxCoder(), alpha=0.05)
    assert pp.logit_bounds(torch.rand(1, 10), 0.05, 1, 10, "cpu") is None
    assert PostProcessor(DeltaBoxCoder(), score_thr=0.0).logit_bounds(None, 1.0, 1, 10, "cpu") is None
    assert pp.logit_bounds(None, 0.05, 1, 10, "cpu") is not None  # no IoU: S = p
