"""ATSS assigner: hand-checked cases and a literal loop-by-loop reference on random pyramids."""
import math

import pytest
import torch

from iadet.models.assigner import IGNORED, NEGATIVE
from iadet.models.atss_assigner import ATSSAssigner
from iadet.ops.boxes import box_iou

IMAGE_H, IMAGE_W = 128, 160
STRIDES = (8, 16, 32, 64, 128)


def pyramid_anchors():
    """9 anchors per location (3 scales x 3 ratios, size 4 * stride), strides 8..128, plus a
    5-anchor level (smaller than k) and an empty level. Returns anchors and level sizes."""
    shapes = []
    for scale in (1.0, 2 ** (1 / 3), 2 ** (2 / 3)):
        for ratio in (0.5, 1.0, 2.0):
            shapes.append((scale / math.sqrt(ratio), scale * math.sqrt(ratio)))
    levels = []
    for stride in STRIDES:
        boxes = []
        for y in range(math.ceil(IMAGE_H / stride)):
            for x in range(math.ceil(IMAGE_W / stride)):
                cx, cy = x * stride + stride / 2, y * stride + stride / 2
                for w, h in shapes:
                    w, h = w * 4 * stride, h * 4 * stride
                    boxes.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        levels.append(torch.tensor(boxes))
    small = levels[-1][:5] + 7.0  # a level of 5 anchors
    levels += [torch.zeros((0, 4)), small]
    sizes = [len(level) for level in levels]
    return torch.cat(levels).float(), sizes


ANCHORS, LEVELS = pyramid_anchors()


def random_gts(gen, count):
    """Tiny to huge boxes, some on an 8-pixel grid (distance ties), some duplicated."""
    if count == 0:
        return torch.zeros((0, 4))
    centre = torch.rand(count, 2, generator=gen) * torch.tensor([IMAGE_W + 20.0, IMAGE_H + 20.0]) - 10
    size = torch.exp(torch.rand(count, 2, generator=gen) * math.log(400.0)) * 0.75 + 0.5
    on_grid = torch.rand(count, generator=gen) < 0.3
    centre = torch.where(on_grid[:, None], (centre / 8).round() * 8, centre)
    size = torch.where(on_grid[:, None], (size / 8).round().clamp(min=1) * 8, size)
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    dup = torch.rand(count, generator=gen) < 0.15
    src = torch.randint(0, count, (count,), generator=gen)
    return torch.where(dup[:, None], boxes[src], boxes)


def locations_of(start, size, per_location):
    """The locations of one level: runs of ``per_location`` consecutive anchors."""
    return [list(range(a, a + per_location)) for a in range(start, start + size, per_location)]


def reference_assign(anchors, gt_boxes, ignore_boxes, levels, topk, ignore_iof_thr, per_location=1):
    """ATSS written out one image, one ground truth, one level and one anchor at a time;
    ``per_location`` > 1: the topk nearest locations of each level (a location's centre: its first
    anchor's), with all their anchors."""
    num_anchors = len(anchors)
    acx = (anchors[:, 0] + anchors[:, 2]) / 2.0
    acy = (anchors[:, 1] + anchors[:, 3]) / 2.0
    all_idx, all_iou = [], []
    for image, gts in enumerate(gt_boxes):
        ious, positive_sets = [], []
        for g in gts:
            iou = box_iou(g[None], anchors)[0].tolist()
            gcx, gcy = (g[0] + g[2]) / 2.0, (g[1] + g[3]) / 2.0
            dx, dy = acx - gcx, acy - gcy
            distance = (dx * dx + dy * dy).sqrt().tolist()
            candidates, start = [], 0
            for size in levels:
                if per_location > 1:
                    nearest = sorted(locations_of(start, size, per_location), key=lambda m: (distance[m[0]], m[0]))
                    candidates += [a for members in nearest[:topk] for a in members]
                else:
                    nearest = sorted(range(start, start + size), key=lambda a: (distance[a], a))
                    candidates += nearest[:min(topk, size)]
                start += size
            values = [iou[a] for a in candidates]
            n = len(values)
            if n >= 2:
                mean = sum(values) / n
                std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))  # unbiased
                threshold = mean + std
            else:
                threshold = math.inf
            left, top = (acx - g[0]).tolist(), (acy - g[1]).tolist()
            right, bottom = (g[2] - acx).tolist(), (g[3] - acy).tolist()
            positives = set()
            for a in candidates:
                if iou[a] >= threshold and min(left[a], top[a], right[a], bottom[a]) > 0.01:
                    positives.add(a)
            ious.append(iou)
            positive_sets.append(positives)
        idx_row, iou_row = [], []
        for a in range(num_anchors):
            best, winner = -1.0, NEGATIVE
            for j in range(len(gts)):
                if a in positive_sets[j] and ious[j][a] > best:  # strict: first gt on ties
                    best, winner = ious[j][a], j
            if winner == NEGATIVE:
                best = max([0.0] + [ious[j][a] for j in range(len(gts))])
            idx_row.append(winner)
            iou_row.append(best)
        if ignore_boxes is not None and ignore_iof_thr > 0:
            for region in ignore_boxes[image]:
                w = (torch.min(anchors[:, 2], region[2]) - torch.max(anchors[:, 0], region[0])).clamp(min=0)
                h = (torch.min(anchors[:, 3], region[3]) - torch.max(anchors[:, 1], region[1])).clamp(min=0)
                area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
                iof = (w * h / area).tolist()
                for a in range(num_anchors):
                    if idx_row[a] < 0 and iof[a] > ignore_iof_thr:
                        idx_row[a] = IGNORED
        all_idx.append(idx_row)
        all_iou.append(iou_row)
    return (torch.tensor(all_idx, dtype=torch.long).view(len(gt_boxes), num_anchors),
            torch.tensor(all_iou).view(len(gt_boxes), num_anchors))


