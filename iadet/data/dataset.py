"""The base of every iadet dataset and the target format that all of them return.

:class:`DetectionDataset` holds one :class:`ImageRecord` (parsed ground truth) per image
and decodes, checks and transforms an image on access; the parsers (:mod:`iadet.data.coco`,
:mod:`iadet.data.voc`) build the records, with the helpers they share here
(:func:`clip_and_filter_boxes`, :func:`describe_ids`, :func:`image_size_from_header`).

``dataset[i]`` returns ``(image, target)``:

* ``image``: (3, H, W) RGB uint8 tensor as decoded; after the transforms of
  :mod:`iadet.data.transforms` a float32 tensor (resized, maybe flipped, normalised).
* ``target`` (a dict):

  ============== ====================================================================
  boxes          (K, 4) float32, ``xyxy`` in pixels of the current (resized) image
  labels         (K,) int64, contiguous labels 0..C-1 (``label_to_cat_id`` maps back)
  ignore_boxes   (G, 4) float32 ``xyxy``: crowd regions (COCO, ``crowd="ignore"``) or
                 difficult objects (VOC); (0, 4) when there are none
  image_id       int, the dataset's image id (COCO: the JSON's id; VOC: the index)
  orig_size      (H, W) of the decoded file
  size           (h, w) after resizing (== orig_size without a Resize)
  scale_factor   (sy, sx) = (h / H, w / W)
  flipped        bool, whether the image was mirrored left-right
  file_name      str, the image file relative to the dataset's image folder
  ============== ====================================================================

Boxes are continuous coordinates: a box covering the whole image is (0, 0, W, H), width
is ``x2 - x1`` (SPEC §4).

Bad input (missing, truncated or undecodable image files, annotations naming images that
do not exist, unknown categories) raises an error naming the file and the image id. With
``skip_bad_images=True`` such images are left out instead, with a warning, and counted in
``num_skipped``. Problems found from the annotations and the folder listing are handled by
the parser at construction; an image that fails to *decode* is only found when it is
loaded: it is then replaced by the next good image (in dataset order) of the same
orientation group, so aspect-ratio batches stay consistent, with a warning naming both (a
``ValueError`` naming the first failure when no image of the group decodes).
Inside DataLoader worker processes that count stays in the worker; the warning is what
reports it.
"""
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from iadet.io import read_image_rgb
from iadet.data.loading import aspect_ratio_group_ids

MAX_IDS_SHOWN = 5


def describe_ids(ids: Sequence, what: str = "image ids") -> str:
    """'image ids 1, 2, 3, ... (12 in all)': the first few ids and the count."""
    ids = list(ids)
    shown = ", ".join(str(i) for i in ids[:MAX_IDS_SHOWN])
    more = f", ... ({len(ids)} in all)" if len(ids) > MAX_IDS_SHOWN else ""
    return f"{what} {shown}{more}"


def image_size_from_header(path: Path) -> Tuple[int, int]:
    """(height, width) from the image header, without decoding the pixels."""
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
    return height, width


class ImageRecord:
    """One image's parsed ground truth, kept as small numpy arrays.

    ``boxes`` (K, 4) float32 xyxy pixels, ``labels`` (K,) int64, ``ignore_boxes`` (G, 4)
    float32, ``extra``: more per-image target entries (e.g. VOC's ``difficult``), given to
    the target as tensors.
    """

    __slots__ = ("image_id", "file_name", "height", "width", "boxes", "labels", "ignore_boxes", "extra")

    def __init__(self, image_id: int, file_name: str, height: int, width: int, boxes: np.ndarray,
                 labels: np.ndarray, ignore_boxes: np.ndarray, extra: Optional[Dict[str, np.ndarray]] = None):
        self.image_id = image_id
        self.file_name = file_name
        self.height = height
        self.width = width
        self.boxes = boxes.reshape(-1, 4).astype(np.float32)
        self.labels = labels.reshape(-1).astype(np.int64)
        self.ignore_boxes = ignore_boxes.reshape(-1, 4).astype(np.float32)
        self.extra = extra or {}


def clip_and_filter_boxes(boxes: np.ndarray, height: int, width: int) -> Tuple[np.ndarray, np.ndarray, int]:
    """Clip (K, 4) xyxy boxes to [0, width] x [0, height]; drop those left with zero area.

    Returns (kept boxes (K', 4), keep mask (K,) bool, number of kept boxes that were clipped).
    """
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    changed = (clipped != boxes).any(axis=1)
    return clipped[keep], keep, int((changed & keep).sum())


