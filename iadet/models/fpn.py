"""Feature pyramid network P3-P7 (SPEC §1).

Lateral 1x1 and output 3x3 convs on C3-C5, nearest top-down upsampling to the size of the
finer level, P6 = 3x3 stride-2 conv on C5 (default, authors and MMDetection) or on P5
(torchvision), P7 = 3x3 stride-2 conv on P6, with an optional ReLU before it (torchvision).
"""
from typing import List, Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class FPN(nn.Module):
    """Args:
        in_channels: channels of C3, C4, C5.
        out_channels: channels of every pyramid level (256).
        p6_input: ``"c5"`` or ``"p5"``.
        relu_before_p7: apply ReLU to P6 before computing P7.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, p6_input: str = "c5",
                 relu_before_p7: bool = False):
        super().__init__()
        if p6_input not in ("c5", "p5"):
            raise ValueError(f"p6_input must be 'c5' or 'p5', got {p6_input!r}")
        self.p6_input = p6_input
        self.relu_before_p7 = relu_before_p7
        self.out_channels = out_channels
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        p6_in = in_channels[-1] if p6_input == "c5" else out_channels
        self.p6 = nn.Conv2d(p6_in, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: List[Tensor]) -> List[Tensor]:
        """[C3, C4, C5] (N, C_i, H_i, W_i) -> [P3, ..., P7] (N, out_channels, H_l, W_l)."""
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        outs = [conv(x) for conv, x in zip(self.output_convs, laterals)]
        p6 = self.p6(feats[-1] if self.p6_input == "c5" else outs[-1])
        p7 = self.p7(F.relu(p6) if self.relu_before_p7 else p6)
        return outs + [p6, p7]