def check_against_reference(gt_boxes, ignore_boxes=None, topk=9, anchors=ANCHORS, levels=LEVELS, per_location=1):
    got = ATSSAssigner(topk=topk, anchors_per_location=per_location).assign(anchors, gt_boxes, ignore_boxes, levels)
    want_idx, want_iou = reference_assign(anchors, gt_boxes, ignore_boxes, levels, topk, 0.5, per_location)
    assert torch.equal(got.matched_idx, want_idx)
    torch.testing.assert_close(got.matched_iou, want_iou, rtol=0, atol=1e-6)
    return got


@pytest.mark.parametrize("seed", range(6))
def test_random_batches_match_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    counts = [int(torch.randint(0, 31, (1,), generator=gen)), 0, 30]
    gts = [random_gts(gen, c) for c in counts]
    got = check_against_reference(gts)
    assert (got.matched_idx[1] == NEGATIVE).all() and (got.matched_iou[1] == 0).all()
    assert (got.matched_idx[2] >= 0).any()


@pytest.mark.parametrize("topk", [1, 2, 4, 20])
def test_other_topk_match_reference(topk):
    gen = torch.Generator().manual_seed(100 + topk)
    check_against_reference([random_gts(gen, 12), random_gts(gen, 3)], topk=topk)


@pytest.mark.parametrize("topk", [1, 9])
def test_topk_counted_in_locations_matches_reference(topk):
    # the ATSS authors' rule on 9 anchors per location: the anchors of the topk nearest locations
    gen = torch.Generator().manual_seed(200 + topk)
    gts = [random_gts(gen, 15), random_gts(gen, 0), random_gts(gen, 4)]
    whole = sum(LEVELS[:-1])  # without the last level of 5 anchors: every level is whole locations of 9
    got = check_against_reference(gts, [random_gts(gen, 2), random_gts(gen, 0), random_gts(gen, 1)], topk=topk,
                                  anchors=ANCHORS[:whole], levels=LEVELS[:-1], per_location=9)
    per_anchor = ATSSAssigner(topk=topk).assign(ANCHORS[:whole], gts, None, LEVELS[:-1])
    assert not torch.equal(got.matched_idx, per_anchor.matched_idx)


def test_random_ignore_regions_match_reference():
    gen = torch.Generator().manual_seed(7)
    gts = [random_gts(gen, 10), random_gts(gen, 0), random_gts(gen, 25)]
    ignore = [random_gts(gen, 3), random_gts(gen, 2), random_gts(gen, 0)]
    got = check_against_reference(gts, ignore)
    assert (got.matched_idx == IGNORED).any()


def test_duplicate_gts_go_to_the_first():
    gen = torch.Generator().manual_seed(3)
    boxes = random_gts(gen, 6)
    doubled = torch.cat([boxes, boxes])
    got = check_against_reference([doubled]).matched_idx
    assert (got < 6).all() and (got >= 0).any()


