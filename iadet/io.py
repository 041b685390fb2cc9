"""Image files and atomic writes."""
import os
from pathlib import Path
from typing import Union

import torch
from torch import Tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")


def read_image_rgb(path: Union[str, Path]) -> Tensor:
    """Decode an image file -> (3, H, W) uint8 RGB tensor.

    Uses ``torchvision.io`` (libjpeg-turbo / libpng). Raises ``FileNotFoundError`` or
    ``ValueError`` naming the file when it is missing or cannot be decoded.
    """
    from torchvision.io import ImageReadMode, decode_image, read_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        raise ValueError(f"cannot decode image {path}: {exc}. Is the file truncated or not an image?") from exc


def list_images(path: Union[str, Path]):
    """A file, or the image files of a folder sorted by name."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        return files
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    return [path]


def atomic_torch_save(obj, path: Union[str, Path]) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # never leave a half-written temporary behind
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path: Union[str, Path]) -> None:
    """Write text to a temporary file, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
