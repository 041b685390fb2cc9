"""Full resume state: written atomically, loaded with ``weights_only=True``.

A training checkpoint is a dict of tensors and plain Python values only:
``model, optimizer, scaler, schedule, iteration, epoch, sampler, rng, config, meta``.
"""
import random
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from iadet.checkpoint import load_checkpoint_file
from iadet.io import atomic_torch_save

CHECKPOINT_GLOBS = ("latest.pth", "iter_*.pth", "epoch_*.pth")


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as weights_only-loadable values."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "mt": list(mt), "gauss": gauss},
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["mt"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict, path: Union[str, Path]) -> None:
    """Write ``state`` atomically (temporary file, fsync, rename)."""
    atomic_torch_save(state, path)


def _iteration_of(path: Path) -> Optional[int]:
    """The iteration stored in a checkpoint, or None (with a warning) when it is damaged."""
    try:
        state = load_checkpoint_file(path)
        return int(state["iteration"])
    except Exception as exc:  # a truncated or foreign file must not stop a resume
        warnings.warn(f"skipping damaged checkpoint {path}: {exc}")
        return None


def find_resume_checkpoint(work_dir: Union[str, Path]) -> Optional[Path]:
    """The valid checkpoint with the highest iteration in ``work_dir`` (None if there is none)."""
    work_dir = Path(work_dir)
    candidates = sorted({p for g in CHECKPOINT_GLOBS for p in work_dir.glob(g)})
    best, best_iter = None, -1
    for path in candidates:
        it = _iteration_of(path)
        if it is not None and it > best_iter:
            best, best_iter = path, it
    return best
