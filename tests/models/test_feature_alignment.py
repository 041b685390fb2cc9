"""The aligned IoU branch and the shared-conv choice (issue 15): sampling positions by hand,
detached offsets, the branch's input, and the default head unchanged."""
import pytest
import torch

from iadet.models.feature_alignment import AlignedIoUPredictor
from iadet.models.head import IoUAwareRetinaHead


def _steered(channels: int, groups: int, tap: int, shifted_groups=None):
    """A predictor whose deformable conv copies its input through kernel tap ``tap`` only and
    whose offsets are (dy, dx) = (delta 1, delta 0) on every tap of ``shifted_groups``."""
    m = AlignedIoUPredictor(channels, num_anchors=1, offset_groups=groups)
    with torch.no_grad():
        m.conv_offset.weight.zero_()
        for g in (range(groups) if shifted_groups is None else shifted_groups):
            for k in range(9):
                m.conv_offset.weight[2 * (g * 9 + k), 1] = 1.0      # y offset <- delta channel 1
                m.conv_offset.weight[2 * (g * 9 + k) + 1, 0] = 1.0  # x offset <- delta channel 0
        m.deform_weight.zero_()
        for c in range(channels):
            m.deform_weight[c, c].view(-1)[tap] = 1.0
        m.deform_bias.zero_()
    return m


def _deltas(dx: float, dy: float, h: int, w: int):
    d = torch.zeros(1, 4, h, w)
    d[:, 0], d[:, 1] = dx, dy
    return d


def test_integer_offsets_sample_the_shifted_pixel():
    feature = torch.arange(1.0, 1.0 + 2 * 5 * 6).reshape(1, 2, 5, 6)
    m = _steered(2, groups=1, tap=4)  # the centre tap: position (y, x) + (dy, dx)
    out = m.aligned_features(feature, _deltas(dx=2.0, dy=1.0, h=5, w=6))
    expected = torch.zeros_like(feature)
    expected[..., :4, :4] = feature[..., 1:, 2:]  # beyond the border: zeros
    assert torch.equal(out, expected)


def test_fractional_offsets_interpolate_bilinearly_and_taps_are_row_major():
    feature = torch.rand(1, 1, 6, 6) + 0.5
    m = _steered(1, groups=1, tap=0)  # tap 0 = kernel row 0, column 0: position (y - 1, x - 1)
    out = m.aligned_features(feature, _deltas(dx=0.5, dy=0.0, h=6, w=6))
    y, x = 3, 3  # samples (2, 2.5): the mean of (2, 2) and (2, 3)
    assert out[0, 0, y, x].item() == pytest.approx(0.5 * (feature[0, 0, 2, 2] + feature[0, 0, 2, 3]).item(), rel=1e-6)
    out0 = m.aligned_features(feature, _deltas(dx=0.0, dy=0.0, h=6, w=6))
    assert torch.equal(out0[0, 0, 1:, 1:], feature[0, 0, :-1, :-1])


def test_offset_groups_split_the_channels_in_order():
    feature = torch.rand(1, 4, 5, 5) + 0.5
    m = _steered(4, groups=2, tap=4, shifted_groups=[1])  # group 1 = channels 2, 3 shifted; 0, 1 not
    out = m.aligned_features(feature, _deltas(dx=1.0, dy=0.0, h=5, w=5))
    assert torch.equal(out[:, :2], feature[:, :2])
    assert torch.equal(out[:, 2:, :, :4], feature[:, 2:, :, 1:])


def test_each_anchor_uses_its_own_deltas_and_the_offsets_are_detached():
    torch.manual_seed(0)
    m = AlignedIoUPredictor(8, num_anchors=3, offset_groups=4)
    feature, deltas = torch.randn(2, 8, 4, 5), torch.randn(2, 12, 4, 5, requires_grad=True)
    logits = m(feature, deltas)
    assert logits.shape == (2, 3, 4, 5)
    for a in range(3):  # anchor a = the predictor run alone on its 4 delta channels
        single = AlignedIoUPredictor(8, num_anchors=1, offset_groups=4)
        single.load_state_dict(m.state_dict())
        torch.testing.assert_close(logits[:, a:a + 1], single(feature, deltas[:, 4 * a:4 * a + 4]))
    logits.sum().backward()
    assert deltas.grad is None  # the IoU loss does not move the boxes through the offsets
    assert m.conv_offset.weight.grad.abs().sum() > 0


def test_aligned_head_predicts_one_iou_per_anchor_from_the_regression_tower():
    torch.manual_seed(0)
    head = IoUAwareRetinaHead(num_classes=3, in_channels=8, feat_channels=8, stacked_convs=2, iou_align=True)
    assert head.has_iou_branch and head.iou_pred is None
    out = head([torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)])
    assert out["iou_logits"].shape == (2, (16 + 4) * 9)
    out["iou_logits"].sum().backward()
    assert head.reg_convs[-1].weight.grad.abs().sum() > 0 and head.bbox_pred.weight.grad is None


@pytest.mark.parametrize("shared", [0, 1, 2])
def test_shared_convs_feed_the_branch_the_tower_after_k_convs(shared):
    torch.manual_seed(0)
    head = IoUAwareRetinaHead(num_classes=3, in_channels=8, feat_channels=8, stacked_convs=3, norm="gn",
                              gn_groups=4, iou_shared_convs=shared)
    assert len(head.iou_convs) == 3 - shared and len(head.iou_norms) == 3 - shared
    feat = torch.randn(1, 8, 4, 4)
    x = feat
    for i in range(shared):
        x = torch.relu(head.reg_norms[i](head.reg_convs[i](x)))
    for conv, norm in zip(head.iou_convs, head.iou_norms):
        x = torch.relu(norm(conv(x)))
    expected = head.iou_pred(x).permute(0, 2, 3, 1).reshape(1, -1)
    torch.testing.assert_close(head([feat])["iou_logits"], expected)


def test_the_options_leave_the_default_parts_bit_identical():
    def build(**kw):
        torch.manual_seed(5)
        return IoUAwareRetinaHead(num_classes=3, in_channels=8, feat_channels=8, stacked_convs=2, **kw).state_dict()

    base = build()
    for kw in ({"iou_align": True}, {"iou_shared_convs": 1}, {"iou_shared_convs": 0, "iou_align": True}):
        variant = build(**kw)
        shared = [k for k in base if k in variant]
        assert all(torch.equal(base[k], variant[k]) for k in shared), kw
        assert set(base) - set(variant) <= {"iou_pred.weight", "iou_pred.bias"}


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="iou_shared_convs"):
        IoUAwareRetinaHead(num_classes=3, in_channels=8, feat_channels=8, stacked_convs=2, iou_shared_convs=3)
    with pytest.raises(ValueError, match="need the IoU branch"):
        IoUAwareRetinaHead(num_classes=3, in_channels=8, feat_channels=8, iou_branch=False, iou_align=True)
    with pytest.raises(ValueError, match="offset_groups"):
        AlignedIoUPredictor(6, num_anchors=9, offset_groups=4)
