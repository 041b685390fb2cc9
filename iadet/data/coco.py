"""COCO-format detection datasets and the target format every iadet dataset returns.

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
``num_skipped``. Problems found from the annotations and the folder listing are handled at
construction; an image that fails to *decode* is only found when it is loaded: it is then
replaced by the next good image (in dataset order) of the same orientation group, so
aspect-ratio batches stay consistent, with a warning naming both. Inside DataLoader worker
processes that count stays in the worker; the warning is what reports it.
"""
import contextlib
import difflib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from iadet.io import read_image_rgb
from iadet.data.loading import aspect_ratio_group_ids

COCO_DOWNLOAD_HINT = "Download COCO from https://cocodataset.org/#download (images and annotations_trainval2017.zip)"
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
        self._bad_indices: set = set()
        self._group_ids: Optional[np.ndarray] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

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
            if j in self._bad_indices or groups[j] != groups[index]:
                continue
            try:
                image = self.load_image(j)
            except (FileNotFoundError, ValueError) as exc:
                self._bad_indices.add(j)
                self.num_skipped += 1
                errors.append(str(exc))
                continue
            if errors:
                r = self.records[j]
                warnings.warn(f"{type(self).__name__}: skipping {len(errors)} bad image(s): {'; '.join(errors)}. "
                              f"skip_bad_images=True, so image id {r.image_id} ({r.file_name}), the next good "
                              "image of the same orientation group, is used in its place.", stacklevel=3)
            return j, image
        raise RuntimeError(f"{type(self).__name__}: no image of the orientation group of image id "
                           f"{self.records[index].image_id} can be decoded (see the warnings above)")


