"""Tiny datasets laid out exactly like COCO 2017 and PASCAL VOC, drawn by the synthetic
generator, so that the reproduction recipes (``make reproduce-coco DRY_RUN=1``,
``make reproduce-voc DRY_RUN=1``) run end to end on any laptop and in CI.

COCO layout::

    ROOT/annotations/instances_train2017.json   ROOT/train2017/*.png
    ROOT/annotations/instances_val2017.json     ROOT/val2017/*.png
    ROOT/annotations/image_info_test-dev2017.json (images only)   ROOT/test2017/*.png

VOC layout (the devkit's: 1-based inclusive integer pixel coordinates in the XML)::

    ROOT/VOC2007/{Annotations,JPEGImages,ImageSets/Main/{trainval,test}.txt}
    ROOT/VOC2012/{Annotations,JPEGImages,ImageSets/Main/trainval.txt}

The synthetic shape classes are renamed to the first VOC class names for the VOC layout.
"""
import json
import math
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from iadet.data.synthetic import generate_synthetic_coco
from iadet.data.voc import VOC_CLASSES

DRY_IMAGE_SIZE = (128, 128)


def _generate(tmp: Path, num_train: int, num_val: int, seed: int):
    return generate_synthetic_coco(tmp / "synthetic", num_train=num_train, num_val=num_val,
                                   image_size=DRY_IMAGE_SIZE, seed=seed, max_objects=4,
                                   min_object_size=12.0, progress=False)


def write_coco_layout(root, num_train: int = 8, num_val: int = 4, seed: int = 0) -> Path:
    """A tiny COCO 2017 tree at ``root`` (train2017, val2017 and a test-dev made of the val
    images without annotations). Returns ``root``."""
    root = Path(root)
    with tempfile.TemporaryDirectory() as tmp:
        paths = _generate(Path(tmp), num_train, num_val, seed)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        for split, name in (("train", "train2017"), ("val", "val2017")):
            shutil.copytree(paths[split]["img_dir"], root / name, dirs_exist_ok=True)
            shutil.copy(paths[split]["ann_file"], root / "annotations" / f"instances_{name}.json")
        shutil.copytree(paths["val"]["img_dir"], root / "test2017", dirs_exist_ok=True)
        val = json.loads(Path(paths["val"]["ann_file"]).read_text())
        test_dev = {"info": val["info"], "images": val["images"], "categories": val["categories"]}
        (root / "annotations" / "image_info_test-dev2017.json").write_text(json.dumps(test_dev))
    return root


def _voc_xml(file_name: str, width: int, height: int, objects) -> str:
    parts = []
    for name, (x, y, w, h) in objects:
        # continuous [x, x + w) -> the devkit's 1-based inclusive pixels
        xmin, ymin = max(1, math.floor(x) + 1), max(1, math.floor(y) + 1)
        xmax, ymax = min(width, max(xmin, math.ceil(x + w))), min(height, max(ymin, math.ceil(y + h)))
        parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>0</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
                     f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    return (f"<annotation><folder>VOC</folder><filename>{file_name}</filename><size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size>{''.join(parts)}</annotation>")


def write_voc_layout(root, num_train: int = 8, num_val: int = 4, seed: int = 0) -> Path:
    """A tiny VOCdevkit at ``root``: 2007 trainval + 2012 trainval (the synthetic train
    images, split between them) and 2007 test (the synthetic val images). Returns ``root``."""
    root = Path(root)
    with tempfile.TemporaryDirectory() as tmp:
        paths = _generate(Path(tmp), num_train, num_val, seed)
        for split in ("train", "val"):
            data = json.loads(Path(paths[split]["ann_file"]).read_text())
            names = {c["id"]: VOC_CLASSES[i] for i, c in enumerate(data["categories"])}
            objects = {}
            for a in data["annotations"]:
                objects.setdefault(a["image_id"], []).append((names[a["category_id"]], a["bbox"]))
            for k, image in enumerate(data["images"]):
                if split == "val":
                    year, image_set, voc_id = "2007", "test", f"{900000 + k:06d}"
                elif k % 2 == 0:
                    year, image_set, voc_id = "2007", "trainval", f"{k:06d}"
                else:
                    year, image_set, voc_id = "2012", "trainval", f"2012_{k:06d}"
                base = root / f"VOC{year}"
                for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
                    (base / sub).mkdir(parents=True, exist_ok=True)
                with Image.open(Path(paths[split]["img_dir"]) / image["file_name"]) as im:
                    im.convert("RGB").save(base / "JPEGImages" / f"{voc_id}.jpg", quality=95)
                xml = _voc_xml(f"{voc_id}.jpg", image["width"], image["height"], objects.get(image["id"], []))
                (base / "Annotations" / f"{voc_id}.xml").write_text(xml)
                with open(base / "ImageSets" / "Main" / f"{image_set}.txt", "a") as f:
                    f.write(voc_id + "\n")
    return root
