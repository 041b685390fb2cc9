"""Tests for iadet/ops/nms.py against torchvision's NMS and hand-computed keep lists."""
import pytest
import torch
import torchvision

from iadet.ops import nms as nms_module
from iadet.ops.nms import batched_nms, nms


def clustered_detections(num_boxes: int, num_classes: int, generator: torch.Generator,
                         jitter: float = 0.15, image_size=(800, 1333)):
    """Detector-like output: jittered copies of a few objects, mostly labelled with the
    object's class. Returns (N, 4) float32 xyxy boxes, (N,) distinct scores in (0, 1) and
    (N,) int64 labels in [0, num_classes)."""
    height, width = image_size
    num_objects = max(1, num_boxes // 40)
    center_x = torch.rand(num_objects, generator=generator) * width
    center_y = torch.rand(num_objects, generator=generator) * height
    size = torch.exp(torch.rand(num_objects, generator=generator) * 3.3 + 2.7)  # ~15-400 px
    aspect = torch.exp(torch.rand(num_objects, generator=generator) * 1.4 - 0.7)
    object_w, object_h = size * aspect.sqrt(), size / aspect.sqrt()
    object_class = torch.randint(num_classes, (num_objects,), generator=generator)
    owner = torch.randint(num_objects, (num_boxes,), generator=generator)
    noise = torch.randn(num_boxes, 4, generator=generator) * jitter
    box_w, box_h = object_w[owner], object_h[owner]
    x1 = center_x[owner] - box_w / 2 + noise[:, 0] * box_w
    y1 = center_y[owner] - box_h / 2 + noise[:, 1] * box_h
    x2 = x1 + box_w * torch.exp(noise[:, 2])
    y2 = y1 + box_h * torch.exp(noise[:, 3])
    boxes = torch.stack([x1.clamp(0, width), y1.clamp(0, height),
                         x2.clamp(0, width), y2.clamp(0, height)], dim=1)
    relabel = torch.rand(num_boxes, generator=generator) < 0.2
    labels = torch.where(relabel, torch.randint(num_classes, (num_boxes,), generator=generator),
                         object_class[owner])
    scores = (torch.randperm(num_boxes, generator=generator).float() + 1) / (num_boxes + 1)
    return boxes, scores, labels


def per_class_torchvision_nms(boxes, scores, labels, iou_threshold):
    """torchvision.ops.nms run on each class separately (torchvision's own batched_nms path
    for > 1000 boxes on CPU), merged in decreasing score order."""
    keep_mask = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for label in torch.unique(labels):
        members = torch.where(labels == label)[0]
        kept_members = torchvision.ops.nms(boxes[members], scores[members], iou_threshold)
        keep_mask[members[kept_members]] = True
    kept = torch.where(keep_mask)[0]
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def random_case(seed: int):
    """Mostly small cases (0-300 boxes), every tenth up to 1000; 1-80 classes."""
    generator = torch.Generator().manual_seed(seed)
    max_boxes = 1000 if seed % 10 == 0 else 300
    num_boxes = int(torch.randint(0, max_boxes + 1, (1,), generator=generator))
    num_classes = int(torch.randint(1, 81, (1,), generator=generator))
    jitter = float(torch.rand(1, generator=generator)) * 0.3 + 0.02
    return clustered_detections(num_boxes, num_classes, generator, jitter=jitter)


@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("seed", range(70))
def test_matches_torchvision_on_random_detections(seed, iou_threshold):
    boxes, scores, labels = random_case(seed)
    # Float coordinates: exact per-class NMS, and single-group NMS.
    assert torch.equal(batched_nms(boxes, scores, labels, iou_threshold),
                       per_class_torchvision_nms(boxes, scores, labels, iou_threshold))
    assert torch.equal(nms(boxes, scores, iou_threshold),
                       torchvision.ops.nms(boxes, scores, iou_threshold))
    # On 1/16-pixel coordinates torchvision's coordinate-offset trick (used for <= 1000
    # boxes) rounds nothing, so torchvision.ops.batched_nms itself must agree.
    quantized = torch.round(boxes * 16) / 16
    assert torch.equal(batched_nms(quantized, scores, labels, iou_threshold),
                       torchvision.ops.batched_nms(quantized, scores, labels, iou_threshold))


@pytest.mark.parametrize("num_boxes, num_classes, iou_threshold", [
    (1000, 80, 0.5), (5000, 80, 0.5), (5000, 3, 0.7), (10000, 80, 0.3), (10000, 1, 0.5),
])
def test_matches_torchvision_on_large_inputs(num_boxes, num_classes, iou_threshold):
    generator = torch.Generator().manual_seed(num_boxes + num_classes)
    boxes, scores, labels = clustered_detections(num_boxes, num_classes, generator)
    expected = (torchvision.ops.batched_nms(boxes, scores, labels, iou_threshold)
                if num_boxes > 1000 else per_class_torchvision_nms(boxes, scores, labels,
                                                                   iou_threshold))
    assert torch.equal(batched_nms(boxes, scores, labels, iou_threshold), expected)
    if num_classes == 1:
        assert torch.equal(nms(boxes, scores, iou_threshold),
                           torchvision.ops.nms(boxes, scores, iou_threshold))


@pytest.mark.parametrize("seed", range(6))
def test_small_blocks_and_chunks_match_torchvision(seed, monkeypatch):
    """Many steps, group chunks and kept-box chunks on small inputs."""
    monkeypatch.setattr(nms_module, "MAX_IOU_ELEMENTS", 200)
    monkeypatch.setattr(nms_module, "SPLIT_CHUNK_ELEMENTS", 16)
    generator = torch.Generator().manual_seed(100 + seed)
    boxes, scores, labels = clustered_detections(400, 1 + 3 * seed, generator)
    for block_size in (1, 3, 16):
        kept = nms_module._greedy_nms(boxes, scores, labels, 0.5, block_size)
        assert torch.equal(kept, per_class_torchvision_nms(boxes, scores, labels, 0.5))


def test_greedy_chain_hand_computed():
    # A suppresses B (IoU 50/150 = 1/3 > 0.3); B would suppress C (IoU 1/3) but B is gone,
    # and A does not touch C, so C survives. Input order C, A, B with scores .7, .9, .8.
    box_c, box_a, box_b = [10.0, 0, 20, 10], [0.0, 0, 10, 10], [5.0, 0, 15, 10]
    boxes = torch.tensor([box_c, box_a, box_b])
    scores = torch.tensor([0.7, 0.9, 0.8])
    assert nms(boxes, scores, 0.3).tolist() == [1, 0]  # A then C
    assert nms(boxes, scores, 0.4).tolist() == [1, 2, 0]  # nothing exceeds 0.4
    # Same class for A and B only: B is suppressed, C (own class) survives anyway.
    assert batched_nms(boxes, scores, torch.tensor([1, 0, 0]), 0.3).tolist() == [1, 0]
    # Three classes: nobody suppresses anybody.
    assert batched_nms(boxes, scores, torch.tensor([2, 0, 1]), 0.3).tolist() == [1, 2, 0]


def test_long_chain_longer_than_a_block():
    # Box k = [4k, 0, 4k + 10, 10]: IoU(k, k+1) = 6/14 > 0.3, IoU(k, k+2) = 2/18 < 0.3.
    # Greedy in index order keeps every even box; each decision depends on the previous one.
    num_boxes = 301
    x1 = torch.arange(num_boxes, dtype=torch.float32) * 4
    boxes = torch.stack([x1, torch.zeros(num_boxes), x1 + 10, torch.full((num_boxes,), 10.0)], 1)
    scores = torch.linspace(1.0, 0.1, num_boxes)
    assert torch.equal(nms(boxes, scores, 0.3), torch.arange(0, num_boxes, 2))
    assert torch.equal(batched_nms(boxes, scores, torch.zeros(num_boxes, dtype=torch.int64), 0.3),
                       torch.arange(0, num_boxes, 2))


def test_threshold_is_compared_like_torchvision_in_double():
    # float32 IoU(A, B) = 30/100 -> 0.30000001 > 0.3 in double: B is suppressed.
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 3, 10]])
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.3).tolist() == [0]
    # float32 IoU 70/100 -> 0.69999999 is not > 0.7: both kept.
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 7, 10]])
    assert nms(boxes, scores, 0.7).tolist() == [0, 1]
    # IoU exactly 0.5 (2/4) is not strictly greater than 0.5.
    boxes = torch.tensor([[0.0, 0, 4, 1], [0.0, 0, 2, 1]])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]
    for threshold in (0.3, 0.5, 0.7, 0.49):
        assert torch.equal(nms(boxes, scores, threshold),
                           torchvision.ops.nms(boxes, scores, threshold))