class CocoDetection(DetectionDataset):
    """A COCO-format JSON plus its image folder (COCO itself, COCO128, or any COCO-style set).

    Args:
        ann_file: the COCO-format JSON (``images``, ``annotations``, ``categories``).
        image_dir: the folder that the images' ``file_name`` entries are relative to.
        transforms: ``(image, target) -> (image, target)``, e.g.
            :func:`iadet.data.transforms.build_train_transforms`; None returns uint8 images.
        crowd: ``"drop"`` (default, the authors' recipe) leaves ``iscrowd=1`` boxes out;
            ``"ignore"`` returns them as ``target["ignore_boxes"]`` (SPEC §2).
        filter_empty: leave out images without any (non-crowd) box; default keeps them
            (they are all-negative training images).
        skip_bad_images: leave out bad images (missing or undecodable file, unknown category
            id) and annotations naming an image id that is not in ``images``, with a warning,
            instead of raising. Counted in ``num_skipped`` (images) and
            ``num_skipped_annotations``.
        class_names: select and order the classes by name (e.g. a checkpoint's classes):
            label i is the category named ``class_names[i]``.
        cat_ids: select and order the classes by category id: label i is ``cat_ids[i]``.
            With neither, all categories of the JSON in increasing id order (COCO: 80 classes,
            ids 1..90). Annotations of categories that exist but are not selected are left
            out silently; both given must name the same categories.

    Attributes:
        label_to_cat_id: list, label -> COCO category id (store it with results/checkpoints).
        cat_id_to_label: dict, COCO category id -> label.
        class_names: list of the C class names, index = label.
        coco: the ``pycocotools.coco.COCO`` index of ``ann_file`` (for COCOeval).
        num_dropped_boxes / num_clipped_boxes: boxes with zero or negative size (after
            clipping) left out / boxes partly outside the image clipped to it; each kind is
            reported once as a warning with the image ids.

    Boxes are COCO ``[x, y, w, h]`` converted to ``xyxy`` = (x, y, x + w, y + h), clipped to
    [0, W] x [0, H]. Images are in increasing id order.
    """

    def __init__(self, ann_file: Union[str, Path], image_dir: Union[str, Path], transforms: Optional[Callable] = None,
                 crowd: str = "drop", filter_empty: bool = False, skip_bad_images: bool = False,
                 class_names: Optional[Sequence[str]] = None, cat_ids: Optional[Sequence[int]] = None):
        ann_file, image_dir = Path(ann_file), Path(image_dir)
        if crowd not in ("drop", "ignore"):
            raise ValueError(f"crowd must be 'drop' or 'ignore', got {crowd!r}")
        if not ann_file.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {ann_file}. {COCO_DOWNLOAD_HINT}, "
                                    "or point ann_file at your COCO-format JSON.")
        if not image_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {image_dir} (for {ann_file.name}). "
                                    f"{COCO_DOWNLOAD_HINT}, or point image_dir at the folder of the images.")
        self.ann_file = ann_file
        self.crowd = crowd
        self.filter_empty = filter_empty
        self.coco = load_coco_index(ann_file)
        self.label_to_cat_id, names = select_categories(self.coco, ann_file, class_names, cat_ids)
        self.cat_id_to_label = {c: i for i, c in enumerate(self.label_to_cat_id)}
        self.num_skipped_annotations = 0
        self.num_dropped_boxes = 0
        self.num_clipped_boxes = 0
        self.skip_bad_images = skip_bad_images
        records, num_skipped = self._parse(image_dir)
        super().__init__(records, image_dir, names, transforms, skip_bad_images, num_skipped)

    def __repr__(self) -> str:
        return (f"CocoDetection(ann_file={str(self.ann_file)!r}, images={len(self)}, classes={self.num_classes}, "
                f"crowd={self.crowd!r})")

    def _bad(self, message: str, skipped: List) -> None:
        """Raise ``message``, or record it for the one skip warning when skipping."""
        if not self.skip_bad_images:
            raise ValueError(message)
        skipped.append(message)

    def _parse(self, image_dir: Path) -> Tuple[List[ImageRecord], int]:
        dataset, imgs = self.coco.dataset, self.coco.imgs
        where = self.ann_file.name
        anns_by_image: Dict[int, List[dict]] = {}
        orphans = []
        for ann in dataset.get("annotations", []):
            if ann.get("image_id") not in imgs:
                orphans.append(ann)
                continue
            anns_by_image.setdefault(ann["image_id"], []).append(ann)
        if orphans:
            msg = (f"{where}: {len(orphans)} annotation(s) refer to image ids missing from 'images' "
                   f"({describe_ids([a.get('image_id') for a in orphans])}; "
                   f"{describe_ids([a.get('id') for a in orphans], 'annotation ids')})")
            if not self.skip_bad_images:
                raise ValueError(msg + ". Fix the JSON, or pass skip_bad_images=True to leave them out.")
            self.num_skipped_annotations = len(orphans)
            warnings.warn(msg + "; left out (skip_bad_images=True)", stacklevel=3)

        try:
            files_present = set(os.listdir(image_dir))
        except OSError as exc:
            raise FileNotFoundError(f"cannot list the image folder {image_dir}: {exc}") from exc
        records, skipped_messages, skipped_ids = [], [], []
        dropped_ids, clipped_ids = [], []
        for image_id in sorted(imgs):
            info = imgs[image_id]
            file_name = info.get("file_name")
            if not file_name:
                self._bad(f"{where}: image id {image_id} has no 'file_name'", skipped_messages)
                skipped_ids.append(image_id)
                continue
            path = image_dir / file_name
            present = file_name in files_present if "/" not in file_name else path.is_file()
            if not present:
                self._bad(f"image file {path} of image id {image_id} (listed in {where}) not found. "
                          f"{COCO_DOWNLOAD_HINT}, or check image_dir.", skipped_messages)
                skipped_ids.append(image_id)
                continue
            try:
                height, width = self._image_size(info, path)
            except (OSError, ValueError) as exc:
                self._bad(f"cannot read the size of {path} (image id {image_id}): {exc}", skipped_messages)
                skipped_ids.append(image_id)
                continue
            try:
                record, dropped, clipped = self._make_record(image_id, file_name, height, width,
                                                             anns_by_image.get(image_id, []))
            except ValueError as exc:
                self._bad(str(exc), skipped_messages)
                skipped_ids.append(image_id)
                continue
            self.num_dropped_boxes += dropped
            self.num_clipped_boxes += clipped
            dropped_ids += [image_id] * (dropped > 0)
            clipped_ids += [image_id] * (clipped > 0)
            if self.filter_empty and len(record.boxes) == 0:
                continue
            records.append(record)

        if skipped_messages:
            warnings.warn(f"{where}: skipped {len(skipped_messages)} bad image(s) ({describe_ids(skipped_ids)}); "
                          f"first problem: {skipped_messages[0]}", stacklevel=3)
        if dropped_ids:
            warnings.warn(f"{where}: dropped {self.num_dropped_boxes} box(es) with zero or negative width or "
                          f"height (after clipping to the image) in {describe_ids(dropped_ids)}", stacklevel=3)
        if clipped_ids:
            warnings.warn(f"{where}: clipped {self.num_clipped_boxes} box(es) partly outside the image in "
                          f"{describe_ids(clipped_ids)}", stacklevel=3)
        return records, len(skipped_messages)

    @staticmethod
    def _image_size(info: dict, path: Path) -> Tuple[int, int]:
        """(height, width) from the JSON, or from the file header when the JSON lacks them."""
        if "height" in info and "width" in info:
            height, width = int(info["height"]), int(info["width"])
        else:
            height, width = image_size_from_header(path)
        if height <= 0 or width <= 0:
            raise ValueError(f"non-positive size {width}x{height} (w x h)")
        return height, width

    def _make_record(self, image_id: int, file_name: str, height: int, width: int,
                     anns: List[dict]) -> Tuple[ImageRecord, int, int]:
        """Convert, clip and filter the boxes of one image -> (record, #dropped, #clipped)."""
        boxes, labels, ignore = [], [], []
        for ann in anns:
            cat_id = ann.get("category_id")
            if cat_id not in self.coco.cats:
                raise ValueError(f"{self.ann_file.name}: annotation id {ann.get('id')} of image id {image_id} "
                                 f"({file_name}) has category_id {cat_id}, which is not in 'categories' "
                                 f"({describe_ids(sorted(self.coco.cats), 'ids')})")
            if cat_id not in self.cat_id_to_label:
                continue
            bbox = ann.get("bbox")
            if bbox is None or len(bbox) != 4:
                raise ValueError(f"{self.ann_file.name}: annotation id {ann.get('id')} of image id {image_id} "
                                 f"({file_name}) has bbox {bbox!r}; expected [x, y, width, height]")
            x, y, w, h = (float(v) for v in bbox)
            if ann.get("iscrowd", 0):
                if self.crowd == "drop":
                    continue
                ignore.append((x, y, x + w, y + h))
            else:
                boxes.append((x, y, x + w, y + h))
                labels.append(self.cat_id_to_label[cat_id])
        boxes_np, keep_b, clipped_b = clip_and_filter_boxes(np.array(boxes, np.float32).reshape(-1, 4), height, width)
        ignore_np, keep_i, clipped_i = clip_and_filter_boxes(np.array(ignore, np.float32).reshape(-1, 4), height, width)
        labels_np = np.array(labels, np.int64)[keep_b]
        dropped = int((~keep_b).sum() + (~keep_i).sum())
        record = ImageRecord(image_id, file_name, height, width, boxes_np, labels_np, ignore_np)
        return record, dropped, clipped_b + clipped_i


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


