"""The gather-based deformable conv equals ``torchvision.ops.deform_conv2d`` (values and the
gradients of input, offsets, weight and bias), on random cases and at the kinks."""
import pytest
import torch
from torchvision.ops import deform_conv2d

from iadet.models.deform_sampling import deform_conv2d_gather, deform_conv2d_repeated, sample_taps
from iadet.models.feature_alignment import AlignedIoUPredictor


def _reference(feature, offsets, weight, bias):
    n, c, h, w = feature.shape
    copies = offsets.shape[0] // n
    repeated = feature.unsqueeze(1).expand(n, copies, c, h, w).reshape(n * copies, c, h, w)
    pad = weight.shape[-1] // 2
    return deform_conv2d(repeated, offsets, weight, bias, padding=(pad, pad))


CASES = [  # images, offset sets per image, channels in, out, H, W, offset groups, offset scale
    (2, 3, 8, 5, 5, 7, 4, 2.0),
    (1, 1, 4, 2, 1, 1, 1, 1.0),      # a 1x1 feature: every tap but the centre is outside
    (3, 9, 16, 1, 4, 3, 2, 5.0),     # large offsets: many points outside
    (1, 2, 4, 3, 6, 6, 4, 0.0),      # integer points: the bilinear kinks
    (2, 2, 6, 4, 3, 5, 1, 0.5),
]


@pytest.mark.parametrize("n,copies,c,c_out,h,w,groups,scale", CASES)
def test_equals_torchvision_values_and_gradients(n, copies, c, c_out, h, w, groups, scale):
    g = torch.Generator().manual_seed(n * 100 + c)
    feature = torch.randn(n, c, h, w, dtype=torch.float64, generator=g, requires_grad=True)
    offsets = (torch.randn(n * copies, 2 * groups * 9, h, w, dtype=torch.float64, generator=g) * scale).requires_grad_()
    weight = torch.randn(c_out, c, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(c_out, dtype=torch.float64, generator=g, requires_grad=True)
    ref = _reference(feature, offsets, weight, bias)
    ours = deform_conv2d_gather(feature, offsets, weight, bias)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    grad_out = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    ref_grads = torch.autograd.grad(ref, (feature, offsets, weight, bias), grad_out)
    our_grads = torch.autograd.grad(ours, (feature, offsets, weight, bias), grad_out)
    for name, a, b in zip(("feature", "offsets", "weight", "bias"), our_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11, msg=lambda m: f"{name}: {m}")


def test_half_integer_offsets_and_points_on_the_border_in_float32():
    feature = torch.rand(2, 8, 5, 4) + 0.5
    offsets = torch.randint(-6, 7, (6, 2 * 2 * 9, 5, 4)).float() / 2  # exact halves, many outside
    weight, bias = torch.randn(3, 8, 3, 3), torch.randn(3)
    torch.testing.assert_close(deform_conv2d_gather(feature, offsets, weight, bias),
                               _reference(feature, offsets, weight, bias), rtol=1e-5, atol=1e-5)


def test_zero_offsets_sample_the_plain_3x3_neighbourhood():
    feature = torch.arange(1.0, 1.0 + 2 * 3 * 4).reshape(1, 2, 3, 4)
    taps = sample_taps(feature, torch.zeros(1, 2 * 9, 3, 4))  # (1, 12, 1, 9, 2)
    padded = torch.nn.functional.pad(feature, (1, 1, 1, 1))
    for pos in range(12):
        y, x = divmod(pos, 4)
        for k in range(9):
            i, j = divmod(k, 3)
            assert torch.equal(taps[0, pos, 0, k], padded[0, :, y + i, x + j])


def test_no_bias_and_a_non_contiguous_feature():
    feature = torch.randn(1, 4, 6, 5).transpose(2, 3)  # (1, 4, 5, 6), not contiguous
    offsets = torch.randn(2, 18, 5, 6)
    weight = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(deform_conv2d_gather(feature, offsets, weight),
                               _reference(feature, offsets, weight, None), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("offset_shape", [(2, 17, 4, 4), (3, 18, 4, 4), (2, 18, 4, 5), (2, 54, 4, 4)])
def test_offsets_that_do_not_fit_are_refused(offset_shape):
    with pytest.raises(ValueError, match="offsets"):
        sample_taps(torch.randn(2, 4, 4, 4), torch.randn(*offset_shape))  # 2 images


def test_the_predictor_on_cpu_equals_the_torchvision_kernel():
    torch.manual_seed(0)
    m = AlignedIoUPredictor(8, num_anchors=3, offset_groups=4).double()
    with torch.no_grad():
        m.conv_offset.weight.normal_(std=1.0)
    feature = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    deltas = torch.randn(2, 12, 5, 6, dtype=torch.float64)
    ref = torch.relu(_reference(feature, m.offsets(deltas), m.deform_weight, m.deform_bias))
    torch.testing.assert_close(m.aligned_features(feature, deltas), ref, rtol=0, atol=1e-12)
    # the CUDA path's form, torchvision's kernel on the repeated feature, run here on CPU
    repeated = deform_conv2d_repeated(feature, m.offsets(deltas), m.deform_weight, m.deform_bias)
    torch.testing.assert_close(torch.relu(repeated), ref, rtol=0, atol=0)


def test_low_precision_features_are_sampled_at_float32_points():
    """bfloat16 (autocast) features: the sampling points stay exact far from the origin."""
    g = torch.Generator().manual_seed(3)
    feature = torch.randn(1, 4, 40, 300, generator=g).bfloat16()
    offsets = (torch.rand(2, 18, 40, 300, generator=g) * 4 - 2).bfloat16()
    weight = torch.randn(2, 4, 3, 3, generator=g)
    ref = _reference(feature.float(), offsets.float(), weight, None)
    ours = deform_conv2d_gather(feature, offsets, weight.bfloat16())
    torch.testing.assert_close(ours.float(), ref, rtol=0.05, atol=0.15)
