"""Training and test transforms on ``(image, target)`` pairs (SPEC §2 "Data").

Every transform is a callable ``(image, target) -> (image, target)`` where

* ``image`` is a (3, H, W) RGB tensor, uint8 or float32, pixel values in [0, 255];
* ``target`` is the dict the datasets return (see :mod:`iadet.data.coco`): ``boxes`` (K, 4)
  and ``ignore_boxes`` (G, 4) float32 ``xyxy`` in absolute pixels, ``size`` (h, w) of the
  current image, ``scale_factor`` (sy, sx) = current size / original size, ``flipped``.

The pipeline follows MMDetection, which the authors used: keep-ratio resize, random
horizontal flip, normalise (ImageNet mean/std in [0, 255] RGB units). Padding to a multiple
of 32 happens when a batch is formed (:func:`iadet.data.loading.collate_detection`).
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

Target = Dict[str, object]


def keep_ratio_size(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """Output (h, w) of the keep-ratio resize of an image of ``height`` x ``width``.

    ``scale = min(min_size / short_edge, max_size / long_edge)`` and every edge becomes
    ``int(edge * scale + 0.5)`` (round half up, MMDetection's ``rescale_size``). Example:
    640 x 426 with (800, 1333) -> scale 800/426 -> (800, 1202).
    """
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


class Compose:
    """Apply transforms in order: ``Compose([Resize(), RandomHorizontalFlip(), Normalize()])``."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target) -> Tuple[Tensor, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class Resize:
    """Keep-ratio resize to fit within ``max_size`` (long edge) x ``min_size`` (short edge).

    Args:
        max_size: the long edge is at most this (1333 for COCO, 1000 for VOC/ablations).
        min_size: the short edge is at most this (800 for COCO, 600 for VOC/ablations);
            one of the two limits is reached exactly (up to rounding).
            Pass both by keyword: the order follows MMDetection's ``scale=(1333, 800)``.

    The output size is :func:`keep_ratio_size` (round half up). Bilinear interpolation with
    ``align_corners=False`` and no antialiasing. A uint8 image stays uint8 (rounded, like
    MMDetection's cv2 resize, and about 5x faster than resizing float32 on a CPU); a float
    image stays float. Boxes are multiplied by the actual per-axis factors
    ``(w' / w, h' / h)``, which differ slightly from ``scale`` because of the rounding, so
    they keep covering the same pixels. ``size`` and ``scale_factor`` are updated.
    """

    def __init__(self, max_size: int = 1333, min_size: int = 800):
        if min_size <= 0 or max_size <= 0:
            raise ValueError(f"Resize sizes must be positive, got max_size={max_size}, min_size={min_size}")
        self.max_size = max_size
        self.min_size = min_size

    def __call__(self, image: Tensor, target: Target) -> Tuple[Tensor, Target]:
        h, w = image.shape[-2:]
        new_h, new_w = keep_ratio_size(h, w, self.min_size, self.max_size)
        if (new_h, new_w) != (h, w):
            image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear",
                                  align_corners=False, antialias=False)[0]
        sy, sx = new_h / h, new_w / w
        target = dict(target)
        scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
        for key in ("boxes", "ignore_boxes"):
            if key in target:
                target[key] = target[key] * scale
        old_sy, old_sx = target.get("scale_factor", (1.0, 1.0))
        target["scale_factor"] = (old_sy * sy, old_sx * sx)
        target["size"] = (new_h, new_w)
        return image, target

    def __repr__(self) -> str:
        return f"Resize(max_size={self.max_size}, min_size={self.min_size})"


def hflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror (K, 4) xyxy boxes in an image ``width`` pixels wide: x1' = W - x2, x2' = W - x1."""
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


class RandomHorizontalFlip:
    """Mirror the image and its boxes left-right with probability ``p``.

    Args:
        p: flip probability (0.5 in the paper's recipe).
        seed: ``None`` draws from torch's global RNG (which the DataLoader seeds in each
            worker, see :func:`iadet.data.loading.worker_init_fn`). An int gives the
            transform its own generator: in the main process it is seeded with ``seed``;
            inside a DataLoader worker it is re-seeded once from ``seed`` and the worker's
            seed, so workers do not repeat each other's flips.

    ``target["flipped"]`` is toggled when the image is flipped.
    """

    def __init__(self, p: float = 0.5, seed: Optional[int] = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p
        self.seed = seed
        self._generator: Optional[torch.Generator] = None
        self._generator_key: object = "unset"

    def _get_generator(self) -> Optional[torch.Generator]:
        if self.seed is None:
            return None
        info = torch.utils.data.get_worker_info()
        key = None if info is None else info.seed
        if self._generator is None or key != self._generator_key:
            seed = self.seed if key is None else (self.seed * 1_000_003 + key) % (2 ** 63)
            self._generator = torch.Generator().manual_seed(seed)
            self._generator_key = key
        return self._generator

    def __call__(self, image: Tensor, target: Target) -> Tuple[Tensor, Target]:
        if self.p == 0.0 or torch.rand((), generator=self._get_generator()).item() >= self.p:
            return image, target
        return flip_horizontal(image, target)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p}, seed={self.seed})"


def flip_horizontal(image: Tensor, target: Target) -> Tuple[Tensor, Target]:
    """Deterministic left-right flip of a (3, H, W) image and its target's boxes."""
    width = image.shape[-1]
    target = dict(target)
    for key in ("boxes", "ignore_boxes"):
        if key in target:
            target[key] = hflip_boxes(target[key], width)
    target["flipped"] = not target.get("flipped", False)
    return image.flip(-1), target


class Normalize:
    """``(image - mean) / std`` per RGB channel -> float32; boxes unchanged.

    Args:
        mean, std: per-channel statistics in [0, 255] RGB units (ImageNet by default:
            mean 123.675, 116.28, 103.53; std 58.395, 57.12, 57.375).
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"Normalize needs 3 means and 3 stds (RGB), got {list(mean)} and {list(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"Normalize std must be positive, got {list(std)}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Tensor, target: Target) -> Tuple[Tensor, Target]:
        # in place on a fresh float32 copy: allocating temporaries costs more than the arithmetic
        out = image.to(torch.float32, copy=True)
        out.sub_(self.mean).div_(self.std)
        return out, target

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def build_train_transforms(min_size: int = 800, max_size: int = 1333, flip_prob: float = 0.5,
                           mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                           seed: Optional[int] = None) -> Compose:
    """Resize -> RandomHorizontalFlip -> Normalize (the paper's training pipeline).

    Args:
        min_size, max_size: keep-ratio resize limits for the short and long edge
            (800/1333 for COCO; 600/1000 for VOC and the ablations).
        flip_prob: horizontal-flip probability (0 disables flipping).
        mean, std: RGB statistics in [0, 255] units.
        seed: seed of the flip's own generator (``None``: torch's global RNG).
    """
    transforms: List[Callable] = [Resize(max_size=max_size, min_size=min_size)]
    if flip_prob > 0:
        transforms.append(RandomHorizontalFlip(flip_prob, seed=seed))
    transforms.append(Normalize(mean, std))
    return Compose(transforms)


def build_test_transforms(min_size: int = 800, max_size: int = 1333, mean: Sequence[float] = IMAGENET_MEAN,
                          std: Sequence[float] = IMAGENET_STD) -> Compose:
    """Resize -> Normalize (no flip); arguments as in :func:`build_train_transforms`."""
    return Compose([Resize(max_size=max_size, min_size=min_size), Normalize(mean, std)])