@pytest.mark.parametrize("iou_threshold", [-0.1, 0.0, 0.999, 1.0])
def test_extreme_thresholds_match_torchvision(iou_threshold):
    # A negative threshold suppresses even disjoint boxes (IoU 0 > -0.1), as in torchvision.
    boxes, scores, labels = clustered_detections(300, 4, torch.Generator().manual_seed(11))
    assert torch.equal(nms(boxes, scores, iou_threshold),
                       torchvision.ops.nms(boxes, scores, iou_threshold))
    assert torch.equal(batched_nms(boxes, scores, labels, iou_threshold),
                       per_class_torchvision_nms(boxes, scores, labels, iou_threshold))


def test_degenerate_boxes_match_torchvision():
    # Zero-area boxes: IoU 0/0 = NaN is not > threshold, so identical points both survive.
    boxes = torch.tensor([[5.0, 5, 5, 5], [5.0, 5, 5, 5], [0.0, 0, 10, 10], [2.0, 2, 2, 8],
                          [0.0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1, 2, 3]
    assert torch.equal(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))


def test_empty_and_single_box():
    for kept in (nms(torch.zeros((0, 4)), torch.zeros(0), 0.5),
                 batched_nms(torch.zeros((0, 4)), torch.zeros(0),
                             torch.zeros(0, dtype=torch.int64), 0.5)):
        assert kept.shape == (0,) and kept.dtype == torch.int64 and kept.device.type == "cpu"
    box = torch.tensor([[1.0, 2, 3, 4]])
    assert nms(box, torch.tensor([0.3]), 0.5).tolist() == [0]
    assert batched_nms(box, torch.tensor([0.3]), torch.tensor([7]), 0.5).tolist() == [0]


def test_identical_boxes_only_suppress_within_their_class():
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 4)
    scores = torch.tensor([0.1, 0.4, 0.3, 0.2])
    assert nms(boxes, scores, 0.5).tolist() == [1]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0, 1]), 0.5).tolist() == [1, 2]


