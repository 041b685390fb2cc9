"""Anchors: torchvision equality in compat mode, hand-computed values in the default mode."""
import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from iadet.models.anchors import AnchorGenerator


@pytest.mark.parametrize("image_size", [(800, 1216), (100, 152), (64, 64), (608, 800)])
def test_torchvision_style_equals_torchvision(image_size):
    sizes = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in [32, 64, 128, 256, 512])
    reference = TorchvisionAnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    h, w = image_size
    feats, fh, fw = [], h, w
    for _ in range(5):  # the padded batch through stride-2 convs: ceil halving
        fh, fw = (fh + 1) // 2 if len(feats) else math.ceil(h / 8), (fw + 1) // 2 if len(feats) else math.ceil(w / 8)
        feats.append(torch.zeros(1, 1, fh, fw))
    expected = reference(ImageList(torch.zeros(1, 3, h, w), [image_size]), feats)[0]
    got = torch.cat(AnchorGenerator(style="torchvision")(feats, image_size))
    assert torch.equal(got, expected)


def test_default_p3_anchors_by_hand():
    gen = AnchorGenerator()
    p3 = gen.grid_anchors([(2, 3), (1, 2), (1, 1), (1, 1), (1, 1)], (16, 24))[0]
    assert p3.shape == (2 * 3 * 9, 4)
    r = math.sqrt(2.0)
    s = [32.0, 32.0 * 2 ** (1 / 3), 32.0 * 2 ** (2 / 3)]
    # ratio h/w = 0.5: w = s * sqrt(2), h = s / sqrt(2); ratio 1: square; ratio 2: w = s / sqrt(2).
    cell = torch.tensor(
        [[-x * r / 2, -x / r / 2, x * r / 2, x / r / 2] for x in s]
        + [[-x / 2, -x / 2, x / 2, x / 2] for x in s]
        + [[-x / r / 2, -x * r / 2, x / r / 2, x * r / 2] for x in s])
    torch.testing.assert_close(p3[:9], cell)
    # the anchor at row y=1, column x=2 is shifted by (16, 8) pixels: layout (y, x, a)
    torch.testing.assert_close(p3[(1 * 3 + 2) * 9:(1 * 3 + 2) * 9 + 9], cell + torch.tensor([16.0, 8.0, 16.0, 8.0]))
    torch.testing.assert_close(p3[9 * 4], torch.tensor([-22.627417, -11.313708, 22.627417, 11.313708]) + torch.tensor([8.0, 8.0, 8.0, 8.0]))


def test_default_p7_anchors_by_hand():
    gen = AnchorGenerator()
    p7 = gen.grid_anchors([(1, 1)] * 4 + [(2, 2)], (256, 256))[4]
    # P7: stride 128, base size 512; the square middle-scale anchor is 512 * 2**(1/3) = 645.08 wide.
    half = 512 * 2 ** (1 / 3) / 2
    torch.testing.assert_close(p7[4], torch.tensor([-half, -half, half, half]))
    torch.testing.assert_close(p7[9 + 4], torch.tensor([128 - half, -half, 128 + half, half]))
    torch.testing.assert_close(p7[27 + 3], torch.tensor([128 - 256.0, 128 - 256.0, 128 + 256.0, 128 + 256.0]))
    assert p7.shape == (4 * 9, 4)


def test_anchor_count_matches_head_layout():
    gen = AnchorGenerator()
    feats = [torch.zeros(2, 1, 100 // s, 100 // s) for s in (8, 16, 32, 64)] + [torch.zeros(2, 1, 1, 1)]
    anchors = gen(feats, (100, 100))
    assert [a.shape[0] for a in anchors] == [f.shape[-1] * f.shape[-2] * 9 for f in feats]


def test_bad_style():
    with pytest.raises(ValueError, match="style"):
        AnchorGenerator(style="mmdet2")
