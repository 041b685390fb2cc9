"""Pre-NMS candidates, both modes of ``model.test.candidates``, against a dense reference.

``pairs``: per level the ``topk_per_level`` (anchor, class) pairs with the highest S, then the
threshold. ``anchors`` (the authors' ``max_scores.topk(nms_pre)``): per level the
``topk_per_level`` anchors with the highest S over classes (ties: the lower anchor index),
then every class of them with S > score_thr. The reference computes S for every anchor and
class and selects with a plain stable sort, then decodes, clips and runs torchvision's NMS.
"""
import pytest
import torch
import torchvision

from iadet.models.box_coder import DeltaBoxCoder
from iadet.models.postprocess import PostProcessor, detection_confidence

LEVELS = (300, 80, 20)


def reference_candidates(logits, iou, alpha, levels, k, thr, mode):
    """{(image, anchor, class): S} from S of every anchor and class (plain torch)."""
    s = detection_confidence(logits.sigmoid(), iou, alpha)  # (N, M, C)
    n, _, c = s.shape
    picked = {}
    for i in range(n):
        start = 0
        for count in levels:
            level = s[i, start:start + count]  # (A, C)
            if mode == "anchors":
                top = torch.sort(level.max(dim=1).values, descending=True, stable=True).indices[:k]
                a, j = (level[top] > thr).nonzero(as_tuple=True)
                a = top[a]
            else:
                flat = level.flatten()
                top = torch.sort(flat, descending=True, stable=True).indices[:k]
                top = top[flat[top] > thr]
                a, j = top // c, top % c
            for a_, j_, v in zip(a.tolist(), j.tolist(), level[a, j].tolist()):
                picked[(i, start + a_, j_)] = v
            start += count
    return picked


def got_candidates(pp, logits, iou, alpha, levels):
    img, anchor, label, score = pp.select_candidates(logits, iou, alpha, levels)
    assert torch.equal(img, torch.sort(img, stable=True).values)  # image order
    got = {(i, a, j): s for i, a, j, s in zip(img.tolist(), anchor.tolist(), label.tolist(), score.tolist())}
    assert len(got) == img.numel()  # no candidate twice
    return got


def random_logits(seed, n=4, levels=LEVELS, c=5):
    g = torch.Generator().manual_seed(seed)
    m = sum(levels)
    logits = torch.randn(n, m, c, generator=g) * 2 - 1
    logits[1] -= 2.0  # a sparser image
    logits[2] = -30.0 + torch.rand(m, c, generator=g)  # an image without detections
    iou = torch.rand(n, m, generator=g)
    return logits, iou, g


@pytest.mark.parametrize("mode, order", [("anchors", "topk_then_thr"), ("pairs", "topk_then_thr"),
                                         ("anchors", "thr_then_topk")])
@pytest.mark.parametrize("score_thr", [0.9, 0.05, 0.0])
@pytest.mark.parametrize("topk", [1, 7, 50, 10_000])  # 50 and 10_000: levels with fewer anchors than k
@pytest.mark.parametrize("alpha, with_iou", [(0.5, True), (0.3, True), (None, True), (1.0, False)])
def test_random_cases_equal_the_dense_reference(mode, order, score_thr, topk, alpha, with_iou):
    logits, iou, _ = random_logits(seed=topk + int(score_thr * 100))
    iou = iou if with_iou else None
    pp = PostProcessor(DeltaBoxCoder(), alpha=alpha, score_thr=score_thr, topk_per_level=topk, order=order,
                       candidates=mode)
    got = got_candidates(pp, logits, iou, alpha, LEVELS)
    expected = reference_candidates(logits, iou, alpha, LEVELS, topk, score_thr, mode)
    assert got.keys() == expected.keys()
    assert all(abs(got[key] - expected[key]) <= 1e-6 * expected[key] for key in got)
    if score_thr > 0:
        assert not any(key[0] == 2 for key in got)  # the empty image gives nothing


