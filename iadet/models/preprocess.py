"""Test-time image preprocessing: normalise, keep-ratio resize, pad (SPEC §2, torchvision).

Images are RGB with pixel values in [0, 255]. The resize scale is
``min(min_size / short_edge, max_size / long_edge)`` computed in float32 and applied with
bilinear interpolation (``recompute_scale_factor=True``, so the output size is
``floor(edge * scale)``), exactly as torchvision's ``GeneralizedRCNNTransform`` does, which
the compatibility test relies on. The batch is zero-padded (after normalisation) at the
bottom and right to a multiple of ``size_divisor``.
"""
from typing import List, Sequence, Tuple

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ImagePreprocessor(nn.Module):
    """Args:
        min_size, max_size: fit the short edge to ``min_size`` unless the long edge would
            exceed ``max_size``.
        mean, std: per-channel RGB statistics in [0, 255] units.
        size_divisor: the padded batch is a multiple of this (32).
    """

    def __init__(self, min_size: int = 800, max_size: int = 1333,
                 mean: Sequence[float] = (123.675, 116.28, 103.53),
                 std: Sequence[float] = (58.395, 57.12, 57.375), size_divisor: int = 32):
        super().__init__()
        self.min_size = min_size
        self.max_size = max_size
        self.size_divisor = size_divisor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)

    def resize_scale(self, height: int, width: int) -> float:
        """The keep-ratio scale for an image of ``height`` x ``width`` (float32 arithmetic)."""
        short, long = torch.tensor(float(min(height, width))), torch.tensor(float(max(height, width)))
        return torch.min(self.min_size / short, self.max_size / long).item()

    def resize(self, image: Tensor) -> Tensor:
        """(3, H, W) float -> (3, H', W') resized with bilinear interpolation."""
        scale = self.resize_scale(*image.shape[-2:])
        return F.interpolate(image[None], scale_factor=scale, mode="bilinear",
                             recompute_scale_factor=True, align_corners=False)[0]

    def forward(self, images: List[Tensor]) -> Tuple[Tensor, List[Tuple[int, int]], List[Tuple[int, int]]]:
        """Preprocess a list of (3, H_i, W_i) RGB images with values in [0, 255].

        Returns:
            batch: (N, 3, H_pad, W_pad) float32, normalised and zero-padded.
            image_sizes: (h, w) of each resized image inside the batch.
            original_sizes: (H, W) of each input image.
        """
        resized, original_sizes = [], []
        for image in images:
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"expected an RGB image of shape (3, H, W), got {tuple(image.shape)}")
            original_sizes.append((int(image.shape[-2]), int(image.shape[-1])))
            image = (image.to(self.mean.device, torch.float32) - self.mean) / self.std
            resized.append(self.resize(image))
        image_sizes = [(int(r.shape[-2]), int(r.shape[-1])) for r in resized]
        d = self.size_divisor
        pad_h = int(math.ceil(max(h for h, _ in image_sizes) / d) * d)
        pad_w = int(math.ceil(max(w for _, w in image_sizes) / d) * d)
        batch = resized[0].new_zeros((len(resized), 3, pad_h, pad_w))
        for i, r in enumerate(resized):
            batch[i, :, :r.shape[-2], :r.shape[-1]].copy_(r)
        return batch, image_sizes, original_sizes
