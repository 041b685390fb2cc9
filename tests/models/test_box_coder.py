"""Delta box coder against hand-computed values and torchvision's BoxCoder."""
import math

import torch
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder

from iadet.models.box_coder import DEFAULT_SCALE_CLAMP, DeltaBoxCoder


def test_encode_by_hand():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])      # centre (5, 10), w 10, h 20
    box = torch.tensor([[2.0, 4.0, 22.0, 14.0]])         # centre (12, 9), w 20, h 10
    deltas = DeltaBoxCoder().encode(box, anchor)
    torch.testing.assert_close(deltas, torch.tensor([[0.7, -0.05, math.log(2.0), math.log(0.5)]]))


def test_round_trip():
    g = torch.Generator().manual_seed(0)
    anchors = torch.rand(100, 2, generator=g) * 100
    anchors = torch.cat([anchors, anchors + 5 + torch.rand(100, 2, generator=g) * 50], 1)
    boxes = torch.rand(100, 2, generator=g) * 100
    boxes = torch.cat([boxes, boxes + 5 + torch.rand(100, 2, generator=g) * 50], 1)
    coder = DeltaBoxCoder()
    torch.testing.assert_close(coder.decode(coder.encode(boxes, anchors), anchors), boxes, atol=1e-4, rtol=0)


def test_equals_torchvision_with_upper_clamp():
    g = torch.Generator().manual_seed(1)
    anchors = torch.rand(500, 2, generator=g) * 500
    anchors = torch.cat([anchors, anchors + 4 + torch.rand(500, 2, generator=g) * 300], 1)
    deltas = torch.randn(500, 4, generator=g) * 3  # includes values beyond the clamp on both sides
    reference = TorchvisionBoxCoder(weights=(1.0, 1.0, 1.0, 1.0)).decode_single(deltas, anchors)
    got = DeltaBoxCoder(clamp="upper").decode(deltas, anchors)
    torch.testing.assert_close(got, reference, atol=1e-3, rtol=1e-6)
    boxes = reference[:50]
    torch.testing.assert_close(DeltaBoxCoder().encode(boxes, anchors[:50]),
                               TorchvisionBoxCoder(weights=(1.0, 1.0, 1.0, 1.0)).encode_single(boxes, anchors[:50]),
                               atol=1e-5, rtol=1e-5)


def test_clamp_both_sides():
    anchor = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    big = DeltaBoxCoder().decode(torch.tensor([[0.0, 0.0, 100.0, -100.0]]), anchor)
    w = 16 * math.exp(DEFAULT_SCALE_CLAMP)   # 1000 px
    h = 16 * math.exp(-DEFAULT_SCALE_CLAMP)  # 0.256 px
    torch.testing.assert_close(big, torch.tensor([[8 - w / 2, 8 - h / 2, 8 + w / 2, 8 + h / 2]]))
    upper = DeltaBoxCoder(clamp="upper").decode(torch.tensor([[0.0, 0.0, 0.0, -100.0]]), anchor)
    assert upper[0, 3] - upper[0, 1] < 1e-6  # not clamped from below


def test_batched_shapes():
    coder = DeltaBoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).expand(7, 4)
    out = coder.decode(torch.zeros(3, 7, 4), anchors)
    assert out.shape == (3, 7, 4)
    torch.testing.assert_close(out, anchors.expand(3, 7, 4))