def test_anchor_mode_takes_k_anchors_and_all_their_passing_classes():
    """Hand case: 4 anchors, 3 classes, k = 2. Anchor max S: 0.9, 0.8, 0.7, 0.95 -> anchors 3
    and 0; every class of them above 0.05, none of anchors 1 and 2 (whose 0.8 and 0.7 beat
    anchor 0's second class 0.1, which 'pairs' would rank below them)."""
    p = torch.tensor([[[0.9, 0.1, 0.01], [0.8, 0.0, 0.0], [0.0, 0.7, 0.0], [0.2, 0.3, 0.95]]])
    logits = torch.logit(p.double(), eps=1e-12).float()
    pp = PostProcessor(DeltaBoxCoder(), alpha=1.0, topk_per_level=2, candidates="anchors")
    got = got_candidates(pp, logits, None, 1.0, [4])
    assert sorted(got) == [(0, 0, 0), (0, 0, 1), (0, 3, 0), (0, 3, 1), (0, 3, 2)]
    pairs = PostProcessor(DeltaBoxCoder(), alpha=1.0, topk_per_level=2, candidates="pairs")
    assert sorted(got_candidates(pairs, logits, None, 1.0, [4])) == [(0, 0, 0), (0, 3, 2)]


@pytest.mark.parametrize("mode", ["anchors", "pairs"])
@pytest.mark.parametrize("alpha, thr", [(0.5, 0.0625), (1.0, 0.5), (None, 0.25)])
@pytest.mark.parametrize("topk", [3, 12, 40])
def test_ties_at_the_kth_place_and_at_the_threshold(mode, alpha, thr, topk):
    """Exactly equal S (logit 30 -> p = 1, logit 0 -> p = 0.5, IoU powers of two: exact in
    every float path) straddle the k-th place, and S equal to the threshold does not pass.
    Anchor mode: exactly the reference's anchors (ties to the lower index). Pair mode leaves
    the order of equal scores open (as torch.topk does): the same scores, and the same pairs
    above the k-th score."""
    logits, iou, g = random_logits(seed=topk, c=4)
    m = sum(LEVELS)
    perm = torch.randperm(m, generator=g)
    tied_top, at_thr = perm[:30], perm[30:60]
    logits[:, tied_top, 1] = 30.0  # S = 1 in class 1
    iou[:, tied_top] = 1.0
    # S == thr exactly in class 2: alpha 0.5: sqrt(1 * 2**-8); 1.0: p = 0.5; None: 0.5 * 0.5
    logits[:, at_thr, 2] = 30.0 if alpha == 0.5 else 0.0
    iou[:, at_thr] = {0.5: 2.0 ** -8, 1.0: 0.5, None: 0.5}[alpha]
    s = detection_confidence(logits.sigmoid(), iou, alpha)
    assert (s[:, tied_top, 1] == 1.0).all() and (s[:, at_thr, 2] == thr).all()  # exact ties
    pp = PostProcessor(DeltaBoxCoder(), alpha=alpha, score_thr=thr, topk_per_level=topk, candidates=mode)
    got = got_candidates(pp, logits, iou, alpha, LEVELS)
    expected = reference_candidates(logits, iou, alpha, LEVELS, topk, thr, mode)
    assert all(v > thr for v in got.values())
    if mode == "anchors":
        assert got.keys() == expected.keys()
        return
    assert sorted(got.values()) == pytest.approx(sorted(expected.values()), rel=1e-6)
    for i in range(logits.shape[0]):  # per image and level: the pairs strictly above the k-th score agree
        start = 0
        for count in LEVELS:
            def level(d):
                return {key: v for key, v in d.items() if key[0] == i and start <= key[1] < start + count}
            g_lvl, e_lvl = level(got), level(expected)
            if e_lvl:
                kth = min(e_lvl.values())
                assert {key for key, v in g_lvl.items() if v > kth * (1 + 1e-6)} == \
                    {key for key, v in e_lvl.items() if v > kth * (1 + 1e-6)}
            start += count


def canonical(boxes, scores, labels):
    """Detections sorted by score, then label and box: random S can tie exactly, and the order
    of equal scores is open."""
    order = sorted(range(len(scores)), key=lambda j: (-round(float(scores[j]), 6), int(labels[j]),
                                                       *boxes[j].tolist()))
    return boxes[order], scores[order], labels[order]


