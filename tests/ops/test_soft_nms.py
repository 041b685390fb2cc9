"""Tests for iadet/ops/soft_nms.py against literal one-box-at-a-time loops and hand-computed cases."""
import math

import pytest
import torch

from iadet.ops.soft_nms import iou_guided_nms, soft_nms

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def iou_row(boxes: torch.Tensor, i: int) -> torch.Tensor:
    """IoU of box ``i`` with every box -> (N,), torchvision / mmcv (offset 0) arithmetic."""
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    width = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
    height = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
    inter = width * height
    return inter / (areas[i] + areas - inter)


def reference_soft_nms(boxes, scores, idxs, method, iou_threshold, sigma, min_score):
    """The plain Soft-NMS loop over all boxes at once: pick the highest current score of any
    group (ties: lowest index), rescale the remaining boxes of its group, drop those under
    ``min_score``. Only the row of IoUs of the picked box is vectorised."""
    floor = torch.tensor(min_score, dtype=scores.dtype, device=scores.device)
    threshold = torch.tensor(iou_threshold, dtype=boxes.dtype, device=boxes.device)
    current = scores.clone()
    alive = current >= floor
    keep, kept_scores = [], []
    while bool(alive.any()):
        best = current[alive].max()
        i = int(torch.nonzero(alive & (current == best))[0, 0])
        keep.append(i)
        kept_scores.append(current[i].item())
        alive[i] = False
        overlap = iou_row(boxes, i).nan_to_num(nan=0.0)
        if method == "linear":
            weight = torch.where(overlap >= threshold, 1 - overlap, torch.ones_like(overlap))
        else:
            weight = torch.exp(-(overlap * overlap) / sigma)
        same = alive & (idxs == idxs[i])
        current = torch.where(same, current * weight, current)
        alive &= ~(same & (current < floor))
    return keep, kept_scores


