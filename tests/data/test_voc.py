"""Tests for iadet/data/voc.py on a VOC-format tree written from COCO128 boxes."""
import contextlib
import io
import json
import shutil
import warnings

import pytest
import torch

from iadet.data.coco import CocoDetection
from iadet.data.voc import VOC_CLASSES, VOCDetection
from tests.data.test_coco import VAL_DIR, iadet_warnings, load_val_json

COCO_TO_VOC = {1: "person", 3: "car", 18: "dog"}
# one extra object in the first image: float coordinates and no <difficult> tag; and a difficult dog
EXTRA_OBJECTS = [("car", "<xmin>12.5</xmin><ymin>20</ymin><xmax>40</xmax><ymax>60.5</ymax>", None),
                 ("dog", "<xmin>101</xmin><ymin>101</ymin><xmax>150</xmax><ymax>180</ymax>", 1)]


def object_xml(name, bndbox, difficult):
    tag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    return f"<object><name>{name}</name><pose>Unspecified</pose>{tag}<bndbox>{bndbox}</bndbox></object>"


def write_voc_tree(root):
    """VOC2007 (trainval 3 images, test 1) and VOC2012 (trainval 2) from COCO128 val images.

    Returns {(year, voc_id): (height, width, [(name, (x1, y1, x2, y2) expected, difficult)])}.
    """
    data = load_val_json()
    objects = {}
    for a in data["annotations"]:
        if a["category_id"] in COCO_TO_VOC and not a["iscrowd"]:
            objects.setdefault(a["image_id"], []).append(a)
    images = [im for im in data["images"] if im["id"] in objects][:6]
    layout = [("2007", "trainval", "000001"), ("2007", "trainval", "000002"), ("2007", "trainval", "000003"),
              ("2007", "test", "000004"), ("2012", "trainval", "2008_000001"), ("2012", "trainval", "2008_000002")]
    expected = {}
    for n, ((year, split, voc_id), im) in enumerate(zip(layout, images)):
        base = root / f"VOC{year}"
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(VAL_DIR / im["file_name"], base / "JPEGImages" / f"{voc_id}.jpg")
        with open(base / "ImageSets" / "Main" / f"{split}.txt", "a") as f:
            f.write(f"{voc_id}\n")
        objs, parts = [], []
        for a in objects[im["id"]]:
            x, y, w, h = a["bbox"]
            xmin, ymin, xmax, ymax = (f"{v:.2f}" for v in (x + 1, y + 1, x + w, y + h))  # 1-based inclusive
            parts.append(object_xml(COCO_TO_VOC[a["category_id"]],
                                    f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>",
                                    0))
            objs.append((COCO_TO_VOC[a["category_id"]],
                         (float(xmin) - 1, float(ymin) - 1, float(xmax), float(ymax)), False))
        if n == 0:
            parts += [object_xml(*o) for o in EXTRA_OBJECTS]
            objs += [("car", (11.5, 19.0, 40.0, 60.5), False), ("dog", (100.0, 100.0, 150.0, 180.0), True)]
        # the last image has no <size>: it is read from the JPEG header
        size = f"<size><width>{im['width']}</width><height>{im['height']}</height><depth>3</depth></size>"
        if n == 5:
            size = ""
        xml = f"<annotation><filename>{voc_id}.jpg</filename>{size}{''.join(parts)}</annotation>"
        (base / "Annotations" / f"{voc_id}.xml").write_text(xml)
        expected[(year, voc_id)] = (im["height"], im["width"], objs)
    return expected


@pytest.fixture()
def voc_tree(tmp_path):
    root = tmp_path / "VOCdevkit"
    return root, write_voc_tree(root)


def check_target(target, objs, keep_difficult):
    kept = [o for o in objs if keep_difficult or not o[2]]
    assert target["boxes"].shape == (len(kept), 4)
    assert torch.allclose(target["boxes"], torch.tensor([o[1] for o in kept]).reshape(-1, 4), atol=1e-4)
    assert target["labels"].tolist() == [VOC_CLASSES.index(o[0]) for o in kept]
    ignored = [o[1] for o in objs if o[2] and not keep_difficult]
    assert torch.allclose(target["ignore_boxes"], torch.tensor(ignored).reshape(-1, 4))
    if keep_difficult:
        assert target["difficult"].tolist() == [o[2] for o in objs]
    else:
        assert "difficult" not in target


