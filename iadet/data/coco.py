"""COCO-format detection datasets: :class:`CocoDetection` parses a COCO-format JSON (COCO
itself, COCO128, the synthetic shapes set, any COCO-style set) into the records of
:class:`iadet.data.dataset.DetectionDataset`.

``dataset[i]`` returns ``(image, target)`` in the format described in :mod:`iadet.data.dataset`
(boxes ``xyxy`` in pixels, contiguous labels; ``label_to_cat_id`` maps a label back to its
COCO category id). Crowd boxes are dropped or, with ``crowd="ignore"``, returned as
``target["ignore_boxes"]``. Bad input raises an error naming the file and the image id, or
with ``skip_bad_images=True`` is left out with a warning, as described there.
"""
import contextlib
import difflib
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

# The base and the helpers shared with voc.py live in dataset.py; imported here too, so
# `from iadet.data.coco import DetectionDataset, clip_and_filter_boxes` keeps working.
from iadet.data.dataset import (DetectionDataset, ImageRecord, clip_and_filter_boxes,  # noqa: F401
                                describe_ids, image_size_from_header)

COCO_DOWNLOAD_HINT = "Download COCO from https://cocodataset.org/#download (images and annotations_trainval2017.zip)"


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
                self._bad(f"cannot read the size of {path} (image id {image_id}, listed in {where}): {exc}",
                          skipped_messages)
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
        self.warn_box_fixes(where, dropped_ids, clipped_ids)
        return records, len(skipped_messages)

    @staticmethod
    def _image_size(info: dict, path: Path) -> Tuple[int, int]:
        """(height, width) from the JSON, or from the file header when the JSON lacks them."""
        if "height" in info and "width" in info:
            height, width = info["height"], info["width"]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       for v in (height, width)):
                raise ValueError(f"its width {width!r:.40} and height {height!r:.40} must be numbers")
            height, width = int(height), int(width)
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
            if not (isinstance(bbox, list) and len(bbox) == 4
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
                raise ValueError(f"{self.ann_file.name}: annotation id {ann.get('id')} of image id {image_id} "
                                 f"({file_name}) has bbox {bbox!r:.60}; expected 4 numbers [x, y, width, height]")
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


def load_coco_index(ann_file: Path):
    """Read a COCO-format JSON into a ``pycocotools.coco.COCO`` (quietly), checking its structure
    (:func:`check_coco_structure`) first."""
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
    check_coco_structure(dataset, ann_file)
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


# The keys pycocotools' index (and this module) need in each entry of the three lists.
_REQUIRED_KEYS = {"images": ("id",), "annotations": ("id", "image_id", "category_id"),
                  "categories": ("id", "name")}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_coco_structure(dataset: dict, ann_file: Path) -> None:
    """Raise ValueError naming ``ann_file`` and the entry (list index, id) unless ``images``,
    ``annotations`` and ``categories`` are lists of objects with the keys the index needs,
    image and category ids are unique integers and ids that refer to them are integers.

    Per-image problems (a missing ``file_name``, an unknown ``category_id``, a bad ``bbox``)
    are left to :class:`CocoDetection`, which can skip such images."""
    where = ann_file
    for section, keys in _REQUIRED_KEYS.items():
        entries = dataset[section]
        if not isinstance(entries, list):
            raise ValueError(f"{where}: '{section}' must be a list of objects, got {_json_type(entries)}. "
                             "Fix the annotation file.")
        seen = set()
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: {section}[{index}] must be an object, got {_json_type(entry)}. "
                                 "Fix the annotation file.")
            what = f"{section}[{index}]" + (f" (id {entry['id']!r})" if "id" in entry else "")
            missing = [k for k in keys if k not in entry]
            if missing:
                raise ValueError(f"{where}: {what} has no {' or '.join(repr(k) for k in missing)}; each entry of "
                                 f"'{section}' needs {', '.join(repr(k) for k in keys)}. Fix the annotation file.")
            bad = [k for k in keys if k.endswith("id") and not _is_int(entry[k])]
            if bad:
                raise ValueError(f"{where}: {section}[{index}] has {bad[0]} {entry[bad[0]]!r:.40}; COCO ids are "
                                 "integers. Fix the annotation file.")
            if section != "annotations":  # repeated annotation ids are left alone: training never uses them
                if entry["id"] in seen:
                    raise ValueError(f"{where}: {what}: the id {entry['id']} is used twice in '{section}'; "
                                     "ids must be unique. Fix the annotation file.")
                seen.add(entry["id"])


def _json_type(value) -> str:
    """The JSON name of a parsed value's type, with the value when it is short."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    name = names.get(type(value), "a number")
    return name if isinstance(value, (dict, list)) or value is None else f"{name} ({value!r:.40})"


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
