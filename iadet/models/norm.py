"""Normalisation layers for the backbone, chosen by name with :func:`build_norm`.

The paper's backbone (the authors' MMDetection fork, ``norm_eval=True``) keeps the
BatchNorm running statistics of the ImageNet checkpoint frozen but trains the affine
scale and shift: that is ``"frozen_stats"``, iadet's default. torchvision's detection
models freeze both (``"frozen"``). Training from scratch wants ``"bn"`` or ``"gn"``.
"""
import torch
from torch import Tensor, nn

NORM_KINDS = ("frozen_stats", "frozen", "bn", "gn")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and fixed affine parameters; nothing trains.

    ``y = x * scale + shift`` with ``scale = weight * rsqrt(running_var + eps)`` and
    ``shift = bias - running_mean * scale``: the same arithmetic as
    ``torchvision.ops.FrozenBatchNorm2d``. All four tensors are buffers named like
    ``nn.BatchNorm2d``'s, so a BatchNorm2d state dict loads; its ``num_batches_tracked``
    entry is ignored.

    Input and output: (N, C, H, W) float tensors.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # nn.BatchNorm2d checkpoints carry a step counter that has no meaning here.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class BatchNorm2dFrozenStats(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its running statistics and never updates
    them, while its ``weight`` and ``bias`` stay trainable (MMDetection's ``norm_eval``).

    ``train()`` leaves the module in eval mode whatever the mode asked for, so a
    ``model.train()`` on the detector cannot switch it to batch statistics.

    Caution: ``nn.SyncBatchNorm.convert_sync_batchnorm`` replaces every BatchNorm,
    this class included, by a plain SyncBatchNorm that *does* train its statistics.
    Convert only models built with ``norm="bn"``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__(num_features, eps=eps)
        super().train(False)

    def train(self, mode: bool = True) -> "BatchNorm2dFrozenStats":
        return super().train(False)


def build_norm(kind: str, num_channels: int, gn_groups: int = 32) -> nn.Module:
    """A normalisation layer for (N, ``num_channels``, H, W) features.

    ``kind``:
      - ``"frozen_stats"``: :class:`BatchNorm2dFrozenStats`, statistics frozen, affine
        trainable (paper / authors / MMDetection default);
      - ``"frozen"``: :class:`FrozenBatchNorm2d`, nothing trainable (torchvision);
      - ``"bn"``: a plain trainable ``nn.BatchNorm2d`` (convertible to SyncBatchNorm);
      - ``"gn"``: ``nn.GroupNorm(gn_groups, num_channels)``.
    """
    if kind == "frozen_stats":
        return BatchNorm2dFrozenStats(num_channels)
    if kind == "frozen":
        return FrozenBatchNorm2d(num_channels)
    if kind == "bn":
        return nn.BatchNorm2d(num_channels)
    if kind == "gn":
        if num_channels % gn_groups != 0:
            raise ValueError(
                f"GroupNorm needs num_channels divisible by gn_groups, got {num_channels} "
                f"channels and {gn_groups} groups; choose a gn_groups that divides it"
            )
        return nn.GroupNorm(gn_groups, num_channels)
    raise ValueError(f"unknown norm kind {kind!r}; valid kinds are {', '.join(NORM_KINDS)}")