def reference_iou_guided_nms(boxes, cls_scores, iou_scores, idxs, iou_threshold):
    """The plain IoU-guided NMS loop: visit by decreasing predicted IoU (ties: lower index);
    a kept box suppresses the later, unsuppressed boxes of its group with IoU > threshold and
    takes the maximum classification score of itself and those boxes."""
    order = torch.sort(iou_scores, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    keep, new_scores = [], []
    for i in order.tolist():
        if suppressed[i]:
            continue
        cluster = (~suppressed & (rank > rank[i]) & (idxs == idxs[i])
                   & (iou_row(boxes, i).double() > iou_threshold))
        keep.append(i)
        new_scores.append(torch.cat([cls_scores[i:i + 1], cls_scores[cluster]]).max().item())
        suppressed |= cluster
    by_score = sorted(range(len(keep)), key=lambda k: -new_scores[k])  # stable: visiting order
    return [keep[k] for k in by_score], [new_scores[k] for k in by_score]


def clustered_case(num_boxes, num_classes, tied, seed, dtype=torch.float32):
    """Jittered copies of a few centres (so suppression happens), some exact duplicates and
    optionally scores drawn from a few values (ties). Returns boxes, scores, iou_scores,
    labels."""
    generator = torch.Generator().manual_seed(seed)
    num_centres = max(1, num_boxes // 25)
    centre = torch.rand(num_centres, 2, generator=generator) * 600
    size = torch.rand(num_centres, 2, generator=generator) * 150 + 10
    owner = torch.randint(num_centres, (num_boxes,), generator=generator)
    noise = torch.randn(num_boxes, 4, generator=generator) * 0.1
    low = centre[owner] - size[owner] / 2 + noise[:, :2] * size[owner]
    high = low + size[owner] * torch.exp(noise[:, 2:])
    boxes = torch.cat([low, high], dim=1)
    if num_boxes > 1:  # exact duplicates of random boxes
        copies = torch.randint(num_boxes, (num_boxes // 5,), generator=generator)
        boxes[torch.randint(num_boxes, (num_boxes // 5,), generator=generator)] = boxes[copies]
    if tied:
        levels = torch.tensor([0.002, 0.05, 0.3, 0.6, 0.9])
        scores = levels[torch.randint(5, (num_boxes,), generator=generator)]
        iou_scores = levels[torch.randint(2, 5, (num_boxes,), generator=generator)]
    else:
        scores = torch.rand(num_boxes, generator=generator)
        iou_scores = torch.rand(num_boxes, generator=generator)
    labels = torch.randint(num_classes, (num_boxes,), generator=generator)
    return boxes.to(dtype), scores.to(dtype), iou_scores.to(dtype), labels


CASES = [(n, classes, tied) for n in (0, 1, 2, 10, 300) for classes in (1, 7, 80)
         for tied in (False, True) if not (n < 10 and classes == 7)]


def check_against_references(boxes, scores, iou_scores, labels, seed):
    """All three algorithms against their reference loops; thresholds vary with ``seed``."""
    iou_threshold = (0.3, 0.5, 0.7)[seed % 3]
    min_score = (1e-3, 0.05)[seed % 2]
    for method in ("linear", "gaussian"):
        keep, new_scores = soft_nms(boxes, scores, labels, method, iou_threshold, 0.5, min_score)
        ref_keep, ref_scores = reference_soft_nms(boxes, scores, labels, method, iou_threshold,
                                                  0.5, min_score)
        assert keep.tolist() == ref_keep, method
        assert keep.dtype == torch.int64 and new_scores.dtype == scores.dtype
        torch.testing.assert_close(new_scores.cpu().double(), torch.tensor(ref_scores).double(),
                                   rtol=0, atol=1e-6)
    keep, new_scores = iou_guided_nms(boxes, scores, iou_scores, labels, iou_threshold)
    ref_keep, ref_scores = reference_iou_guided_nms(boxes, scores, iou_scores, labels,
                                                    iou_threshold)
    assert keep.tolist() == ref_keep
    assert new_scores.tolist() == ref_scores  # a max of inputs: exact


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_boxes,num_classes,tied", CASES)
def test_random_cases_match_reference_loops(num_boxes, num_classes, tied, dtype):
    seed = num_boxes * 1000 + num_classes * 10 + tied
    boxes, scores, iou_scores, labels = clustered_case(num_boxes, num_classes, tied, seed, dtype)
    check_against_references(boxes, scores, iou_scores, labels, seed)


def test_5000_boxes_match_reference_loops():
    boxes, scores, iou_scores, labels = clustered_case(5000, 4, tied=True, seed=5)
    check_against_references(boxes, scores, iou_scores, labels, seed=5)


def test_empty_outputs_have_right_dtype():
    boxes, scores = torch.zeros((0, 4), dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    labels = torch.zeros(0, dtype=torch.int64)
    for keep, new_scores in (soft_nms(boxes, scores, labels),
                             iou_guided_nms(boxes, scores, scores, labels)):
        assert keep.shape == (0,) and keep.dtype == torch.int64
        assert new_scores.shape == (0,) and new_scores.dtype == torch.float64


# Two boxes with IoU exactly 1/2: intersection 2, union 4.
HALF_IOU_BOXES = torch.tensor([[0.0, 0.0, 3.0, 1.0], [1.0, 0.0, 4.0, 1.0]])
SAME_CLASS = torch.tensor([0, 0])


def test_linear_weight_is_one_minus_iou_from_the_threshold_on():
    scores = torch.tensor([0.9, 0.8])
    for threshold in (0.3, 0.5):  # 0.5: IoU == threshold is rescaled (mmcv's >=)
        keep, new_scores = soft_nms(HALF_IOU_BOXES, scores, SAME_CLASS, "linear", threshold)
        assert keep.tolist() == [0, 1]
        assert new_scores.tolist() == [pytest.approx(0.9), pytest.approx(0.4)]
    keep, new_scores = soft_nms(HALF_IOU_BOXES, scores, SAME_CLASS, "linear", 0.6)
    assert new_scores.tolist() == [pytest.approx(0.9), pytest.approx(0.8)]


def test_gaussian_weight():
    scores = torch.tensor([0.9, 0.8], dtype=torch.float64)
    keep, new_scores = soft_nms(HALF_IOU_BOXES.double(), scores, SAME_CLASS, "gaussian",
                                sigma=0.5)
    assert keep.tolist() == [0, 1]
    assert new_scores[1].item() == pytest.approx(0.8 * math.exp(-0.25 / 0.5), rel=1e-12)


def test_rescaled_box_moves_behind_and_low_scores_are_dropped():
    boxes = torch.cat([HALF_IOU_BOXES, torch.tensor([[10.0, 10.0, 11.0, 11.0]])])
    keep, new_scores = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.5]), torch.tensor([0, 0, 0]))
    assert keep.tolist() == [0, 2, 1]
    assert new_scores.tolist() == pytest.approx([0.9, 0.5, 0.4])
    # 0.0015 * (1 - 0.5) < 1e-3: dropped; an input score under min_score is dropped up front.
    keep, _ = soft_nms(boxes, torch.tensor([0.9, 0.0015, 0.0005]), torch.tensor([0, 0, 0]))
    assert keep.tolist() == [0]


def test_equal_scores_pick_lower_index_first():
    disjoint = torch.tensor([[0.0, 0, 1, 1], [2, 0, 3, 1], [4, 0, 5, 1]])
    for method in ("linear", "gaussian"):
        keep, _ = soft_nms(disjoint, torch.tensor([0.5, 0.7, 0.7]), torch.tensor([0, 0, 0]),
                           method)
        assert keep.tolist() == [1, 2, 0]
    # Identical boxes: the pick zeroes the others (1 - IoU = 0); the tie at 0 goes by index.
    same = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3)
    keep, new_scores = soft_nms(same, torch.tensor([0.5, 0.7, 0.7]), torch.tensor([0, 0, 0]),
                                "linear", min_score=0.0)
    assert keep.tolist() == [1, 0, 2] and new_scores.tolist() == pytest.approx([0.7, 0, 0])
    keep, _ = iou_guided_nms(same, torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.7, 0.7]),
                             torch.tensor([0, 0, 0]))
    assert keep.tolist() == [1]


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_groups_never_interact(method):
    boxes = HALF_IOU_BOXES.repeat(3, 1)  # the same two boxes in three classes
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    keep, new_scores = soft_nms(boxes, scores, labels, method)
    weight = 0.5 if method == "linear" else math.exp(-0.5)
    assert keep.tolist() == [0, 2, 4, 1, 3, 5]
    assert new_scores.tolist() == pytest.approx([0.9, 0.7, 0.5] + [s * weight for s in
                                                                   (0.8, 0.6, 0.4)])
    labels = torch.arange(6)  # all distinct: nothing changes
    keep, new_scores = soft_nms(boxes, scores, labels, method)
    assert keep.tolist() == list(range(6)) and torch.equal(new_scores, scores)
    keep, new_scores = iou_guided_nms(boxes, scores, scores, labels, 0.3)
    assert keep.tolist() == list(range(6)) and torch.equal(new_scores, scores)


def test_iou_guided_cluster_max():
    # A overlaps B, B overlaps C, A does not overlap C (IoU 0.538, 0.538, 0.25).
    boxes = torch.tensor([[0.0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]])
    labels = torch.tensor([0, 0, 0])
    # Visit A, B, C: A keeps and absorbs B; C survives since B was suppressed.
    keep, new_scores = iou_guided_nms(boxes, torch.tensor([0.3, 0.6, 0.9]),
                                      torch.tensor([0.9, 0.8, 0.7]), labels)
    assert keep.tolist() == [2, 0] and new_scores.tolist() == pytest.approx([0.9, 0.6])
    # Visit A, C, B: B overlaps both kept boxes but belongs to A's cluster only.
    keep, new_scores = iou_guided_nms(boxes, torch.tensor([0.1, 0.95, 0.2]),
                                      torch.tensor([0.9, 0.7, 0.8]), labels)
    assert keep.tolist() == [0, 2] and new_scores.tolist() == pytest.approx([0.95, 0.2])


def test_half_precision_inputs_are_computed_in_float32():
    boxes, scores, iou_scores, labels = clustered_case(50, 3, tied=False, seed=3)
    keep, new_scores = soft_nms(boxes.half(), scores.half(), labels)
    ref_keep, _ = reference_soft_nms(boxes.half().float(), scores.half().float(), labels,
                                     "linear", 0.3, 0.5, 1e-3)
    assert keep.tolist() == ref_keep and new_scores.dtype == torch.float32


def test_invalid_method_is_rejected():
    with pytest.raises(ValueError):
        soft_nms(HALF_IOU_BOXES, torch.tensor([0.9, 0.8]), SAME_CLASS, "hard")


@CUDA
@pytest.mark.parametrize("num_boxes,num_classes,tied", [(300, 1, True), (300, 80, False),
                                                        (5000, 4, True)])
def test_cuda_matches_reference_loops(num_boxes, num_classes, tied):
    case = clustered_case(num_boxes, num_classes, tied, seed=num_boxes + num_classes)
    boxes, scores, iou_scores, labels = (tensor.cuda() for tensor in case)
    check_against_references(boxes, scores, iou_scores, labels, seed=num_boxes)
    keep, _ = soft_nms(boxes, scores, labels)
    assert keep.device == boxes.device