def test_tied_scores_follow_index_order_like_torchvision():
    generator = torch.Generator().manual_seed(7)
    boxes, _, labels = clustered_detections(600, 5, generator)
    boxes = torch.round(boxes * 16) / 16
    scores = torch.randint(0, 10, (600,), generator=generator).float()  # many ties
    assert torch.equal(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
    assert torch.equal(batched_nms(boxes, scores, labels, 0.5),
                       torchvision.ops.batched_nms(boxes, scores, labels, 0.5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_match_torchvision(dtype):
    """Half types are computed in float32; float64 stays float64."""
    generator = torch.Generator().manual_seed(3)
    boxes, scores, labels = clustered_detections(500, 10, generator)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    reference_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    reference_boxes, reference_scores = boxes.to(reference_dtype), scores.to(reference_dtype)
    kept = nms(boxes, scores, 0.5)
    assert kept.dtype == torch.int64 and kept.device == boxes.device
    assert torch.equal(kept, torchvision.ops.nms(reference_boxes, reference_scores, 0.5))
    assert torch.equal(batched_nms(boxes, scores, labels, 0.5),
                       per_class_torchvision_nms(reference_boxes, reference_scores, labels, 0.5))


def test_output_is_int64_on_input_device():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 11, 11], [50.0, 50, 60, 60]])
    scores = torch.tensor([0.5, 0.9, 0.1])
    for kept in (nms(boxes, scores, 0.5), batched_nms(boxes, scores, torch.tensor([0, 0, 1]), 0.5)):
        assert kept.dtype == torch.int64 and kept.device == boxes.device
        assert kept.tolist() == [1, 2]


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="idxs"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, dtype=torch.int64), 0.5)
    with pytest.raises(TypeError, match="floating"):
        nms(torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3), 0.5)
