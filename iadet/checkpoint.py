"""Loading model weights from the checkpoint files iadet writes or converts."""
import re
import warnings
from pathlib import Path
from typing import Dict, Tuple, Union

import torch


# What torch.save writes: a zip archive (torch >= 1.6) or, with
# ``_use_new_zipfile_serialization=False``, a pickle starting with torch's magic number.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # the pickled magic number, after the protocol header
_REUSE_HINT = "Use a checkpoint written by iadet or by `python -m iadet.convert`."


def load_checkpoint_file(path: Union[str, Path]) -> dict:
    """``torch.load(weights_only=True)`` with one-line errors that name the file.

    Raises FileNotFoundError when ``path`` is not a file and ValueError otherwise: a file that
    is not a PyTorch checkpoint at all (empty, random bytes, text), a damaged one (truncated
    archive) and, with the trust explanation, one that holds Python objects that only an unsafe
    unpickling could create (see :func:`checkpoint_error_message`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns before it fails on a plain pickle
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle payloads, truncated files, non-checkpoints
        raise ValueError(checkpoint_error_message(path, exc)) from exc


def _one_line(text: str, limit: int = 240) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))  # torch bolds part of its message
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def checkpoint_error_message(path: Path, exc: BaseException) -> str:
    """One line saying why ``torch.load(path, weights_only=True)`` raised ``exc``.

    * not written by ``torch.save`` (no zip or legacy header): "is not a PyTorch checkpoint";
    * a torch file that the weights-only unpickler refuses because it names Python globals
      (classes, functions): "cannot load checkpoint ... safely (weights_only=True)" and why;
    * any other failure of a torch file (truncated, corrupted): "is a damaged ... PyTorch checkpoint".
    """
    try:
        with open(path, "rb") as f:
            head = f.read(32)
        size = path.stat().st_size
    except OSError as error:
        return f"cannot read checkpoint {path}: {error}"
    if size == 0:
        return f"{path} is not a PyTorch checkpoint: the file is empty. {_REUSE_HINT}"
    if not (head.startswith(_ZIP_MAGIC) or (head.startswith(b"\x80") and _LEGACY_MAGIC in head)):
        return (f"{path} is not a PyTorch checkpoint ({size} bytes without the zip or pickle header "
                f"that torch.save writes). {_REUSE_HINT}")
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(.*?\S)(?:\.\s|\n\s*\n|\s*$)", text, re.S)
    detail = _one_line(match.group(1) if match else (f"{type(exc).__name__}: {text}" if text else
                                                      type(exc).__name__), 160)
    if "Unsupported global" in text or "was not an allowed global" in text:
        return (f"cannot load checkpoint {path} safely (weights_only=True): it holds Python objects, not only "
                f"tensors and plain values ({detail}). Unpickling them would run code named by the file, so "
                "iadet refuses; only if you trust its source, load it yourself with "
                "torch.load(..., weights_only=False) and re-save just its state dict. " + _REUSE_HINT)
    return f"{path} is a damaged (truncated?) or unsupported PyTorch checkpoint: {detail}. {_REUSE_HINT}"


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
