"""A deformable 3x3 convolution (DCNv1) from gathers and one matmul, for CPU training.

``torchvision.ops.deform_conv2d`` is the reference (``tests/models/test_deform_sampling.py``
proves this equal to it, values and gradients, on random cases). Its CPU kernel builds
the sampled columns one image block at a time in scalar loops and is several times slower
than this one in the aligned IoU branch, where the same feature is sampled by A = 9 offset
sets (one per anchor): here the feature is never repeated A times, every tap of every
position is gathered at once as rows of channels, and the weights act in one matmul.
On CUDA :class:`iadet.models.feature_alignment.AlignedIoUPredictor` keeps torchvision's
kernel (:func:`deform_conv2d_repeated`).

Sampling is torchvision's: tap ``k = 3 * i + j`` of output position ``(y, x)`` reads the
input at ``(y - pad + i + dy, x - pad + j + dx)`` (stride 1, dilation 1), with
``dy = offset[2 * (g * 9 + k)]`` and ``dx = offset[2 * (g * 9 + k) + 1]`` for the channels of
offset group ``g``; bilinearly, a corner outside the feature reading 0 (so a point with
``y <= -1``, ``y >= H``, ``x <= -1`` or ``x >= W`` reads 0). At integer points, where the
bilinear weights have a kink, the offset gradient is torchvision's: the derivative from the
side of the higher index.
"""
from typing import Optional

import torch
from torch import Tensor
from torchvision.ops import deform_conv2d


def sample_taps(feature: Tensor, offsets: Tensor, kernel_size: int = 3) -> Tensor:
    """Bilinear samples of ``feature`` at every tap of every position, for each offset set.

    Args:
        feature: (N, C, H, W).
        offsets: (N * A, 2 * G * k * k, H, W): A offset sets per image, image-major
            (row ``n * A + a``), in torchvision's channel layout; G must divide C.
        kernel_size: k (odd; padding ``(k - 1) // 2`` keeps the size).

    Returns:
        (N * A, H * W, G, k * k, C // G): row ``b`` holds, for each position, group and tap,
        that group's channels at the sampling point.
    """
    n, c, h, w = feature.shape
    taps = kernel_size * kernel_size
    groups = offsets.shape[1] // (2 * taps)
    copies = offsets.shape[0] // n
    if offsets.shape[1] != 2 * groups * taps or groups == 0 or c % groups:
        raise ValueError(f"offsets with {offsets.shape[1]} channels do not fit {taps} taps in groups "
                         f"dividing {c} feature channels")
    if offsets.shape[0] != n * copies or offsets.shape[2:] != feature.shape[2:]:
        raise ValueError(f"offsets {tuple(offsets.shape)} do not match the feature {tuple(feature.shape)}")
    pad = (kernel_size - 1) // 2
    # sampling points and bilinear weights in float32 at least: in bfloat16 / float16 (autocast)
    # a point 130 pixels in would be off by up to half a pixel
    dev = feature.device
    dt = torch.float64 if feature.dtype == torch.float64 else torch.float32
    offsets = offsets.to(dt)
    # offsets (B, G*k*k*2, H, W) -> absolute sampling points y, x of shape (B, H*W, G, k*k): the
    # small offset tensor is permuted, so the large sampled one is born in its final layout
    off = offsets.reshape(n * copies, groups, taps, 2, h * w).permute(0, 4, 1, 2, 3)
    tap_i = torch.arange(kernel_size, device=dev, dtype=dt).repeat_interleave(kernel_size) - pad
    tap_j = torch.arange(kernel_size, device=dev, dtype=dt).repeat(kernel_size) - pad
    rows = torch.arange(h, device=dev, dtype=dt).repeat_interleave(w)[:, None, None]
    cols = torch.arange(w, device=dev, dtype=dt).repeat(h)[:, None, None]
    y = off[..., 0] + (rows + tap_i)
    x = off[..., 1] + (cols + tap_j)
    y0f, x0f = torch.floor(y), torch.floor(x)
    ly, lx = y - y0f, x - x0f
    y0, x0 = y0f.long(), x0f.long()

    # the feature as rows of channels: (N * G * H * W, C // G); row of (image, group, pixel)
    cg = c // groups
    table = feature.reshape(n, groups, cg, h * w).transpose(2, 3).reshape(n * groups * h * w, cg)
    image = torch.arange(n * copies, device=dev) // copies
    base = ((image[:, None] * groups + torch.arange(groups, device=dev)) * (h * w))[:, None, :, None]

    out = None
    for dy, dx, wy, wx in ((0, 0, 1 - ly, 1 - lx), (0, 1, 1 - ly, lx), (1, 0, ly, 1 - lx), (1, 1, ly, lx)):
        yy, xx = y0 + dy, x0 + dx
        valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        index = base + (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1))
        weight = (wy * wx * valid.to(dt)).unsqueeze(-1)
        term = table.index_select(0, index.reshape(-1)).reshape(*index.shape, cg) * weight
        out = term if out is None else out + term
    return out.to(feature.dtype)  # (B, H*W, G, k*k, Cg), accumulated in float32 at least


def deform_conv2d_gather(feature: Tensor, offsets: Tensor, weight: Tensor,
                         bias: Optional[Tensor] = None) -> Tensor:
    """``torchvision.ops.deform_conv2d(repeat(feature, A), offsets, weight, bias, padding=k // 2)``.

    Args:
        feature: (N, C, H, W), shared by the A offset sets of its image.
        offsets: (N * A, 2 * G * k * k, H, W), image-major.
        weight: (C_out, C, k, k); bias: (C_out,) or None.

    Returns:
        (N * A, C_out, H, W).
    """
    c_out, c, k, _ = weight.shape
    samples = sample_taps(feature, offsets, k)  # (B, HW, G, k*k, Cg)
    b, hw, groups, taps, cg = samples.shape
    # weight (C_out, G*Cg, k*k) -> the samples' order (G, k*k, Cg)
    w = weight.reshape(c_out, groups, cg, taps).transpose(2, 3).reshape(c_out, groups * taps * cg)
    out = samples.reshape(b * hw, groups * taps * cg) @ w.t()
    if bias is not None:
        out = out + bias
    h, wd = feature.shape[2:]
    return out.reshape(b, h, wd, c_out).permute(0, 3, 1, 2)


def deform_conv2d_repeated(feature: Tensor, offsets: Tensor, weight: Tensor,
                           bias: Optional[Tensor] = None) -> Tensor:
    """The same conv by ``torchvision.ops.deform_conv2d`` on the feature repeated for the A
    offset sets of its image (its CUDA path, and the reference)."""
    n, c, h, w = feature.shape
    copies = offsets.shape[0] // n
    repeated = feature.unsqueeze(1).expand(n, copies, c, h, w).reshape(n * copies, c, h, w)
    pad = weight.shape[-1] // 2
    return deform_conv2d(repeated, offsets, weight, bias, padding=(pad, pad))