# Hand-checked: gt [0, 0, 10, 10], one level of 5 anchors, topk 9 -> all 5 are candidates.
HAND_GT = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
HAND_ANCHORS = torch.tensor([
    [0.0, 0.0, 10.0, 10.0],    # IoU 1, centre (5, 5)
    [0.0, 0.0, 10.0, 9.0],     # IoU 0.9, centre (5, 4.5) inside
    [20.0, 0.0, 30.0, 10.0],   # IoU 0
    [0.0, 20.0, 10.0, 30.0],   # IoU 0
    [20.0, 20.0, 30.0, 30.0],  # IoU 0
])


def test_hand_checked_unbiased_std():
    # mean = 1.9 / 5 = 0.38; squared deviations 0.3844 + 0.2704 + 3 * 0.1444 = 1.088;
    # unbiased std = sqrt(1.088 / 4) = 0.52154 -> threshold 0.90154 > 0.9: only anchor 0.
    # (The population std sqrt(1.088 / 5) = 0.46648 would give 0.84648 and admit anchor 1.)
    got = ATSSAssigner().assign(HAND_ANCHORS, [HAND_GT], num_anchors_per_level=[5])
    assert got.matched_idx.tolist() == [[0, NEGATIVE, NEGATIVE, NEGATIVE, NEGATIVE]]
    torch.testing.assert_close(got.matched_iou, torch.tensor([[1.0, 0.9, 0.0, 0.0, 0.0]]))
    # Two candidates (1, 0.9): mean + std = 0.95 + 0.0707 > 1, never positive; one candidate:
    # no std, no positive. Two levels [2, 3] with topk 9: all 5 candidates again.
    for topk, levels in ((2, [5]), (1, [5])):
        assert (ATSSAssigner(topk).assign(HAND_ANCHORS, [HAND_GT], None, levels).matched_idx < 0).all()
    assert ATSSAssigner().assign(HAND_ANCHORS, [HAND_GT], None, [2, 3]).matched_idx[0, 0] == 0


def test_hand_checked_topk_counts_locations():
    # two levels of two locations with two anchors each; gt [0, 0, 10, 10]
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 9.0, 9.0],         # (5, 5): IoU 1, 0.64
                            [20.0, 0.0, 30.0, 10.0], [21.0, 1.0, 29.0, 9.0],      # (25, 5): 0, 0
                            [-5.0, -5.0, 15.0, 15.0], [-10.0, -10.0, 20.0, 20.0],  # (5, 5): 0.25, 1/9
                            [40.0, 0.0, 50.0, 10.0], [35.0, -5.0, 55.0, 15.0]])    # (45, 5): 0, 0
    # one location per level: candidates 1, 0.64, 0.25, 0.111; mean 0.50028, unbiased std 0.40139,
    # threshold 0.90167: anchor 0 alone
    got = ATSSAssigner(topk=1, anchors_per_location=2).assign(anchors, [HAND_GT], None, [4, 4])
    assert got.matched_idx.tolist() == [[0] + [NEGATIVE] * 7]
    # one anchor per level: candidates 1 and 0.25, threshold 0.625 + 0.53033 > 1: no positive
    assert (ATSSAssigner(topk=1).assign(anchors, [HAND_GT], None, [4, 4]).matched_idx == NEGATIVE).all()
    with pytest.raises(ValueError, match="anchors_per_location"):
        ATSSAssigner(anchors_per_location=0)
    with pytest.raises(ValueError, match="not whole locations of anchors_per_location=2"):
        ATSSAssigner(anchors_per_location=2).assign(anchors[:7], [HAND_GT], None, [4, 3])


def test_threshold_is_inclusive():
    # Four halves of the gt, all IoU 0.5, centres inside: std 0, threshold exactly 0.5, and
    # IoU >= threshold admits all four (a strict > would admit none).
    halves = torch.tensor([[0.0, 0.0, 10.0, 5.0], [0.0, 5.0, 10.0, 10.0],
                           [0.0, 0.0, 5.0, 10.0], [5.0, 0.0, 10.0, 10.0]])
    got = ATSSAssigner().assign(halves, [HAND_GT], None, [4])
    assert got.matched_idx.tolist() == [[0, 0, 0, 0]]
    assert got.matched_iou.tolist() == [[0.5] * 4]


