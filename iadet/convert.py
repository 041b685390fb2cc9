"""Convert torchvision checkpoints to iadet's parameter names.

Two sources are understood:

- ``torchvision-resnet``: an ImageNet ResNet/ResNeXt classifier (``resnet50-*.pth``,
  ``resnext101_32x8d-*.pth``...). iadet's backbone keeps torchvision's names, so this only
  drops ``fc.*`` and ``num_batches_tracked`` and strips a DataParallel ``module.`` prefix.
- ``torchvision-retinanet``: a ``retinanet_resnet50_fpn`` detector. Its backbone, FPN and
  head map onto iadet's ``backbone.*``, ``neck.*`` and ``head.*``. torchvision has no IoU
  branch, so the result has no ``head.iou_pred.*``: load it into a detector built with
  the IoU branch off, or with ``strict=False``, in which case the IoU conv keeps its
  initialisation (N(0, 0.01), bias 0, i.e. predicted IoU 0.5 everywhere). torchvision v1
  takes P6 from P5 (``neck.p6.weight`` is (256, 256, 3, 3)), so the neck must be built in
  that mode (SPEC section 4), and the classifier has 91 classes (COCO category ids).

Command line::

    python -m iadet.convert --from torchvision-resnet resnet50-0676ba61.pth r50.pth
    python -m iadet.convert --from torchvision-retinanet retinanet_resnet50_fpn.pth out.pth

The output file holds ``{"state_dict": ..., "meta": {"source": ..., ...}}``.
"""
import argparse
import os
import re
import sys
from pathlib import Path
from typing import Callable, Dict, Union

import torch

from iadet.io import atomic_torch_save
from torch import Tensor

StateDict = Dict[str, Tensor]

SOURCES = ("torchvision-resnet", "torchvision-retinanet")

# torchvision ResNet/ResNeXt names, which iadet's backbone mirrors.
_RESNET_KEY = re.compile(
    r"(?:conv1|bn1|layer[1-4]\.\d+\.(?:conv[1-3]|bn[1-3]|downsample\.[01]))"
    r"\.(?:weight|bias|running_mean|running_var|num_batches_tracked)"
)

# torchvision RetinaNet name -> iadet name, for everything outside the ResNet body.
# The optional "\.0" accepts both the current layout (Conv2dNormActivation / Sequential
# wrappers, ``inner_blocks.0.0.weight``) and the pre-0.13 one (``inner_blocks.0.weight``).
_RETINANET_RENAMES = (
    (re.compile(r"backbone\.fpn\.inner_blocks\.(\d+)(?:\.0)?\.(weight|bias)"), r"neck.lateral_convs.\1.\2"),
    (re.compile(r"backbone\.fpn\.layer_blocks\.(\d+)(?:\.0)?\.(weight|bias)"), r"neck.output_convs.\1.\2"),
    (re.compile(r"backbone\.fpn\.extra_blocks\.(p6|p7)\.(weight|bias)"), r"neck.\1.\2"),
    (re.compile(r"head\.classification_head\.cls_logits\.(weight|bias)"), r"head.cls_logits.\1"),
    (re.compile(r"head\.regression_head\.bbox_reg\.(weight|bias)"), r"head.bbox_pred.\1"),
)
# Head towers: current layout ``conv.{i}.0.*`` (conv i of a Conv2d+ReLU block); old layout
# ``conv.{2i}.*`` (a flat Sequential of Conv2d, ReLU, Conv2d, ReLU, ...).
_TOWER_NEW = re.compile(r"head\.(classification|regression)_head\.conv\.(\d+)\.0\.(weight|bias)")
_TOWER_OLD = re.compile(r"head\.(classification|regression)_head\.conv\.(\d+)\.(weight|bias)")
_TOWER_NAME = {"classification": "cls_convs", "regression": "reg_convs"}


