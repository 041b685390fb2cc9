"""Anchor generator for the five FPN levels (SPEC §1 and §4).

Two conventions, chosen by ``style``:

* ``"float"`` (iadet default, MMDetection 3): anchor sizes are exact floats
  ``stride * octave_base_scale * 2**(k / scales_per_octave)``, the anchor centre is the
  top-left corner of its feature cell, the stride of a level is fixed (8 ... 128).
* ``"torchvision"`` (v1 compatibility): sizes are truncated to integers
  (32, 40, 50 at P3), half-extents rounded to integers, and the stride of a level is
  ``padded image size // feature size`` per axis.

Anchors are ``xyxy`` in pixels of the padded input. Per level they are laid out as
(y, x, a), a = ratio-major then scale, matching the head's output layout.
"""
import math
from typing import List, Sequence

import torch
from torch import Tensor, nn


class AnchorGenerator(nn.Module):
    """Generate RetinaNet anchors for a list of feature maps.

    Args:
        strides: stride of each level in pixels (default P3-P7).
        octave_base_scale: anchor size at scale 0 in units of the stride.
        scales_per_octave: number of scales per level (2**(k/n), k < n).
        ratios: aspect ratios h / w.
        style: ``"float"`` or ``"torchvision"`` (see the module docstring).
    """

    def __init__(
        self,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        octave_base_scale: float = 4.0,
        scales_per_octave: int = 3,
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        style: str = "float",
    ):
        super().__init__()
        if style not in ("float", "torchvision"):
            raise ValueError(f"anchor style must be 'float' or 'torchvision', got {style!r}")
        self.strides = [int(s) for s in strides]
        self.octave_base_scale = float(octave_base_scale)
        self.scales_per_octave = int(scales_per_octave)
        self.ratios = [float(r) for r in ratios]
        self.style = style
        self.cell_anchors = [self._cell_anchors(s) for s in self.strides]
        self._cache = {}

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.ratios) * self.scales_per_octave

    def _cell_anchors(self, stride: int) -> Tensor:
        """(A, 4) anchors centred at the origin for one level, ratio-major then scale."""
        ratios = torch.tensor(self.ratios, dtype=torch.float32)
        base = stride * self.octave_base_scale
        if self.style == "torchvision":
            # torchvision: sizes (x, int(x * 2**(1/3)), int(x * 2**(2/3))) then rounded halves.
            scales = torch.tensor(
                [float(int(base * 2 ** (k / self.scales_per_octave))) if k else float(base)
                 for k in range(self.scales_per_octave)], dtype=torch.float32)
        else:
            scales = torch.tensor(
                [base * 2 ** (k / self.scales_per_octave) for k in range(self.scales_per_octave)],
                dtype=torch.float32)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1.0 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        anchors = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
        if self.style == "torchvision":
            anchors = anchors.round()
        return anchors

    def level_strides(self, feature_sizes: List[Sequence[int]], image_size: Sequence[int]):
        """(stride_y, stride_x) per level for ``feature_sizes`` [(H, W), ...]."""
        if self.style == "torchvision":
            return [(image_size[0] // h, image_size[1] // w) for h, w in feature_sizes]
        return [(s, s) for s in self.strides]

    def grid_anchors(self, feature_sizes, image_size, device=None, dtype=torch.float32) -> List[Tensor]:
        """Anchors per level.

        Args:
            feature_sizes: [(H_l, W_l)] for each level.
            image_size: (H, W) of the padded input batch.

        Returns:
            list of (H_l * W_l * A, 4) xyxy tensors.
        """
        key = (tuple(tuple(int(v) for v in s) for s in feature_sizes),
               tuple(int(v) for v in image_size), str(device), dtype)
        if key in self._cache:
            return self._cache[key]
        if len(feature_sizes) != len(self.strides):
            raise ValueError(f"got {len(feature_sizes)} feature maps for {len(self.strides)} anchor levels")
        out = []
        for (h, w), (sy, sx), cell in zip(feature_sizes, self.level_strides(feature_sizes, image_size),
                                          self.cell_anchors):
            shift_x = torch.arange(w, dtype=torch.float32, device=device) * sx
            shift_y = torch.arange(h, dtype=torch.float32, device=device) * sy
            yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
            out.append((shifts + cell.to(device)[None]).reshape(-1, 4).to(dtype))
        if len(self._cache) > 16:
            self._cache.clear()
        self._cache[key] = out
        return out

    def forward(self, features: List[Tensor], image_size: Sequence[int]) -> List[Tensor]:
        """Anchors for feature maps [(N, C, H_l, W_l)] of a padded batch of size ``image_size``."""
        sizes = [f.shape[-2:] for f in features]
        return self.grid_anchors(sizes, image_size, device=features[0].device)


def default_anchor_sizes(stride: int, octave_base_scale: float = 4.0, scales_per_octave: int = 3):
    """The float anchor sizes of one level, for documentation and tests."""
    return [stride * octave_base_scale * math.pow(2, k / scales_per_octave) for k in range(scales_per_octave)]
