"""iadet's NMS on CUDA tensors against torchvision's CUDA kernel (skipped without a GPU;
``scripts/gpu_check.sh`` runs it on a CUDA machine).

Exactness on a GPU: with integer pixel coordinates (areas < 2**24) every product and sum of
the IoU is exact in float32 and the division is correctly rounded, so iadet and torchvision's
kernel (whose fused multiply-adds cannot round anything then) compute bit-identical IoUs. One
documented difference remains: torchvision's CUDA kernel compares the IoU with the threshold
as a float32 (``const float threshold``), its CPU kernel -- which iadet follows on every
device -- as a double; :func:`cuda_threshold_like_cpu` gives the CUDA kernel the float32 that
makes both comparisons agree. With float coordinates iadet on CUDA must equal iadet on CPU
(and hence torchvision's CPU kernel).
"""
import math

import pytest
import torch
import torchvision

from iadet.ops.nms import batched_nms, nms
from tests.ops.test_nms import clustered_detections, per_class_torchvision_nms, random_case

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")
CUDA = torch.device("cuda")


def cuda_threshold_like_cpu(iou_threshold: float) -> float:
    """The threshold for which torchvision's CUDA test ``float(iou) > float(t)`` equals its CPU
    test ``double(iou) > iou_threshold`` for every float32 IoU."""
    t32 = torch.tensor(iou_threshold, dtype=torch.float32)
    if t32.item() > iou_threshold:  # rounded up (0.3 -> 0.30000001): the CPU kernel suppresses IoU == t32 too
        return torch.nextafter(t32, torch.tensor(-math.inf)).item()
    return iou_threshold


def integer_case(seed: int, num_boxes=None, num_classes=None):
    generator = torch.Generator().manual_seed(1000 + seed)
    if num_boxes is None:
        num_boxes = int(torch.randint(1, 3001, (1,), generator=generator))
        num_classes = int(torch.randint(1, 81, (1,), generator=generator))
    boxes, scores, labels = clustered_detections(num_boxes, num_classes, generator)
    return torch.round(boxes), scores, labels  # distinct scores: CUDA's sort is not stable


@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("seed", range(20))
def test_equals_torchvision_cuda_on_integer_boxes(seed, iou_threshold):
    boxes, scores, labels = (t.to(CUDA) for t in integer_case(seed))
    threshold = cuda_threshold_like_cpu(iou_threshold)
    kept = batched_nms(boxes, scores, labels, iou_threshold)
    assert kept.device.type == "cuda" and kept.dtype == torch.int64
    assert torch.equal(kept, torchvision.ops.batched_nms(boxes, scores, labels, threshold))
    assert torch.equal(nms(boxes, scores, iou_threshold), torchvision.ops.nms(boxes, scores, threshold))


@pytest.mark.parametrize("num_boxes, num_classes", [(5000, 80), (10000, 3), (25000, 80), (10000, 1)])
def test_equals_torchvision_cuda_on_large_integer_inputs(num_boxes, num_classes):
    """25,000 boxes: torchvision's CUDA batched_nms switches to per-class NMS above 20,000."""
    boxes, scores, labels = (t.to(CUDA) for t in integer_case(num_boxes, num_boxes, num_classes))
    for iou_threshold in (0.5, 0.3):
        expected = torchvision.ops.batched_nms(boxes, scores, labels, cuda_threshold_like_cpu(iou_threshold))
        assert torch.equal(batched_nms(boxes, scores, labels, iou_threshold), expected)


@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("seed", range(20))
def test_cuda_equals_cpu_on_float_boxes(seed, iou_threshold):
    boxes, scores, labels = random_case(seed)
    on_cpu = batched_nms(boxes, scores, labels, iou_threshold)
    assert torch.equal(on_cpu, per_class_torchvision_nms(boxes, scores, labels, iou_threshold))
    on_cuda = batched_nms(boxes.to(CUDA), scores.to(CUDA), labels.to(CUDA), iou_threshold)
    assert torch.equal(on_cuda.cpu(), on_cpu)
    assert torch.equal(nms(boxes.to(CUDA), scores.to(CUDA), iou_threshold).cpu(), nms(boxes, scores, iou_threshold))


def test_empty_and_hand_computed_cases_on_cuda():
    empty = batched_nms(torch.zeros((0, 4), device=CUDA), torch.zeros(0, device=CUDA),
                        torch.zeros(0, dtype=torch.int64, device=CUDA), 0.5)
    assert empty.shape == (0,) and empty.device.type == "cuda"
    boxes = torch.tensor([[10.0, 0, 20, 10], [0.0, 0, 10, 10], [5.0, 0, 15, 10]], device=CUDA)
    scores = torch.tensor([0.7, 0.9, 0.8], device=CUDA)
    assert nms(boxes, scores, 0.3).tolist() == [1, 0]  # the greedy chain of tests/ops/test_nms.py
    # IoU 30/100 rounds to 0.30000001 > 0.3 in double (CPU rule, iadet everywhere), not in float32
    pair = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 3, 10]], device=CUDA)
    two = torch.tensor([0.9, 0.8], device=CUDA)
    assert nms(pair, two, 0.3).tolist() == [0] == torchvision.ops.nms(pair.cpu(), two.cpu(), 0.3).tolist()
    assert torchvision.ops.nms(pair, two, cuda_threshold_like_cpu(0.3)).tolist() == [0]
