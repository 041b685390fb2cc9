"""Max-IoU assigner: hand-built cases, MMDetection's loop and torchvision's Matcher as references."""
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou as tv_box_iou

from iadet.models.assigner import IGNORED, NEGATIVE, MaxIoUAssigner

# One image, hand-built. IoU of each anchor with gt 0 = [0, 0, 10, 10] (area 100):
ANCHORS = torch.tensor([
    [0.0, 0.0, 10.0, 10.0],      # 0: IoU 1.0 with gt 0               -> positive 0
    [0.0, 0.0, 10.0, 20.0],      # 1: IoU 100/200 = 0.5 (boundary)    -> positive 0
    [0.0, 0.0, 10.0, 22.0],      # 2: IoU 100/220 = 0.45              -> ignored
    [0.0, 0.0, 10.0, 25.0],      # 3: IoU 100/250 = 0.4 (boundary)    -> ignored
    [50.0, 50.0, 60.0, 60.0],    # 4: IoU 0 with everything           -> negative
    [100.0, 100.0, 110.0, 110.0],  # 5: IoU 16/100 = 0.16 with gt 1 (its best, tie) -> positive 1
    [96.0, 96.0, 106.0, 106.0],  # 6: IoU 16/100 = 0.16 with gt 1 (tie)            -> positive 1
    [200.0, 200.0, 220.0, 220.0],  # 7: IoU 0.3 with gt 2, 0.2 with gt 3 (best of both)
])
GTS = torch.tensor([
    [0.0, 0.0, 10.0, 10.0],
    [100.0, 100.0, 104.0, 104.0],  # best IoU 0.16 < 0.4, reached by anchors 5 and 6
    [200.0, 200.0, 220.0, 206.0],  # area 120: IoU 0.3 with anchor 7 (anchor 7's argmax)
    [200.0, 214.0, 220.0, 218.0],  # area 80: IoU 0.2 with anchor 7 (also its best)
])


def test_hand_built_gt_mode():
    result = MaxIoUAssigner().assign(ANCHORS, [GTS])
    # Anchor 7 is claimed by gts 2 and 3: the later one wins (MMDetection's loop), although
    # gt 2 overlaps it more.
    assert result.matched_idx.tolist() == [[0, 0, IGNORED, IGNORED, NEGATIVE, 1, 1, 3]]
    torch.testing.assert_close(result.matched_iou,
                               torch.tensor([[1.0, 0.5, 100 / 220, 0.4, 0.0, 0.16, 0.16, 0.2]]))


def test_hand_built_torchvision_and_none_modes():
    tv = MaxIoUAssigner(low_quality="torchvision").assign(ANCHORS, [GTS]).matched_idx
    # Low-quality anchors keep their own best gt: anchor 7 -> gt 2.
    assert tv.tolist() == [[0, 0, IGNORED, IGNORED, NEGATIVE, 1, 1, 2]]
    assert tv.tolist()[0] == Matcher(0.5, 0.4, True)(tv_box_iou(GTS, ANCHORS)).tolist()
    none = MaxIoUAssigner(low_quality="none").assign(ANCHORS, [GTS]).matched_idx
    assert none.tolist() == [[0, 0, IGNORED, IGNORED, NEGATIVE, NEGATIVE, NEGATIVE, NEGATIVE]]


def test_gt_without_overlap_claims_nothing():
    far = torch.tensor([[500.0, 500.0, 510.0, 510.0]])  # IoU 0 with every anchor
    got = MaxIoUAssigner().assign(ANCHORS, [torch.cat([GTS, far])]).matched_idx
    assert got.tolist() == [[0, 0, IGNORED, IGNORED, NEGATIVE, 1, 1, 3]]


def test_ignore_regions_after_positives():
    ignore = torch.tensor([
        [45.0, 45.0, 65.0, 65.0],    # covers anchor 4 (IoF 1): negative -> ignored
        [-5.0, -5.0, 15.0, 15.0],    # covers anchor 0 (IoF 1) and anchor 1 (IoF 0.75): positives stay
        [96.0, 96.0, 101.0, 106.0],  # anchor 6: IoF 50/100 = 0.5, not > 0.5: stays positive anyway
    ])
    got = MaxIoUAssigner().assign(ANCHORS, [GTS], [ignore]).matched_idx
    assert got.tolist() == [[0, 0, IGNORED, IGNORED, IGNORED, 1, 1, 3]]
    # IoF exactly at the threshold does not ignore a negative.
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 50.0, 50.0]])
    half = torch.tensor([[0.0, 0.0, 5.0, 10.0], [40.0, 40.0, 46.0, 50.0]])  # IoF 0.5 and 0.6
    got = MaxIoUAssigner().assign(anchors, [torch.zeros(0, 4)], [half]).matched_idx
    assert got.tolist() == [[NEGATIVE, IGNORED]]
    off = MaxIoUAssigner(ignore_iof_thr=-1).assign(anchors, [torch.zeros(0, 4)], [half]).matched_idx
    assert off.tolist() == [[NEGATIVE, NEGATIVE]]


