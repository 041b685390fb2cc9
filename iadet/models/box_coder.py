"""Delta box coder (SPEC §1): anchors and boxes are ``xyxy`` pixels, width = x2 - x1.

deltas = ((gx - ax) / aw, (gy - ay) / ah, log(gw / aw), log(gh / ah)) * weights,
means 0, stds 1 (weights 1). Decoding clamps dw, dh to ``±log(1000/16)`` ("both", the
authors' and MMDetection's rule) or only from above ("upper", torchvision).
"""
import math
from typing import Sequence

import torch
from torch import Tensor

DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class DeltaBoxCoder:
    """Encode boxes as deltas from anchors and decode them back.

    Args:
        weights: (wx, wy, ww, wh) multipliers of the deltas (1 for RetinaNet).
        clamp: ``"both"`` or ``"upper"`` side clamping of dw, dh at decode time.
        scale_clamp: the clamp value, log(1000/16).
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), clamp: str = "both",
                 scale_clamp: float = DEFAULT_SCALE_CLAMP):
        if clamp not in ("both", "upper"):
            raise ValueError(f"box coder clamp must be 'both' or 'upper', got {clamp!r}")
        if len(weights) != 4:
            raise ValueError(f"box coder weights need 4 values, got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.clamp = clamp
        self.scale_clamp = scale_clamp

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """(..., 4) target boxes and (..., 4) anchors -> (..., 4) deltas."""
        wx, wy, ww, wh = self.weights
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        ax = anchors[..., 0] + 0.5 * aw
        ay = anchors[..., 1] + 0.5 * ah
        gw = boxes[..., 2] - boxes[..., 0]
        gh = boxes[..., 3] - boxes[..., 1]
        gx = boxes[..., 0] + 0.5 * gw
        gy = boxes[..., 1] + 0.5 * gh
        return torch.stack((wx * (gx - ax) / aw, wy * (gy - ay) / ah,
                            ww * torch.log(gw / aw), wh * torch.log(gh / ah)), dim=-1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """(..., 4) deltas and broadcastable (..., 4) anchors -> (..., 4) xyxy boxes.

        Not clipped to the image: clipping happens at test time only (SPEC §1).
        """
        wx, wy, ww, wh = self.weights
        anchors = anchors.to(deltas.dtype)
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        ax = anchors[..., 0] + 0.5 * aw
        ay = anchors[..., 1] + 0.5 * ah
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = deltas[..., 2] / ww
        dh = deltas[..., 3] / wh
        if self.clamp == "both":
            dw = dw.clamp(min=-self.scale_clamp, max=self.scale_clamp)
            dh = dh.clamp(min=-self.scale_clamp, max=self.scale_clamp)
        else:
            dw = dw.clamp(max=self.scale_clamp)
            dh = dh.clamp(max=self.scale_clamp)
        cx = dx * aw + ax
        cy = dy * ah + ay
        half_w = 0.5 * torch.exp(dw) * aw
        half_h = 0.5 * torch.exp(dh) * ah
        return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)
