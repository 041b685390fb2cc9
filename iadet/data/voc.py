"""PASCAL VOC (``VOCdevkit/VOC2007``, ``VOC2012``) as a detection dataset, VOC07+12 style.

Coordinate convention. VOC's XML gives 1-based, inclusive pixel indices: ``xmin=1,
xmax=W`` is a box over the whole image. iadet's boxes are continuous coordinates in which
pixel ``i`` (0-based) spans ``[i, i + 1]`` and a box's width is ``x2 - x1`` (SPEC §4), so the
box becomes ``(xmin - 1, ymin - 1, xmax, ymax)``: the whole image is ``(0, 0, W, H)`` and the
width ``xmax - xmin + 1`` of the old "+1" convention is kept. This is Detectron2's
conversion (MMDetection 3 subtracts 1 from all four coordinates, which shrinks every box by
a pixel). Fractional coordinates (some VOC-format sets have them) are read as floats.

Difficult objects: in training (``keep_difficult=False``) they are not learnt from. With
``train_difficult="ignore"`` (default) they are returned as ``target["ignore_boxes"]``, so
anchors on them are neither positives nor negatives; with ``"negative"`` they are left out
of the target altogether, so anchors on them are negatives (the authors' recipe: their
MMDetection v1 fork puts difficult objects in ``bboxes_ignore`` but trains with
``with_crowd=False``, so no ignore box reaches the assigner). With ``keep_difficult=True``
(evaluation) they stay in ``boxes``/``labels`` with ``target["difficult"]`` (K,) bool
marking them. ``filter_empty=True`` leaves out images left without a box (in training:
those whose objects are all difficult; the authors skip them).
:meth:`VOCDetection.to_coco_dict` turns the ground truth into COCO format with difficult
objects as ``iscrowd=1``, so COCO-style AP (SPEC §2, Table 5) ignores them.

The target format is that of :mod:`iadet.data.dataset`; ``image_id`` is the image's index in
the (concatenated) dataset and ``file_name`` is relative to the VOCdevkit folder
(``VOC2007/JPEGImages/000005.jpg``).
"""
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from iadet.data.dataset import DetectionDataset, ImageRecord, clip_and_filter_boxes, describe_ids, \
    image_size_from_header

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
VOC_DOWNLOAD_HINT = ("Download VOC2007 (trainval + test) and VOC2012 (trainval) from "
                     "http://host.robots.ox.ac.uk/pascal/VOC/ and extract them so that the folder holds "
                     "VOC2007/ and VOC2012/")