@pytest.mark.parametrize("keep_difficult", [False, True])
def test_voc07_plus_12_concatenated_with_converted_boxes(voc_tree, keep_difficult):
    root, expected = voc_tree
    ds = VOCDetection(root, keep_difficult=keep_difficult)  # default sources: 2007 + 2012 trainval
    assert len(ds) == 5 and ds.class_names == list(VOC_CLASSES) and ds.num_classes == 20
    assert ds.voc_ids == [("2007", "000001"), ("2007", "000002"), ("2007", "000003"),
                          ("2012", "2008_000001"), ("2012", "2008_000002")]
    for i, key in enumerate(ds.voc_ids):
        height, width, objs = expected[key]
        image, target = ds[i]
        assert image.shape == (3, height, width) and target["image_id"] == i
        assert target["file_name"] == f"VOC{key[0]}/JPEGImages/{key[1]}.jpg"
        assert ds.get_image_info(i) == {"id": i, "file_name": target["file_name"], "width": width, "height": height}
        check_target(target, objs, keep_difficult)
    assert ds.aspect_ratios().shape == (5,)


def test_float_coordinates_and_missing_difficult_tag(voc_tree):
    root, _ = voc_tree
    _, target = VOCDetection(root, sources=[("2007", "trainval")], keep_difficult=True)[0]
    car = VOC_CLASSES.index("car")
    row = (target["boxes"] - torch.tensor([11.5, 19.0, 40.0, 60.5])).abs().max(dim=1).values < 1e-6
    assert row.sum() == 1 and target["labels"][row].item() == car  # 12.5 (1-based) -> 11.5
    assert not target["difficult"][row].item()  # no <difficult> tag: not difficult
    dog = (target["boxes"] - torch.tensor([100.0, 100, 150, 180])).abs().max(dim=1).values < 1e-6
    assert target["difficult"][dog].item()


def test_single_source_test_split(voc_tree):
    root, expected = voc_tree
    ds = VOCDetection(root, sources=[("2007", "test")], keep_difficult=True)
    assert len(ds) == 1 and ds.voc_ids == [("2007", "000004")]
    check_target(ds[0][1], expected[("2007", "000004")][2], keep_difficult=True)


def test_to_coco_dict_marks_difficult_as_crowd_and_round_trips(voc_tree, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    root, expected = voc_tree
    ds = VOCDetection(root)
    coco_dict = ds.to_coco_dict()
    assert [c["id"] for c in coco_dict["categories"]] == list(range(1, 21)) == ds.label_to_cat_id
    assert [c["name"] for c in coco_dict["categories"]] == list(VOC_CLASSES)
    crowd = [a for a in coco_dict["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["bbox"] == pytest.approx([100.0, 100.0, 50.0, 80.0])
    assert crowd[0]["area"] == pytest.approx(4000.0)

    path = tmp_path / "voc_gt.json"
    path.write_text(json.dumps(coco_dict))
    as_coco = CocoDetection(path, root, crowd="ignore", class_names=VOC_CLASSES)
    for i in range(len(ds)):
        _, a = ds[i]
        _, b = as_coco[i]
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-4) and torch.equal(a["labels"], b["labels"])
        assert torch.allclose(a["ignore_boxes"], b["ignore_boxes"], atol=1e-4)

    # COCO-style AP: the non-difficult ground truth as detections gives AP 1, and a detection
    # on the difficult object is neither a true nor a false positive
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in coco_dict["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = coco_dict
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(dets), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_unknown_class_or_missing_files_named_or_skipped(voc_tree):
    root, _ = voc_tree
    xml = root / "VOC2007" / "Annotations" / "000002.xml"
    xml.write_text(xml.read_text().replace("<name>person</name>", "<name>persn</name>", 1)
                   .replace("<name>car</name>", "<name>persn</name>", 1))
    (root / "VOC2007" / "Annotations" / "000003.xml").unlink()
    with pytest.raises(ValueError, match=r"000002\.xml: unknown class 'persn'.*2007/000002"):
        VOCDetection(root)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = VOCDetection(root, skip_bad_images=True)
    messages = iadet_warnings(record)
    assert len(ds) == 3 and ds.num_skipped == 2
    assert len(messages) == 1 and "2007/000002" in messages[0] and "2007/000003" in messages[0]
    (root / "VOC2007" / "JPEGImages" / "000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"000001\.jpg.*2007/000001"):
        VOCDetection(root, sources=[("2007", "trainval")])


def test_broken_xml_named(voc_tree):
    root, _ = voc_tree
    (root / "VOC2012" / "Annotations" / "2008_000001.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match=r"2008_000001\.xml: malformed XML.*2012/2008_000001"):
        VOCDetection(root, sources=[("2012", "trainval")])
    with pytest.warns(UserWarning, match=r"skipped 1 bad image.*2012/2008_000001.*malformed XML"):
        ds = VOCDetection(root, sources=[("2012", "trainval")], skip_bad_images=True)
    assert len(ds) == 1 and ds.num_skipped == 1