def reference_detections(out, anchors, sizes, pp, mode):
    """Detections per image: the dense reference's candidates, decoded, clipped, NMSed."""
    iou = out["iou_logits"].sigmoid() if "iou_logits" in out else None
    cand = reference_candidates(out["cls_logits"], iou, pp.alpha, out["num_anchors_per_level"],
                                pp.topk_per_level, pp.score_thr, mode)
    results = []
    for i, (h, w) in enumerate(sizes):
        keys = sorted(key for key in cand if key[0] == i)
        a = torch.tensor([key[1] for key in keys], dtype=torch.long)
        lab = torch.tensor([key[2] for key in keys], dtype=torch.long)
        s = torch.tensor([cand[key] for key in keys], dtype=torch.float32)
        b = pp.box_coder.decode(out["bbox_deltas"][i][a], anchors[a]).reshape(-1, 4)
        b[:, 0::2] = b[:, 0::2].clamp(0, w)
        b[:, 1::2] = b[:, 1::2].clamp(0, h)
        keep = torchvision.ops.batched_nms(b, s, lab, pp.nms_iou)[:pp.max_det]
        results.append((b[keep], s[keep], lab[keep]))
    return results


@pytest.mark.parametrize("mode", ["anchors", "pairs"])
@pytest.mark.parametrize("alpha", [0.5, 0.3, None])
@pytest.mark.parametrize("topk, max_det", [(1000, 100), (30, 100), (8, 1000)])
def test_detections_equal_the_dense_reference(mode, alpha, topk, max_det):
    logits, iou, g = random_logits(seed=7 + topk, c=6)
    m = sum(LEVELS)
    xy = torch.rand(m, 2, generator=g) * 200
    anchors = torch.cat([xy, xy + 8 + torch.rand(m, 2, generator=g) * 60], 1)
    out = {"cls_logits": logits, "bbox_deltas": torch.randn(logits.shape[0], m, 4, generator=g) * 0.2,
           "iou_logits": torch.logit(iou.clamp(1e-4, 1 - 1e-4)), "num_anchors_per_level": list(LEVELS)}
    sizes = [(150, 200), (200, 120), (90, 90), (210, 210)]
    pp = PostProcessor(DeltaBoxCoder(), alpha=alpha, topk_per_level=topk, max_det=max_det, candidates=mode)
    results = pp(out, anchors, sizes)
    for i, (res, (b, s, lab)) in enumerate(zip(results, reference_detections(out, anchors, sizes, pp, mode))):
        assert (len(s) > 5) == (i != 2)  # image 2 has no detection
        got, want = canonical(res["boxes"], res["scores"], res["labels"]), canonical(b, s, lab)
        assert torch.equal(got[2], want[2])
        torch.testing.assert_close(got[1], want[1])
        torch.testing.assert_close(got[0], want[0])
        assert torch.equal(res["scores"], res["scores"].sort(descending=True).values)
        torch.testing.assert_close(res["scores"], detection_confidence(res["cls_scores"], res["ious"], alpha,
                                                                       per_anchor=False))


def test_anchor_mode_empty_batch_levels_and_no_iou_branch():
    pp = PostProcessor(DeltaBoxCoder(), candidates="anchors", topk_per_level=5)
    img, anchor, label, score = pp.select_candidates(torch.zeros(0, 10, 3), torch.zeros(0, 10), 0.5, [6, 4])
    assert img.numel() == anchor.numel() == label.numel() == score.numel() == 0
    logits = torch.randn(2, 10, 3)
    got = got_candidates(pp, logits, None, 0.5, [0, 6, 0, 4])  # empty levels, S = p
    assert got.keys() == reference_candidates(logits, None, 0.5, [0, 6, 0, 4], 5, 0.05, "anchors").keys()
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(10, 1)
    out = {"cls_logits": torch.full((1, 10, 3), -20.0), "bbox_deltas": torch.zeros(1, 10, 4),
           "num_anchors_per_level": [10]}
    res = pp(out, anchors, [(50, 50)])[0]
    assert res["boxes"].shape == (0, 4) and set(res) == {"boxes", "scores", "labels", "cls_scores"}


def test_bad_candidates_argument():
    with pytest.raises(ValueError, match="candidates"):
        PostProcessor(DeltaBoxCoder(), candidates="boxes")
