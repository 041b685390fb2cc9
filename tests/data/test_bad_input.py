"""Bad input: every broken file or annotation is named in the error, or skipped and counted."""
import shutil
import warnings

import pytest

from iadet.data.coco import CocoDetection
from iadet.data.voc import VOCDetection
from tests.data.test_coco import VAL_DIR, VAL_JSON, ann, iadet_warnings, load_val_json, small_coco, write_json


def build_case(tmp_path, extra_images=(), extra_annotations=(), n=4):
    """A JSON over n COCO128 val images copied into tmp_path/images, plus extra entries.

    The first n images are chosen to be landscape (width >= height), so a replacement
    image of the same orientation group always exists.
    """
    data = load_val_json()
    images = [im for im in data["images"] if im["width"] >= im["height"]][:n]
    image_dir = tmp_path / "images"
    image_dir.mkdir(exist_ok=True)
    for im in images:
        shutil.copy(VAL_DIR / im["file_name"], image_dir / im["file_name"])
    annotations = [ann(k + 1, im["id"], [10, 10, 50, 40]) for k, im in enumerate(images)]
    coco = small_coco(images + list(extra_images), annotations + list(extra_annotations))
    return write_json(tmp_path, coco), image_dir, images


def record_warnings(fn):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = fn()
    return result, iadet_warnings(record)


def test_missing_image_file_named_or_skipped(tmp_path):
    missing = {"id": 999, "file_name": "missing_999.jpg", "width": 640, "height": 480}
    path, image_dir, images = build_case(tmp_path, extra_images=[missing])
    with pytest.raises(ValueError, match=r"missing_999\.jpg.*image id 999"):
        CocoDetection(path, image_dir)
    ds, messages = record_warnings(lambda: CocoDetection(path, image_dir, skip_bad_images=True))
    assert len(ds) == len(images) and ds.num_skipped == 1
    assert len(messages) == 1 and "999" in messages[0] and "missing_999.jpg" in messages[0]