def load_coco_index(ann_file: Path):
    """Read a COCO-format JSON into a ``pycocotools.coco.COCO`` (quietly), checking its top-level keys."""
    from pycocotools.coco import COCO

    try:
        with open(ann_file) as f:
            dataset = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ann_file} is not valid JSON: {exc}") from exc
    if not isinstance(dataset, dict) or "images" not in dataset or "categories" not in dataset:
        raise ValueError(f"{ann_file} is not a COCO-format JSON: it needs 'images', 'annotations' and "
                         "'categories' lists")
    dataset.setdefault("annotations", [])
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def select_categories(coco, ann_file: Path, class_names: Optional[Sequence[str]],
                      cat_ids: Optional[Sequence[int]]) -> Tuple[List[int], List[str]]:
    """The selected category ids (index = label) and their names; see :class:`CocoDetection`."""
    cats = coco.cats
    if cat_ids is not None:
        cat_ids = [int(c) for c in cat_ids]
        missing = [c for c in cat_ids if c not in cats]
        if missing:
            raise ValueError(f"cat_ids {missing} are not categories of {ann_file} "
                             f"(its ids: {describe_ids(sorted(cats), 'ids')})")
        if len(set(cat_ids)) != len(cat_ids):
            raise ValueError(f"cat_ids contains duplicates: {cat_ids}")
    elif class_names is not None:
        by_name = {c["name"]: cid for cid, c in cats.items()}
        cat_ids = []
        for name in class_names:
            if name not in by_name:
                close = difflib.get_close_matches(name, list(by_name), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"class name {name!r} is not a category of {ann_file}{hint}")
            cat_ids.append(by_name[name])
    else:
        cat_ids = sorted(cats)
    names = [cats[c]["name"] for c in cat_ids]
    if class_names is not None and list(class_names) != names:
        raise ValueError(f"class_names {list(class_names)} do not match the names of cat_ids in {ann_file}: {names}")
    if not cat_ids:
        raise ValueError(f"{ann_file} defines no categories")
    return cat_ids, names
