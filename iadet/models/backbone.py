"""ResNet and ResNeXt backbones ("pytorch" style: the stride sits on the 3x3 conv).

Written by hand, with parameter and buffer names identical to torchvision's
``torchvision.models.resnet*`` / ``resnext*`` (``conv1, bn1, layer1..layer4``; in a block
``conv1, bn1, conv2, bn2, conv3, bn3, downsample.0, downsample.1``), so an ImageNet
checkpoint from torchvision loads directly (minus ``fc.*``, which iadet does not build).
``tests/models/test_backbone.py`` proves the features equal torchvision's.

Stage numbering: stage i is ``layer{i}``'s output, C{i+1} in FPN terms, with stride
2**(i+1): stage 2 -> C3 (stride 8), 3 -> C4 (16), 4 -> C5 (32).
"""
import os
from functools import partial
from typing import Callable, Dict, List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from iadet.convert import convert_torchvision_resnet, read_state_dict, unwrap_state_dict
from iadet.models.norm import build_norm

NormFactory = Callable[[int], nn.Module]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34). (N, C_in, H, W) ->
    (N, planes, H / stride, W / stride)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, norm: NormFactory,
                 groups: int = 1, width_per_group: int = 64):
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ValueError(
                f"ResNet-18/34 blocks support only groups=1, width_per_group=64 (got "
                f"{groups}, {width_per_group}); use depth 50, 101 or 152 for ResNeXt"
            )
        self.conv1 = _conv3x3(in_channels, planes, stride)
        self.bn1 = norm(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, planes, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(_add_residual(out, identity))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt, carrying the stride), 1x1 expand by 4, plus a
    residual connection. (N, C_in, H, W) -> (N, 4 * planes, H / stride, W / stride)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, norm: NormFactory,
                 groups: int = 1, width_per_group: int = 64):
        super().__init__()
        # ResNeXt "32x8d": 32 groups of 8 channels in the first stage, doubling per stage.
        width = int(planes * width_per_group / 64) * groups
        self.conv1 = _conv1x1(in_channels, width)
        self.bn1 = norm(width)
        self.conv2 = _conv3x3(width, width, stride, groups)
        self.bn2 = norm(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, planes * self.expansion, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(_add_residual(out, identity))


def _add_residual(out: Tensor, identity: Tensor) -> Tensor:
    """``out + identity``, written into ``out`` when that keeps the promoted dtype (as
    torchvision's blocks do: one full-size allocation less per block). Under autocast a
    bf16 ``out`` with a float32 ``identity`` is added out of place, so the result is
    float32 either way. Safe for autograd: addition needs neither input for its backward."""
    if torch.result_type(out, identity) == out.dtype:
        return out.add_(identity)
    return out + identity


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: NormFactory):
    """Projection shortcut (1x1 conv + norm) where the shape changes, else None (identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(_conv1x1(in_channels, out_channels, stride), norm(out_channels))


# depth -> (block type, number of blocks in layer1..layer4)
_DEPTHS: Dict[int, Tuple[type, Tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """ResNet / ResNeXt feature extractor returning the outputs of ``out_stages``.

    Args:
        depth: 18, 34 (BasicBlock), 50, 101 or 152 (Bottleneck).
        groups, width_per_group: ResNeXt cardinality and group width (ResNeXt-101 32x8d:
            groups=32, width_per_group=8); 1 and 64 give a plain ResNet.
        norm: ``"frozen_stats"`` (paper default: BN statistics frozen, affine trained),
            ``"frozen"``, ``"bn"`` or ``"gn"``; see :func:`iadet.models.norm.build_norm`.
        gn_groups: groups for ``norm="gn"``.
        frozen_stages: -1 freezes nothing; 0 freezes the stem (conv1, bn1); k >= 1
            freezes the stem and layer1..layer{k} (paper: 1). Frozen parts get
            ``requires_grad=False`` and stay in eval mode through ``train()``.
        out_stages: increasing stage indices in 1..4 to return; (2, 3, 4) = C3, C4, C5.

    ``forward(x)``: x (N, 3, H, W) float, ImageNet-normalised RGB -> list with one
    (N, out_channels[j], H / out_strides[j], W / out_strides[j]) tensor per out stage
    (sizes rounded up at each stride-2 step).
    """

    def __init__(self, depth: int = 50, groups: int = 1, width_per_group: int = 64,
                 norm: str = "frozen_stats", gn_groups: int = 32, frozen_stages: int = 1,
                 out_stages: Sequence[int] = (2, 3, 4)):
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
        out_stages = tuple(out_stages)
        if not out_stages or list(out_stages) != sorted(set(out_stages)) or not set(out_stages) <= {1, 2, 3, 4}:
            raise ValueError(f"out_stages must be increasing stage indices in 1..4, got {out_stages}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in -1..4, got {frozen_stages}")
        block, num_blocks = _DEPTHS[depth]
        norm_factory = partial(build_norm, norm, gn_groups=gn_groups)
        self.depth, self.groups, self.width_per_group = depth, groups, width_per_group
        self.norm = norm
        self.frozen_stages = frozen_stages
        self.out_stages = out_stages

        # Stem: 7x7 stride-2 conv and 3x3 stride-2 max-pool, stride 4 in all.
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_factory(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        in_channels = 64
        stage_channels = []
        for i, count in enumerate(num_blocks, start=1):
            planes = 64 * 2 ** (i - 1)
            blocks = []
            for j in range(count):
                stride = 2 if (i > 1 and j == 0) else 1
                blocks.append(block(in_channels, planes, stride, norm_factory, groups, width_per_group))
                in_channels = planes * block.expansion
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            stage_channels.append(in_channels)
        self.out_channels: List[int] = [stage_channels[i - 1] for i in out_stages]
        self.out_strides: List[int] = [2 ** (i + 1) for i in out_stages]

        self._init_weights()
        self._freeze_stages()

    def _init_weights(self) -> None:
        """Random initialisation for training from scratch: He (fan_out) convs, norm
        scale 1 and shift 0. Overwritten by :meth:`load_torchvision_weights`."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        stem = [self.conv1, self.bn1]
        return stem + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNet":
        """Set train/eval mode, keeping frozen stages in eval mode (their BN statistics,
        if any, never update)."""
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
        return self

    def forward(self, x: Tensor) -> List[Tensor]:
        """x: (N, 3, H, W) -> [C_i for i in out_stages], C_i: (N, out_channels, H/2**(i+1), W/2**(i+1))."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for i in range(1, self.out_stages[-1] + 1):
            x = getattr(self, f"layer{i}")(x)
            if i in self.out_stages:
                features.append(x)
        return features

    def load_torchvision_weights(self, path_or_state_dict: Union[str, os.PathLike, dict]) -> None:
        """Load a torchvision ImageNet ResNet/ResNeXt checkpoint (e.g. ``resnet50-0676ba61.pth``).

        Accepts a file path (read with ``torch.load(weights_only=True)``) or an already
        loaded dict: a raw state dict, or one holding it under ``"state_dict"``/``"model"``.
        The output of ``python -m iadet.convert --from torchvision-resnet`` works too.
        Every backbone tensor must be present and no extra one may be: a ResNet-101 file
        into a ResNet-50 fails with the names of the offending keys.
        """
        if isinstance(path_or_state_dict, dict):
            where = "the given state dict"
            state_dict = unwrap_state_dict(path_or_state_dict, where)
        else:
            where = repr(str(path_or_state_dict))
            state_dict = read_state_dict(path_or_state_dict)
        try:
            state_dict = convert_torchvision_resnet(state_dict)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error

        arch = f"ResNet(depth={self.depth}, groups={self.groups}, width_per_group={self.width_per_group}, norm={self.norm!r})"
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                      for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
        if missing or unexpected or mismatched:
            problems = []
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
                if keys:
                    more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
                    problems.append(f"{label} ({len(keys)}): {', '.join(keys[:8])}{more}")
            hint = (" norm='gn' has no running statistics: ImageNet BatchNorm weights need "
                    "norm 'frozen_stats', 'frozen' or 'bn'." if self.norm == "gn" else "")
            raise ValueError(
                f"{where} does not match {arch}: {'; '.join(problems)}. Check that the "
                f"checkpoint is the torchvision model of the same name (e.g. resnet50 for "
                f"depth 50, resnext101_32x8d for depth 101 groups 32 width 8).{hint}"
            )
        self.load_state_dict(state_dict, strict=True)


# name -> (depth, groups, width_per_group), torchvision's model names.
RESNET_SPECS: Dict[str, Tuple[int, int, int]] = {
    "resnet18": (18, 1, 64),
    "resnet34": (34, 1, 64),
    "resnet50": (50, 1, 64),
    "resnet101": (101, 1, 64),
    "resnet152": (152, 1, 64),
    "resnext50_32x4d": (50, 32, 4),
    "resnext101_32x4d": (101, 32, 4),
    "resnext101_32x8d": (101, 32, 8),
    "resnext101_64x4d": (101, 64, 4),
}


def build_resnet(name: str, **kwargs) -> ResNet:
    """``ResNet`` for a torchvision model name (``"resnet50"``, ``"resnext101_32x8d"``...);
    ``kwargs`` go to :class:`ResNet` (norm, frozen_stages, out_stages, gn_groups)."""
    if name not in RESNET_SPECS:
        raise ValueError(f"unknown backbone {name!r}; valid names are {', '.join(RESNET_SPECS)}")
    fixed = {"depth", "groups", "width_per_group"} & set(kwargs)
    if fixed:
        raise ValueError(f"build_resnet({name!r}) sets {sorted(fixed)} from the name; do not pass them")
    depth, groups, width_per_group = RESNET_SPECS[name]
    return ResNet(depth=depth, groups=groups, width_per_group=width_per_group, **kwargs)