class DetectionDataset(Dataset):
    """Images plus parsed ground truth (:class:`ImageRecord`); decodes and transforms on access.

    Subclasses parse their annotation format into ``records`` and call this constructor.

    Args:
        records: one :class:`ImageRecord` per image, in dataset order.
        image_dir: folder that ``record.file_name`` is relative to.
        class_names: the C class names, index = label.
        transforms: callable ``(image, target) -> (image, target)`` or None.
        skip_bad_images: replace images that fail to decode (see the module docstring)
            instead of raising.
        num_skipped: images already left out while parsing.
    """

    def __init__(self, records: List[ImageRecord], image_dir: Path, class_names: Sequence[str],
                 transforms: Optional[Callable] = None, skip_bad_images: bool = False, num_skipped: int = 0):
        self.records = records
        self.image_dir = Path(image_dir)
        self.class_names = list(class_names)
        self.transforms = transforms
        self.skip_bad_images = skip_bad_images
        self.num_skipped = num_skipped
        self._bad_images: Dict[int, str] = {}  # index -> why it cannot be loaded
        self._group_ids: Optional[np.ndarray] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def warn_box_fixes(self, where: str, dropped_ids: Sequence[int], clipped_ids: Sequence[int]) -> None:
        """One warning each for the dropped (degenerate) and clipped boxes, with image ids."""
        if dropped_ids:
            warnings.warn(f"{where}: dropped {self.num_dropped_boxes} box(es) with zero or negative width or "
                          f"height (after clipping to the image) in {describe_ids(dropped_ids)}", stacklevel=4)
        if clipped_ids:
            warnings.warn(f"{where}: clipped {self.num_clipped_boxes} box(es) partly outside the image in "
                          f"{describe_ids(clipped_ids)}", stacklevel=4)

    def __len__(self) -> int:
        return len(self.records)

    def get_image_info(self, index: int) -> Dict[str, object]:
        """``{"id", "file_name", "width", "height"}`` of image ``index``, without decoding it."""
        r = self.records[index]
        return {"id": r.image_id, "file_name": r.file_name, "width": r.width, "height": r.height}

    def aspect_ratios(self) -> np.ndarray:
        """(N,) float64 width / height of every image, from the annotations (no decoding)."""
        return np.array([r.width / r.height for r in self.records], dtype=np.float64)

    def load_image(self, index: int) -> Tensor:
        """Decode image ``index`` -> (3, H, W) uint8, checking its size against the annotations.

        Raises ``FileNotFoundError`` / ``ValueError`` naming the file and the image id.
        """
        r = self.records[index]
        path = self.image_dir / r.file_name
        try:
            image = read_image_rgb(path)
        except (FileNotFoundError, ValueError) as exc:
            raise type(exc)(f"image id {r.image_id}: {exc}") from exc
        if tuple(image.shape[-2:]) != (r.height, r.width):
            raise ValueError(f"image id {r.image_id}: {path} decodes to {image.shape[-1]}x{image.shape[-2]} "
                             f"(w x h) but the annotations say {r.width}x{r.height}; its boxes would be wrong. "
                             "Fix the annotation's width/height or the file.")
        return image

    def raw_target(self, index: int) -> Dict[str, object]:
        """The target of image ``index`` before any transform (see the module docstring)."""
        r = self.records[index]
        target = {
            "boxes": torch.from_numpy(r.boxes.copy()),
            "labels": torch.from_numpy(r.labels.copy()),
            "ignore_boxes": torch.from_numpy(r.ignore_boxes.copy()),
            "image_id": r.image_id,
            "orig_size": (r.height, r.width),
            "size": (r.height, r.width),
            "scale_factor": (1.0, 1.0),
            "flipped": False,
            "file_name": r.file_name,
        }
        for key, value in r.extra.items():
            target[key] = torch.from_numpy(value.copy())
        return target

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict[str, object]]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of {len(self)} images")
        index, image = self._load_or_substitute(index)
        target = self.raw_target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def _load_or_substitute(self, index: int) -> Tuple[int, Tensor]:
        """Load ``index``; with ``skip_bad_images``, fall back to the next good image of its group."""
        if not self.skip_bad_images:
            return index, self.load_image(index)
        if self._group_ids is None:
            self._group_ids = aspect_ratio_group_ids(self.aspect_ratios())
        groups, n = self._group_ids, len(self)
        errors = []
        for step in range(n):
            j = (index + step) % n
            if j in self._bad_images or groups[j] != groups[index]:
                continue
            try:
                image = self.load_image(j)
            except (FileNotFoundError, ValueError) as exc:
                self._bad_images[j] = str(exc)
                self.num_skipped += 1
                errors.append(str(exc))
                continue
            if errors:
                r = self.records[j]
                warnings.warn(f"{type(self).__name__}: skipping {len(errors)} bad image(s): {'; '.join(errors)}. "
                              f"skip_bad_images=True, so image id {r.image_id} ({r.file_name}), the next good "
                              "image of the same orientation group, is used in its place.", stacklevel=3)
            return j, image
        group = [j for j in range(n) if groups[j] == groups[index]]
        orientation = "portrait" if groups[index] else "landscape or square"
        raise ValueError(f"{type(self).__name__}: skip_bad_images=True, but none of the {len(group)} "
                         f"{orientation} image(s) of {self.image_dir} can be loaded, so image id "
                         f"{self.records[index].image_id} has no replacement. Fix or replace the image files; "
                         f"the first failure: {self._bad_images[group[0]]}")
