"""Loading model weights from the checkpoint files iadet writes or converts."""
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch


def load_checkpoint_file(path: Union[str, Path]) -> dict:
    """``torch.load(weights_only=True)`` with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle payloads, truncated files, non-checkpoints
        raise ValueError(f"cannot load checkpoint {path} safely (weights_only=True): {exc}. "
                         "Use a checkpoint written by iadet or by `python -m iadet.convert`.") from exc


def model_state_from_checkpoint(obj: dict, path: Union[str, Path] = "<checkpoint>") -> Tuple[Dict, dict]:
    """The model state dict and the metadata of a loaded checkpoint.

    Accepts iadet's converted files ``{"state_dict", "meta"}``, training checkpoints
    ``{"model", ...}`` and raw state dicts.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    for key in ("state_dict", "model"):
        if key in obj and isinstance(obj[key], dict):
            return obj[key], obj.get("meta", {}) or {}
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise ValueError(f"{path}: no 'state_dict' or 'model' entry and not a raw state dict "
                     f"(top-level keys: {sorted(obj)[:10]})")


def load_detector_weights(model: torch.nn.Module, path: Union[str, Path], strict: bool = True) -> dict:
    """Load a checkpoint into ``model``; returns the checkpoint's metadata.

    A missing ``head.iou_pred.*`` is allowed (weights converted from a detector without the
    IoU branch): the IoU conv keeps its initialisation and a warning is printed.
    """
    state, meta = model_state_from_checkpoint(load_checkpoint_file(path), path)
    hint = "Check --config (backbone, num_classes, iou_branch) against the run that wrote the checkpoint."
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"{path} does not fit the configured model: {exc}. {hint}") from exc
    missing = [k for k in result.missing_keys if not k.startswith("head.iou_pred.")]
    if strict and (missing or result.unexpected_keys):
        raise ValueError(f"{path} does not fit the configured model: missing keys {missing[:8]}, "
                         f"unexpected keys {result.unexpected_keys[:8]}. {hint}")
    if len(missing) != len(result.missing_keys):
        import warnings
        warnings.warn(f"{path} has no IoU branch weights; head.iou_pred keeps its initialisation")
    return meta