def unwrap_state_dict(obj, where: str) -> StateDict:
    """The state dict inside a loaded checkpoint ``obj``: ``obj`` itself when it maps names
    to tensors, else ``obj["state_dict"]`` or ``obj["model"]``. ``where`` names the source
    in error messages."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(
            f"{where} holds no state dict (got {type(obj).__name__}); expected a dict of "
            f"tensors, or a dict with a 'state_dict' or 'model' entry holding one"
        )
    not_tensors = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise ValueError(
            f"{where}: entries {not_tensors[:5]} are not tensors; expected a state dict "
            f"(a dict of tensors), or a dict with a 'state_dict' or 'model' entry holding one"
        )
    return dict(obj)


def read_state_dict(path: Union[str, os.PathLike]) -> StateDict:
    """Load a state dict from a checkpoint file with ``torch.load(weights_only=True)``.

    Raises FileNotFoundError or ValueError with a message naming ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint file {str(path)!r} does not exist; check the path "
            f"(download torchvision weights on a machine with network access and copy them here)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors: one line saying which (iadet.checkpoint)
        from iadet.checkpoint import checkpoint_error_message
        raise ValueError(checkpoint_error_message(path, error)) from None
    return unwrap_state_dict(obj, repr(str(path)))


def _strip_module_prefix(state_dict: StateDict) -> StateDict:
    """Remove the ``module.`` prefix that DataParallel/DDP checkpoints put on every key."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _raise_unrecognised(keys, source: str, expected: str) -> None:
    shown = ", ".join(repr(k) for k in keys[:10])
    more = f" and {len(keys) - 10} more" if len(keys) > 10 else ""
    raise ValueError(
        f"unrecognised {source} keys: {shown}{more}. Expected {expected}; "
        f"is this checkpoint of the right kind (see python -m iadet.convert --help)?"
    )


def convert_torchvision_resnet(state_dict: StateDict) -> StateDict:
    """torchvision ImageNet ResNet/ResNeXt state dict -> iadet ``ResNet`` state dict.

    Drops ``fc.*`` (iadet's backbone has no classifier) and ``num_batches_tracked``
    (meaningless for frozen statistics; nn.BatchNorm2d fills it in when loading a plain
    dict), strips an optional ``module.`` prefix, keeps every other name unchanged.
    Raises ValueError naming any key that is not a torchvision ResNet key.
    """
    out: StateDict = {}
    unknown = []
    for key, value in _strip_module_prefix(state_dict).items():
        if key.startswith("fc."):
            continue
        if not _RESNET_KEY.fullmatch(key):
            unknown.append(key)
        elif not key.endswith("num_batches_tracked"):
            out[key] = value
    if unknown:
        _raise_unrecognised(
            unknown, "torchvision ResNet",
            "conv1.*, bn1.*, layer{1-4}.{block}.{conv,bn,downsample}*, fc.* "
            "(a detector checkpoint needs --from torchvision-retinanet)",
        )
    return out


def _rename_retinanet_key(key: str) -> Union[str, None]:
    """iadet name of a torchvision RetinaNet key outside the ResNet body; None if unknown."""
    for pattern, replacement in _RETINANET_RENAMES:
        if pattern.fullmatch(key):
            return pattern.sub(replacement, key)
    match = _TOWER_NEW.fullmatch(key)
    if match:
        branch, index, kind = match.groups()
        return f"head.{_TOWER_NAME[branch]}.{index}.{kind}"
    match = _TOWER_OLD.fullmatch(key)
    if match and int(match.group(2)) % 2 == 0:  # odd indices were the ReLUs: no weights
        branch, index, kind = match.groups()
        return f"head.{_TOWER_NAME[branch]}.{int(index) // 2}.{kind}"
    return None


def convert_torchvision_retinanet(state_dict: StateDict) -> StateDict:
    """torchvision ``retinanet_resnet50_fpn`` state dict -> iadet detector state dict.

    ``backbone.body.*`` -> ``backbone.*``; FPN ``inner_blocks.i`` -> ``neck.lateral_convs.i``,
    ``layer_blocks.i`` -> ``neck.output_convs.i`` (i = 0 is C3/P3), ``extra_blocks.p6/p7``
    -> ``neck.p6/p7``; head towers -> ``head.cls_convs.i`` / ``head.reg_convs.i``,
    ``cls_logits`` -> ``head.cls_logits``, ``bbox_reg`` -> ``head.bbox_pred``. Both the
    current and the pre-0.13 torchvision layouts are accepted. No ``head.iou_pred.*`` is
    produced (see the module docstring). ``num_batches_tracked`` entries are dropped.
    Raises ValueError naming any unrecognised key.
    """
    out: StateDict = {}
    unknown = []
    for key, value in _strip_module_prefix(state_dict).items():
        if key.startswith("backbone.body."):
            body_key = key[len("backbone.body."):]
            if not _RESNET_KEY.fullmatch(body_key):
                unknown.append(key)
            elif not body_key.endswith("num_batches_tracked"):
                out["backbone." + body_key] = value
            continue
        new_key = _rename_retinanet_key(key)
        if new_key is None:
            unknown.append(key)
        elif new_key in out:
            raise ValueError(
                f"key {key!r} maps to {new_key!r}, which another key already produced: the "
                f"checkpoint mixes torchvision's old and new layouts; re-save it from one model"
            )
        else:
            out[new_key] = value
    if unknown:
        _raise_unrecognised(
            unknown, "torchvision RetinaNet",
            "backbone.body.*, backbone.fpn.{inner_blocks,layer_blocks,extra_blocks}.*, "
            "head.classification_head.{conv,cls_logits}.*, head.regression_head.{conv,bbox_reg}.* "
            "(an ImageNet classifier needs --from torchvision-resnet)",
        )
    return out


def count_parameters(state_dict: StateDict) -> int:
    """Number of values in ``state_dict``, BatchNorm running statistics excluded."""
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return sum(v.numel() for k, v in state_dict.items() if not k.endswith(skip))


def save_atomically(obj, path: Union[str, os.PathLike]) -> None:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`iadet.io.atomic_torch_save`)."""
    atomic_torch_save(obj, path)


def _retinanet_meta(state_dict: StateDict) -> dict:
    # A = bbox_reg channels / 4 is exact; classes = cls_logits channels / A (91 for COCO).
    num_anchors = state_dict["head.bbox_pred.weight"].shape[0] // 4
    num_classes = state_dict["head.cls_logits.weight"].shape[0] // num_anchors
    return {"num_classes": num_classes, "num_anchors": num_anchors}


CONVERTERS: Dict[str, Callable[[StateDict], StateDict]] = {
    "torchvision-resnet": convert_torchvision_resnet,
    "torchvision-retinanet": convert_torchvision_retinanet,
}


def convert_file(source: str, in_path, out_path) -> dict:
    """Read ``in_path``, convert it as ``source``, write ``out_path`` atomically.
    Returns the written ``{"state_dict", "meta"}`` dict."""
    state_dict = read_state_dict(in_path)
    try:
        converted = CONVERTERS[source](state_dict)
    except ValueError as error:
        raise ValueError(f"{str(in_path)!r}: {error}") from error
    meta = {"source": source}
    if source == "torchvision-retinanet":
        if "head.bbox_pred.weight" not in converted or "head.cls_logits.weight" not in converted:
            raise ValueError(
                f"{str(in_path)!r} has no head.regression_head.bbox_reg.weight or "
                f"head.classification_head.cls_logits.weight; is it a complete RetinaNet?"
            )
        meta.update(_retinanet_meta(converted))
    result = {"state_dict": converted, "meta": meta}
    save_atomically(result, out_path)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m iadet.convert",
        description="Convert a torchvision checkpoint to iadet's parameter names.",
    )
    parser.add_argument("--from", dest="source", required=True, choices=SOURCES,
                        help="what the input checkpoint is")
    parser.add_argument("input", help="torchvision checkpoint (.pth) to read")
    parser.add_argument("output", help="iadet checkpoint to write")
    args = parser.parse_args(argv)
    try:
        result = convert_file(args.source, args.input, args.output)
    except (FileNotFoundError, ValueError, OSError) as error:
        print(f"iadet.convert: error: {error}", file=sys.stderr)
        return 1
    state_dict = result["state_dict"]
    extra = "".join(f", {k} {v}" for k, v in result["meta"].items() if k != "source")
    print(f"wrote {args.output}: {len(state_dict)} tensors, "
          f"{count_parameters(state_dict):,} parameters (from {args.source}{extra})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
