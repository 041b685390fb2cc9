"""Tests for iadet/data/coco.py on the COCO128 sample and small JSON files built from it."""
import json
import warnings

import pytest
import torch

from iadet.data.coco import CocoDetection
from iadet.data.transforms import build_test_transforms
from tests.conftest import COCO128

VAL_JSON = COCO128 / "annotations" / "instances_val2017.json"
VAL_DIR = COCO128 / "val2017"


def require_coco128():
    if not VAL_JSON.is_file() or not VAL_DIR.is_dir():
        pytest.skip(f"COCO128 sample not found at {COCO128}")


def load_val_json():
    require_coco128()
    return json.loads(VAL_JSON.read_text())


def write_json(tmp_path, data, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def small_coco(images, annotations, categories=None):
    """A COCO dict over COCO128 val images (given as their JSON entries) with custom annotations."""
    categories = categories or [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def ann(ann_id, image_id, bbox, category_id=1, iscrowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": bbox[2] * bbox[3], "iscrowd": iscrowd}


def iadet_warnings(record):
    """The UserWarnings raised by iadet (not library deprecation notices)."""
    return [str(w.message) for w in record if issubclass(w.category, UserWarning)
            and not issubclass(w.category, DeprecationWarning) and "torchvision" not in str(w.filename)]


@pytest.fixture(scope="module")
def val_dataset():
    require_coco128()
    return CocoDetection(VAL_JSON, VAL_DIR)


def test_yields_every_image_with_its_boxes_and_sizes(val_dataset):
    data = load_val_json()
    assert len(val_dataset) == len(data["images"]) == 128
    images = {im["id"]: im for im in data["images"]}
    counts = {}
    for a in data["annotations"]:
        if not a["iscrowd"] and a["bbox"][2] > 0 and a["bbox"][3] > 0:
            counts[a["image_id"]] = counts.get(a["image_id"], 0) + 1
    seen = []
    for i in range(len(val_dataset)):
        image, target = val_dataset[i]
        info = images[target["image_id"]]
        assert image.dtype == torch.uint8 and image.shape == (3, info["height"], info["width"])
        assert target["orig_size"] == target["size"] == (info["height"], info["width"])
        assert target["file_name"] == info["file_name"] and target["scale_factor"] == (1.0, 1.0)
        assert target["boxes"].shape == (counts.get(target["image_id"], 0), 4)
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["ignore_boxes"].shape == (0, 4) and target["flipped"] is False
        assert ((target["labels"] >= 0) & (target["labels"] < 80)).all()
        seen.append(target["image_id"])
    assert seen == sorted(images)


def test_spot_check_annotations_against_json(val_dataset):
    data = load_val_json()
    index = {val_dataset.get_image_info(i)["id"]: i for i in range(len(val_dataset))}
    for a in data["annotations"][::97]:  # ten annotations spread over the file
        _, target = val_dataset[index[a["image_id"]]]
        x, y, w, h = a["bbox"]
        expected = torch.tensor([x, y, x + w, y + h], dtype=torch.float32)
        match = (target["boxes"] - expected).abs().max(dim=1).values < 1e-3
        assert match.sum() >= 1, f"annotation {a['id']} not found in image {a['image_id']}"
        labels = target["labels"][match].tolist()
        assert val_dataset.cat_id_to_label[a["category_id"]] in labels
        assert a["category_id"] in [val_dataset.label_to_cat_id[lab] for lab in labels]


def test_label_cat_id_mapping(val_dataset):
    data = load_val_json()
    cat_ids = sorted(c["id"] for c in data["categories"])
    assert val_dataset.label_to_cat_id == cat_ids and val_dataset.num_classes == 80
    assert cat_ids[0] == 1 and cat_ids[-1] == 90
    for label in range(80):
        assert val_dataset.cat_id_to_label[val_dataset.label_to_cat_id[label]] == label
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert val_dataset.class_names == [names[c] for c in cat_ids]
    assert val_dataset.class_names[0] == "person"


def test_image_info_and_aspect_ratios(val_dataset):
    info = val_dataset.get_image_info(0)
    assert info == {"id": 139, "file_name": "000000000139.jpg", "width": 640, "height": 426}
    ratios = val_dataset.aspect_ratios()
    assert ratios.shape == (128,) and ratios[0] == pytest.approx(640 / 426)
    assert (ratios < 1).any() and (ratios >= 1).any()


def test_with_transforms_gives_float_resized_image(tmp_path):
    data = load_val_json()
    ds = CocoDetection(VAL_JSON, VAL_DIR, transforms=build_test_transforms(min_size=200, max_size=333))
    image, target = ds[0]
    raw = CocoDetection(VAL_JSON, VAL_DIR)[0][1]
    assert image.dtype == torch.float32 and tuple(image.shape[-2:]) == target["size"] == (200, 300)
    sy, sx = target["scale_factor"]
    assert (sy, sx) == pytest.approx((200 / 426, 300 / 640))
    assert torch.allclose(target["boxes"], raw["boxes"] * torch.tensor([sx, sy, sx, sy]))
    assert target["orig_size"] == (426, 640) and data["images"][0]["id"] == target["image_id"]


def test_empty_images_kept_by_default_and_filtered_on_request(tmp_path):
    data = load_val_json()
    emptied = {im["id"] for im in data["images"][:3]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] not in emptied]
    path = write_json(tmp_path, data)
    kept = CocoDetection(path, VAL_DIR)
    assert len(kept) == 128
    index = {kept.get_image_info(i)["id"]: i for i in range(len(kept))}
    for image_id in emptied:
        _, target = kept[index[image_id]]
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    filtered = CocoDetection(path, VAL_DIR, filter_empty=True)
    assert len(filtered) == 125
    assert not emptied & {filtered.get_image_info(i)["id"] for i in range(len(filtered))}


def test_degenerate_boxes_dropped_and_clipped_with_one_warning_each(tmp_path):
    data = load_val_json()
    im0, im1 = data["images"][0], data["images"][1]  # 640 x 426 and 640 x 480 (w x h)
    w0 = im0["width"]
    annotations = [
        ann(1, im0["id"], [10, 10, 20, 30]),            # fine
        ann(2, im0["id"], [50, 50, 0, 10]),             # zero width -> dropped
        ann(3, im0["id"], [60, 60, 10, -5]),            # negative height -> dropped
        ann(4, im0["id"], [w0 - 10, 5, 30, 20]),        # partly outside -> clipped
        ann(5, im1["id"], [-5, -5, 20, 20], 3),         # partly outside -> clipped
        ann(6, im1["id"], [im1["width"] + 5, 5, 10, 10]),  # entirely outside -> dropped
    ]
    path = write_json(tmp_path, small_coco([im0, im1], annotations))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = CocoDetection(path, VAL_DIR)
    messages = iadet_warnings(record)
    assert ds.num_dropped_boxes == 3 and ds.num_clipped_boxes == 2
    dropped = [m for m in messages if "dropped" in m]
    clipped = [m for m in messages if "clipped" in m]
    assert len(dropped) == 1 and len(clipped) == 1 and len(messages) == 2
    assert str(im0["id"]) in dropped[0] and str(im1["id"]) in dropped[0] and "3 box" in dropped[0]
    assert str(im0["id"]) in clipped[0] and "2 box" in clipped[0]
    t0, t1 = ds[0][1], ds[1][1]
    assert torch.allclose(t0["boxes"], torch.tensor([[10.0, 10, 30, 40], [w0 - 10, 5, w0, 25]]))
    assert torch.allclose(t1["boxes"], torch.tensor([[0.0, 0, 15, 15]])) and t1["labels"].tolist() == [1]


def test_crowd_dropped_or_kept_as_ignore(tmp_path):
    data = load_val_json()
    im0 = data["images"][0]
    annotations = [ann(1, im0["id"], [10, 10, 20, 30]), ann(2, im0["id"], [100, 100, 50, 40], iscrowd=1)]
    path = write_json(tmp_path, small_coco([im0], annotations))
    _, dropped = CocoDetection(path, VAL_DIR)[0]
    assert dropped["boxes"].shape == (1, 4) and dropped["ignore_boxes"].shape == (0, 4)
    _, ignored = CocoDetection(path, VAL_DIR, crowd="ignore")[0]
    assert torch.allclose(ignored["boxes"], torch.tensor([[10.0, 10, 30, 40]]))
    assert torch.allclose(ignored["ignore_boxes"], torch.tensor([[100.0, 100, 150, 140]]))
    with pytest.raises(ValueError, match="crowd"):
        CocoDetection(path, VAL_DIR, crowd="keep")


def test_select_classes_by_cat_ids_or_names(tmp_path):
    data = load_val_json()
    im0 = data["images"][0]
    annotations = [ann(1, im0["id"], [10, 10, 20, 30], 1), ann(2, im0["id"], [40, 40, 5, 5], 3),
                   ann(3, im0["id"], [60, 60, 5, 5], 18)]
    path = write_json(tmp_path, small_coco([im0], annotations))
    ds = CocoDetection(path, VAL_DIR, cat_ids=[3, 1])
    assert ds.class_names == ["car", "person"] and ds.label_to_cat_id == [3, 1]
    _, target = ds[0]
    assert target["labels"].tolist() == [1, 0]  # the dog (18) is not selected
    by_name = CocoDetection(path, VAL_DIR, class_names=["dog", "car"])
    assert by_name.label_to_cat_id == [18, 3]
    with pytest.raises(ValueError, match="'cat'.*did you mean car"):
        CocoDetection(path, VAL_DIR, class_names=["cat"])
    with pytest.raises(ValueError, match=r"cat_ids \[2\]"):
        CocoDetection(path, VAL_DIR, cat_ids=[2])