def test_centre_inside_is_strict_with_eps():
    # Anchor 0 (centre (0, 5)) is the only overlapping candidate of 4: threshold
    # mean + std = 0.25 u + 0.5 u < u, so it is positive iff its centre is inside.
    anchors = torch.tensor([[-5.0, 0.0, 5.0, 10.0], [40.0, 40.0, 50.0, 50.0],
                            [60.0, 60.0, 70.0, 70.0], [80.0, 80.0, 90.0, 90.0]])
    at_eps = torch.tensor([[-0.01, 0.0, 10.0, 10.0]])     # centre - x1 = 0.01: not > 0.01
    beyond = torch.tensor([[-0.02, 0.0, 10.0, 10.0]])     # 0.02 > 0.01
    on_side = torch.tensor([[0.0, 0.0, 10.0, 10.0]])      # centre on the left side
    got = ATSSAssigner().assign(anchors, [at_eps, beyond, on_side], None, [1, 1, 2])
    assert got.matched_idx[:, 0].tolist() == [NEGATIVE, 0, NEGATIVE]
    check_against_reference([at_eps, beyond, on_side], anchors=anchors, levels=[1, 1, 2])


def test_distance_ties_go_to_the_lowest_index():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])  # centre (5, 5)
    same_centre = [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 9.0, 9.0]]   # IoU 1, 0.64, distance 0
    tied = [[-1.0, 0.0, 9.0, 10.0], [5.0, 4.0, 7.0, 6.0]]          # IoU 0.818, 0.04, distance 1
    # topk 3 takes both distance-0 anchors and the first tied one:
    # {1, 0.64, 0.818}: threshold 0.8194 + 0.1800 = 0.9994 -> anchor 0 positive.
    first = torch.tensor(same_centre + tied)
    assert ATSSAssigner(3).assign(first, [gt], None, [4]).matched_idx.tolist() == [[0, -1, -1, -1]]
    # Swapped: {1, 0.64, 0.04}: threshold 0.56 + 0.485 = 1.045 -> nothing positive.
    second = torch.tensor(same_centre + tied[::-1])
    assert ATSSAssigner(3).assign(second, [gt], None, [4]).matched_idx.tolist() == [[-1, -1, -1, -1]]


def test_hand_checked_ignore_regions():
    ignore = torch.tensor([
        [-5.0, -5.0, 15.0, 15.0],   # covers anchors 0 and 1: 0 stays positive, 1 becomes ignored
        [20.0, 20.0, 30.0, 25.0],   # anchor 4: IoF exactly 0.5, not > 0.5: stays negative
        [20.0, 0.0, 30.0, 10.0],    # anchor 2: IoF 1 -> ignored
    ])
    got = ATSSAssigner().assign(HAND_ANCHORS, [HAND_GT], [ignore], [5]).matched_idx
    assert got.tolist() == [[0, IGNORED, IGNORED, NEGATIVE, NEGATIVE]]
    off = ATSSAssigner(ignore_iof_thr=-1).assign(HAND_ANCHORS, [HAND_GT], [ignore], [5]).matched_idx
    assert off.tolist() == [[0, NEGATIVE, NEGATIVE, NEGATIVE, NEGATIVE]]
    # An image without gts: covered anchors ignored, the rest negative.
    empty = ATSSAssigner().assign(HAND_ANCHORS, [torch.zeros((0, 4))], [ignore], [5]).matched_idx
    assert empty.tolist() == [[IGNORED, IGNORED, IGNORED, NEGATIVE, NEGATIVE]]


def test_empty_levels_and_no_anchors():
    got = ATSSAssigner().assign(HAND_ANCHORS, [HAND_GT, HAND_GT], None, [0, 5, 0])
    assert got.matched_idx.tolist() == [[0, -1, -1, -1, -1]] * 2
    none = ATSSAssigner().assign(torch.zeros((0, 4)), [HAND_GT, torch.zeros((0, 4))], [HAND_GT] * 2, [0, 0])
    assert none.matched_idx.shape == (2, 0) and none.matched_iou.shape == (2, 0)
    assert none.matched_idx.dtype == torch.long


def test_num_anchors_per_level_is_checked():
    with pytest.raises(ValueError, match="num_anchors_per_level"):
        ATSSAssigner().assign(HAND_ANCHORS, [HAND_GT])
    with pytest.raises(ValueError, match="sum to the number of anchors 5"):
        ATSSAssigner().assign(HAND_ANCHORS, [HAND_GT], None, [2, 2])
    with pytest.raises(ValueError):
        ATSSAssigner(topk=0)
