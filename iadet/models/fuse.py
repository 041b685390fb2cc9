"""Inference fast paths: fold frozen BatchNorm into the preceding conv, channels-last weights.

:func:`fuse_frozen_batchnorm` rewrites every ``conv -> norm`` pair whose norm has fixed
statistics into one conv with ``W' = W * s`` and ``b' = b * s + t`` (per output channel
``s = gamma / sqrt(running_var + eps)``, ``t = beta - running_mean * s``), then replaces the
norm by ``nn.Identity``. The arithmetic is done in float64 and rounded once, so the fused
model gives the unfused outputs up to float rounding (``tests/models/test_fuse.py``).

Which norms are folded:

* :class:`~iadet.models.norm.FrozenBatchNorm2d` (``norm: frozen``, torchvision) and
  :class:`~iadet.models.norm.BatchNorm2dFrozenStats` (``norm: frozen_stats``, the paper's
  default): always, their statistics never change;
* a plain ``nn.BatchNorm2d`` (``norm: bn``, trainable statistics): only with
  ``include_trainable_bn=True`` and only in eval mode (it then normalises with its running
  statistics too); by default it is left unchanged and a warning says so;
* GroupNorm (``norm: gn``, the GN head) has no fixed statistics and is never touched.

Where a pair is recognised: consecutive ``Conv2d`` -> norm children of an ``nn.Sequential``
(ResNet's ``downsample``), and the ``convK`` / ``bnK`` siblings of iadet's ResNet stem and
blocks (:class:`~iadet.models.backbone.ResNet`, ``Bottleneck``, ``BasicBlock``), whose
forward applies ``bnK`` directly to ``convK``'s output. Other modules are not inspected.

Fusion is for inference only: it refuses a model in training mode, the fused model has no
norm parameters left to train, and its state dict has different keys (``bn*`` gone, conv
biases added), so load checkpoints *before* fusing. :func:`is_fused` tells whether a model
has been fused.
"""
import warnings
from typing import Iterator, List, Tuple

import torch
from torch import nn

from iadet.models.norm import BatchNorm2dFrozenStats, FrozenBatchNorm2d

FUSED_ATTRIBUTE = "_iadet_fused_batchnorm"


def _fixed_statistics(norm: nn.Module, include_trainable_bn: bool) -> bool:
    """Whether ``norm`` normalises with fixed statistics and may be folded."""
    if isinstance(norm, (FrozenBatchNorm2d, BatchNorm2dFrozenStats)):
        return True
    if type(norm) is nn.BatchNorm2d:
        return include_trainable_bn and not norm.training and norm.track_running_stats \
            and norm.running_mean is not None
    return False


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, (FrozenBatchNorm2d, nn.BatchNorm2d))


def _conv_norm_pairs(model: nn.Module) -> Iterator[Tuple[nn.Module, str, str]]:
    """(parent, conv attribute name, norm attribute name) of every recognised conv -> norm pair."""
    from iadet.models.backbone import BasicBlock, Bottleneck, ResNet

    for parent in model.modules():
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(children)
            for conv_name, norm_name in zip(names, names[1:]):
                if isinstance(children[conv_name], nn.Conv2d) and _is_batchnorm(children[norm_name]):
                    yield parent, conv_name, norm_name
        elif isinstance(parent, (ResNet, Bottleneck, BasicBlock)):
            for k in (1, 2, 3):
                conv, norm = children.get(f"conv{k}"), children.get(f"bn{k}")
                if isinstance(conv, nn.Conv2d) and norm is not None and _is_batchnorm(norm):
                    yield parent, f"conv{k}", f"bn{k}"


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Fold ``norm`` (running statistics and affine) into ``conv`` in place."""
    if norm.num_features != conv.out_channels:
        raise ValueError(f"cannot fold a norm of {norm.num_features} channels into a conv with "
                         f"{conv.out_channels} output channels")
    dtype = conv.weight.dtype
    gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(norm.running_mean, dtype=torch.float64)
    beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(norm.running_mean, dtype=torch.float64)
    scale = gamma * (norm.running_var.double() + norm.eps).rsqrt()
    shift = beta - norm.running_mean.double() * scale
    weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    requires_grad = conv.weight.requires_grad
    conv.weight = nn.Parameter(weight.to(dtype), requires_grad=requires_grad)
    conv.bias = nn.Parameter(bias.to(dtype=dtype, device=conv.weight.device), requires_grad=requires_grad)


def fuse_frozen_batchnorm(model: nn.Module, include_trainable_bn: bool = False) -> nn.Module:
    """Fold fixed-statistics BatchNorm layers into the convs before them, in place.

    Args:
        model: an iadet detector or backbone (any module: the recognised pairs are listed in
            the module docstring), in eval mode.
        include_trainable_bn: also fold plain ``nn.BatchNorm2d`` layers (``norm: bn``) using
            their current running statistics; the model must be in eval mode and must not
            be trained afterwards.
    Returns:
        ``model`` itself (fused), for chaining.
    Raises:
        RuntimeError: the model is in training mode (fusion is inference-only).
    Warns:
        when trainable ``nn.BatchNorm2d`` layers are left unfused (``include_trainable_bn``
        not set), naming how many and how to fold them.
    """
    if model.training:
        raise RuntimeError("fuse_frozen_batchnorm is for inference only: call model.eval() first "
                           "(a fused model cannot be trained: its BatchNorm layers are gone)")
    fused, skipped = 0, []
    for parent, conv_name, norm_name in list(_conv_norm_pairs(model)):
        conv, norm = getattr(parent, conv_name), getattr(parent, norm_name)
        if not _fixed_statistics(norm, include_trainable_bn):
            skipped.append(norm)
            continue
        _fold(conv, norm)
        setattr(parent, norm_name, nn.Identity())
        fused += 1
    if skipped:
        warnings.warn(
            f"fuse_frozen_batchnorm: left {len(skipped)} trainable BatchNorm2d layer(s) unchanged "
            "(norm: bn, statistics not frozen); pass include_trainable_bn=True to fold them with "
            "their current running statistics for inference", stacklevel=2)
    previous = getattr(model, FUSED_ATTRIBUTE, 0)
    setattr(model, FUSED_ATTRIBUTE, previous + fused)
    return model


def is_fused(model: nn.Module) -> bool:
    """Whether :func:`fuse_frozen_batchnorm` folded at least one norm of ``model``."""
    return getattr(model, FUSED_ATTRIBUTE, 0) > 0


def unfused_batchnorms(model: nn.Module) -> List[str]:
    """Names of the BatchNorm layers still present in ``model`` (after fusion: the skipped ones)."""
    return [name for name, m in model.named_modules() if _is_batchnorm(m)]


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store every 4-D parameter and buffer of ``model`` channels-last (NHWC), in place.

    oneDNN / cuDNN convolutions then run in NHWC and produce NHWC outputs from the usual
    NCHW input batch; results equal the NCHW ones up to float rounding. Returns ``model``.
    """
    return model.to(memory_format=torch.channels_last)