class VOCDetection(DetectionDataset):
    """One or more VOC image sets concatenated (VOC07+12 = 2007 trainval + 2012 trainval).

    Args:
        root: the ``VOCdevkit`` folder, holding ``VOC2007/``, ``VOC2012/`` with
            ``ImageSets/Main/<split>.txt``, ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg``.
        sources: ``(year, split)`` pairs, concatenated in this order; the 2007 test set is
            ``[("2007", "test")]``.
        transforms: ``(image, target) -> (image, target)`` or None (uint8 images).
        keep_difficult: False (training): difficult objects are not learnt from (see
            ``train_difficult``). True (evaluation): they stay in ``boxes`` and
            ``target["difficult"]`` flags them.
        train_difficult: with ``keep_difficult=False``: ``"ignore"`` (default) returns
            difficult objects as ``ignore_boxes``; ``"negative"`` drops them, so anchors on
            them are negatives (the authors').
        filter_empty: leave out images without any box in ``boxes`` (counted in
            ``num_empty_left_out``); default keeps them as all-negative images.
        skip_bad_images: leave out images whose XML or JPEG is missing or broken, or which
            name a class outside the 20, with one warning (counted in ``num_skipped``),
            instead of raising; images that fail to decode later are replaced as described
            in :mod:`iadet.data.coco`.

    Attributes: ``class_names`` (the 20 VOC classes, index = label), ``label_to_cat_id``
    (label + 1, the ids of :meth:`to_coco_dict`), ``cat_id_to_label``, ``voc_ids`` (the
    ``(year, id)`` of every image), ``num_dropped_boxes``, ``num_clipped_boxes``,
    ``num_empty_left_out``.
    """

    def __init__(self, root: Union[str, Path], sources: Sequence[Tuple[str, str]] = (("2007", "trainval"),
                                                                                   ("2012", "trainval")),
                 transforms: Optional[Callable] = None, keep_difficult: bool = False, skip_bad_images: bool = False,
                 train_difficult: str = "ignore", filter_empty: bool = False):
        if train_difficult not in ("ignore", "negative"):
            raise ValueError(f"train_difficult must be 'ignore' or 'negative', got {train_difficult!r}")
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"VOCdevkit folder not found: {root}. {VOC_DOWNLOAD_HINT}.")
        self.root = root
        self.sources = [(str(year), str(split)) for year, split in sources]
        self.keep_difficult = keep_difficult
        self.train_difficult = train_difficult
        self.filter_empty = filter_empty
        self.num_empty_left_out = 0
        self.skip_bad_images = skip_bad_images
        self.label_to_cat_id = list(range(1, len(VOC_CLASSES) + 1))
        self.cat_id_to_label = {c: i for i, c in enumerate(self.label_to_cat_id)}
        self.num_dropped_boxes = 0
        self.num_clipped_boxes = 0
        self.voc_ids: List[Tuple[str, str]] = []
        # every object of every image, difficult or not, for to_coco_dict: (boxes, labels, difficult)
        self._objects: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        records, num_skipped = self._parse()
        super().__init__(records, root, VOC_CLASSES, transforms, skip_bad_images, num_skipped)

    def __repr__(self) -> str:
        return (f"VOCDetection(root={str(self.root)!r}, sources={self.sources}, images={len(self)}, "
                f"keep_difficult={self.keep_difficult}, train_difficult={self.train_difficult!r}, "
                f"filter_empty={self.filter_empty})")

    def _image_ids(self, year: str, split: str) -> List[str]:
        list_file = self.root / f"VOC{year}" / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"VOC image set file not found: {list_file} (source ({year!r}, {split!r})). "
                                    f"{VOC_DOWNLOAD_HINT}.")
        return [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]

    def _parse(self) -> Tuple[List[ImageRecord], int]:
        records, skipped, dropped_ids, clipped_ids = [], [], [], []
        for year, split in self.sources:
            for voc_id in self._image_ids(year, split):
                file_name = f"VOC{year}/JPEGImages/{voc_id}.jpg"
                image_id = len(records)
                try:
                    boxes, labels, difficult, height, width = self._read_annotation(year, voc_id, file_name)
                except (OSError, ValueError) as exc:
                    if not self.skip_bad_images:
                        raise type(exc)(f"{exc} (VOC image {year}/{voc_id}). Fix or remove it, or pass "
                                        "skip_bad_images=True to leave it out.") from exc
                    skipped.append((f"{year}/{voc_id}", str(exc)))
                    continue
                boxes, keep, clipped = clip_and_filter_boxes(boxes, height, width)
                labels, difficult = labels[keep], difficult[keep]
                if not keep.all():
                    self.num_dropped_boxes += int((~keep).sum())
                    dropped_ids.append(image_id)
                if clipped:
                    self.num_clipped_boxes += clipped
                    clipped_ids.append(image_id)
                if self.keep_difficult:
                    record = ImageRecord(image_id, file_name, height, width, boxes, labels, np.zeros((0, 4)),
                                         extra={"difficult": difficult})
                else:
                    ignore = boxes[difficult] if self.train_difficult == "ignore" else np.zeros((0, 4))
                    record = ImageRecord(image_id, file_name, height, width, boxes[~difficult], labels[~difficult],
                                         ignore)
                if self.filter_empty and len(record.boxes) == 0:
                    self.num_empty_left_out += 1
                    continue
                self._objects.append((boxes, labels, difficult))
                self.voc_ids.append((year, voc_id))
                records.append(record)
        if skipped:
            warnings.warn(f"VOCDetection: skipped {len(skipped)} bad image(s) "
                          f"({describe_ids([s[0] for s in skipped], 'VOC ids')}); first problem: {skipped[0][1]}",
                          stacklevel=3)
        self.warn_box_fixes("VOCDetection", dropped_ids, clipped_ids)
        return records, len(skipped)

    def _read_annotation(self, year: str, voc_id: str, file_name: str):
        """Parse ``Annotations/<id>.xml`` -> boxes (K, 4) xyxy, labels (K,), difficult (K,) bool, H, W."""
        xml_path = self.root / f"VOC{year}" / "Annotations" / f"{voc_id}.xml"
        image_path = self.root / file_name
        if not xml_path.is_file():
            raise FileNotFoundError(f"annotation file not found: {xml_path}")
        if not image_path.is_file():
            raise FileNotFoundError(f"image file not found: {image_path}")
        try:
            tree = ET.parse(xml_path).getroot()
        except ET.ParseError as exc:
            raise ValueError(f"{xml_path}: malformed XML ({exc})") from exc
        size = tree.find("size")
        width = int(float(size.findtext("width", "0"))) if size is not None else 0
        height = int(float(size.findtext("height", "0"))) if size is not None else 0
        if width <= 0 or height <= 0:
            height, width = image_size_from_header(image_path)
        boxes, labels, difficult = [], [], []
        for obj in tree.iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in VOC_CLASSES:
                raise ValueError(f"{xml_path}: unknown class {name!r}; VOC classes are {', '.join(VOC_CLASSES)}")
            bndbox = obj.find("bndbox")
            try:
                xmin, ymin, xmax, ymax = (float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError) as exc:
                raise ValueError(f"{xml_path}: object {name!r} has no valid <bndbox> "
                                 "(<xmin>, <ymin>, <xmax>, <ymax> numbers)") from exc
            boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))  # 1-based inclusive -> continuous (module doc)
            labels.append(VOC_CLASSES.index(name))
            difficult.append(int(float(obj.findtext("difficult") or 0)) == 1)
        return (np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64),
                np.array(difficult, bool), height, width)

    def to_coco_dict(self) -> Dict[str, list]:
        """The ground truth as a COCO-format dict (``pycocotools.coco.COCO`` can index it).

        ``images`` ids are this dataset's image ids; category id = label + 1; boxes
        ``[x, y, w, h]`` in the continuous convention above; ``area`` = w * h; difficult
        objects (whatever ``keep_difficult``) have ``iscrowd=1`` so COCOeval ignores them.
        """
        images, annotations = [], []
        for record, (boxes, labels, difficult) in zip(self.records, self._objects):
            images.append({"id": record.image_id, "file_name": record.file_name,
                           "width": record.width, "height": record.height})
            for box, label, diff in zip(boxes.tolist(), labels.tolist(), difficult.tolist()):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append({"id": len(annotations) + 1, "image_id": record.image_id,
                                    "category_id": self.label_to_cat_id[label], "bbox": [box[0], box[1], w, h],
                                    "area": w * h, "iscrowd": int(diff)})
        categories = [{"id": self.label_to_cat_id[i], "name": name, "supercategory": "none"}
                      for i, name in enumerate(self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}