def test_empty_gt():
    for mode in ("gt", "torchvision", "none"):
        result = MaxIoUAssigner(low_quality=mode).assign(ANCHORS, [torch.zeros(0, 4), GTS])
        assert (result.matched_idx[0] == NEGATIVE).all()
        assert (result.matched_iou[0] == 0).all()
        assert result.matched_idx[1].tolist() == MaxIoUAssigner(low_quality=mode).assign(
            ANCHORS, [GTS]).matched_idx[0].tolist()
    result = MaxIoUAssigner().assign(ANCHORS, [torch.zeros(0, 4)] * 2, [torch.zeros(0, 4)] * 2)
    assert result.matched_idx.shape == (2, 8) and (result.matched_idx == NEGATIVE).all()


def _random_case(g: torch.Generator, num_anchors: int = 120, max_gts: int = 6, size: int = 64):
    """Integer-coordinate anchors (with duplicates, for IoU ties) and gts on a size x size image."""
    xy = torch.randint(0, size, (num_anchors, 2), generator=g).float()
    wh = torch.randint(4, 24, (num_anchors, 2), generator=g).float()
    anchors = torch.cat([xy, xy + wh], 1)
    anchors[num_anchors // 2:num_anchors // 2 + 10] = anchors[:10]  # exact duplicates -> ties
    k = int(torch.randint(0, max_gts + 1, (1,), generator=g))
    xy = torch.randint(0, size, (k, 2), generator=g).float()
    wh = torch.randint(2, 30, (k, 2), generator=g).float()
    return anchors, torch.cat([xy, xy + wh], 1)


def _torchvision_matches(anchors, gts):
    if gts.numel() == 0:  # torchvision's RetinaNet.compute_loss: all background
        return torch.full((anchors.shape[0],), -1, dtype=torch.long)
    return Matcher(0.5, 0.4, allow_low_quality_matches=True)(tv_box_iou(gts, anchors))


def test_equals_torchvision_matcher_on_random_cases():
    g = torch.Generator().manual_seed(0)
    assigner = MaxIoUAssigner(low_quality="torchvision")
    checked = 0
    for _ in range(12):
        anchors, _ = _random_case(g)
        gts = [_random_case(g)[1] for _ in range(6)]  # 6 images sharing the anchors
        got = assigner.assign(anchors, gts).matched_idx
        for i, boxes in enumerate(gts):
            assert torch.equal(got[i], _torchvision_matches(anchors, boxes)), f"image {i}"
            checked += 1
    assert checked >= 50


def _mmdet_reference(iou: torch.Tensor, min_pos_iou: float = 0.0) -> torch.Tensor:
    """MMDetection's MaxIoUAssigner.assign_wrt_overlaps for (K, M) IoU, iadet's "> min_pos_iou"."""
    matched = torch.full((iou.shape[1],), IGNORED, dtype=torch.long)
    if iou.shape[0] == 0:
        return matched.fill_(NEGATIVE)
    best, argbest = iou.max(dim=0)
    matched[(best >= 0) & (best < 0.4)] = NEGATIVE
    matched[best >= 0.5] = argbest[best >= 0.5]
    gt_best = iou.max(dim=1).values
    for i in range(iou.shape[0]):
        if gt_best[i] > min_pos_iou:
            matched[iou[i] == gt_best[i]] = i
    return matched


def test_gt_mode_equals_mmdetection_loop_and_batched_equals_per_image():
    g = torch.Generator().manual_seed(1)
    assigner = MaxIoUAssigner()
    for _ in range(10):
        anchors, _ = _random_case(g)
        gts = [_random_case(g)[1] for _ in range(5)]
        ignores = [_random_case(g, max_gts=2)[1] for _ in range(5)]
        batched = assigner.assign(anchors, gts, ignores)
        plain = assigner.assign(anchors, gts)
        for i in range(5):
            assert torch.equal(plain.matched_idx[i], _mmdet_reference(tv_box_iou(gts[i], anchors)))
            single = assigner.assign(anchors, [gts[i]], [ignores[i]])
            assert torch.equal(batched.matched_idx[i], single.matched_idx[0])
            torch.testing.assert_close(batched.matched_iou[i], single.matched_iou[0])