@pytest.mark.parametrize("kind", ["truncated", "undecodable"])
def test_bad_image_bytes_named_or_replaced(tmp_path, kind):
    path, image_dir, images = build_case(tmp_path)
    victim = images[1]
    file = image_dir / victim["file_name"]
    if kind == "truncated":
        data = file.read_bytes()
        file.write_bytes(data[:len(data) // 2])
    else:
        file.write_bytes(b"this is not an image\n" * 10)
    ds = CocoDetection(path, image_dir)  # only decoding finds it
    with pytest.raises(ValueError) as err:
        ds[1]
    assert victim["file_name"] in str(err.value) and f"image id {victim['id']}" in str(err.value)

    skipping = CocoDetection(path, image_dir, skip_bad_images=True)
    (image, target), messages = record_warnings(lambda: skipping[1])
    assert target["image_id"] == images[2]["id"]  # the next good image of the same orientation
    assert tuple(image.shape[-2:]) == (images[2]["height"], images[2]["width"])
    assert skipping.num_skipped == 1 and len(messages) == 1
    assert victim["file_name"] in messages[0] and str(victim["id"]) in messages[0]
    assert f"image id {images[2]['id']} ({images[2]['file_name']})" in messages[0]  # names the replacement
    assert skipping[1][1]["image_id"] == images[2]["id"] and skipping.num_skipped == 1  # remembered, same answer
    assert skipping[0][1]["image_id"] == images[0]["id"]


def test_no_decodable_image_of_a_group_is_a_value_error_naming_the_first(tmp_path):
    path, image_dir, images = build_case(tmp_path, n=2)
    for im in images:
        (image_dir / im["file_name"]).write_bytes(b"this is not an image\n" * 10)
    skipping = CocoDetection(path, image_dir, skip_bad_images=True)
    for _ in range(2):  # the second time every image is already known to be bad
        with pytest.raises(ValueError) as err:
            skipping[1]
        message = str(err.value)
        assert f"image id {images[1]['id']} has no replacement" in message and str(image_dir) in message
        assert f"image id {images[0]['id']}" in message and images[0]["file_name"] in message  # the first failure


def test_decoded_size_different_from_annotation_is_an_error(tmp_path):
    _, image_dir, images = build_case(tmp_path)
    first = dict(images[0], width=100, height=50)
    coco = small_coco([first], [ann(1, first["id"], [10, 10, 20, 20])])
    path = write_json(tmp_path, coco, "wrong_size.json")
    with pytest.raises(ValueError, match=rf"image id {first['id']}.*100x50"):
        CocoDetection(path, image_dir)[0]


def test_annotation_for_missing_image_id_named_or_skipped(tmp_path):
    path, image_dir, images = build_case(tmp_path, extra_annotations=[ann(77, 4242, [1, 1, 5, 5])])
    with pytest.raises(ValueError, match=r"ann\.json.*image ids 4242.*annotation ids 77"):
        CocoDetection(path, image_dir)
    ds, messages = record_warnings(lambda: CocoDetection(path, image_dir, skip_bad_images=True))
    assert len(ds) == len(images) and ds.num_skipped_annotations == 1 and ds.num_skipped == 0
    assert len(messages) == 1 and "4242" in messages[0]


def test_unknown_category_id_named_or_skipped(tmp_path):
    data = load_val_json()
    victim = [im for im in data["images"] if im["width"] >= im["height"]][0]
    path, image_dir, images = build_case(tmp_path, extra_annotations=[ann(55, victim["id"], [1, 1, 5, 5], 4242)])
    with pytest.raises(ValueError, match=rf"annotation id 55 of image id {victim['id']} \({victim['file_name']}\) "
                                         r"has category_id 4242"):
        CocoDetection(path, image_dir)
    ds, messages = record_warnings(lambda: CocoDetection(path, image_dir, skip_bad_images=True))
    assert len(ds) == len(images) - 1 and ds.num_skipped == 1
    assert len(messages) == 1 and str(victim["id"]) in messages[0] and "4242" in messages[0]


def test_missing_ann_file_or_image_dir_names_path_and_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json.*cocodataset\.org/#download"):
        CocoDetection(tmp_path / "nope.json", tmp_path)
    if not VAL_JSON.is_file():
        pytest.skip(f"COCO128 sample not found at {VAL_JSON}")
    with pytest.raises(FileNotFoundError, match=r"no_images.*cocodataset\.org/#download"):
        CocoDetection(VAL_JSON, tmp_path / "no_images")


def test_invalid_json_named(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON"):
        CocoDetection(bad, tmp_path)
    bad.write_text('{"annotations": []}')
    with pytest.raises(ValueError, match=r"broken\.json is not a COCO-format JSON"):
        CocoDetection(bad, tmp_path)


@pytest.mark.parametrize("change, match", [
    (lambda d: d.update(images=None), r"'images' must be a list of objects, got null"),
    (lambda d: d.update(annotations={}), r"'annotations' must be a list of objects, got an object"),
    (lambda d: d["images"].append(7), r"images\[1\] must be an object, got a number \(7\)"),
    (lambda d: d["images"][0].pop("id"), r"images\[0\] has no 'id'"),
    (lambda d: d["images"].append(dict(d["images"][0])), r"images\[1\] \(id 5\): the id 5 is used twice"),
    (lambda d: d["images"][0].update(id="5"), r"images\[0\] has id '5'; COCO ids are integers"),
    (lambda d: d["annotations"][0].pop("category_id"), r"annotations\[0\] \(id 1\) has no 'category_id'"),
    (lambda d: d["annotations"][0].pop("id"), r"annotations\[0\] has no 'id'"),
    (lambda d: d["categories"][0].pop("name"), r"categories\[0\] \(id 1\) has no 'name'"),
    (lambda d: d["categories"].append({"id": 1, "name": "again"}), r"categories\[3\] \(id 1\): the id 1 is used twice"),
])
def test_malformed_coco_json_names_the_file_and_the_entry(tmp_path, change, match):
    data = small_coco([{"id": 5, "file_name": "a.jpg", "width": 8, "height": 8}], [ann(1, 5, [1, 1, 2, 2])])
    change(data)
    path = write_json(tmp_path, data, "malformed.json")
    with pytest.raises(ValueError, match=rf"malformed\.json: {match}"):
        CocoDetection(path, tmp_path)


@pytest.mark.parametrize("bbox", ["abcd", 5, [1, 2, 3], [1, 2, "3", 4], [1, 2, True, 4], None])
def test_bad_bbox_names_the_file_and_the_annotation(tmp_path, bbox):
    path, image_dir, images = build_case(tmp_path, n=1)
    data = small_coco(images, [ann(9, images[0]["id"], [1, 1, 5, 5])])
    data["annotations"][0]["bbox"] = bbox
    path = write_json(tmp_path, data, "bad_bbox.json")
    with pytest.raises(ValueError, match=rf"bad_bbox\.json: annotation id 9 of image id {images[0]['id']} .*"
                                         r"expected 4 numbers"):
        CocoDetection(path, image_dir)


def test_missing_voc_folders_name_path_and_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VOCdevkit.*host\.robots\.ox\.ac\.uk/pascal/VOC"):
        VOCDetection(tmp_path / "VOCdevkit")
    (tmp_path / "VOCdevkit").mkdir()
    with pytest.raises(FileNotFoundError, match=r"VOC2007/ImageSets/Main/trainval\.txt.*host\.robots\.ox\.ac\.uk"):
        VOCDetection(tmp_path / "VOCdevkit")
