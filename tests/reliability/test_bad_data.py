"""Bad training data through ``python -m iadet.train``: a clear one-line error naming the file, or
a documented skip (a warning naming it), never a traceback or a silent wrong run.

tests/data/test_bad_input.py covers the dataset classes on COCO128; here the same faults and
empty or malformed annotation files go through the command line (``iadet.train.main``, in this
process or a real one) on a COCO-format copy of the synthetic set.
"""
import json
import math
import shutil
import warnings

import pytest

from iadet.builder import synthetic_dataset_root
from iadet.checkpoint import load_checkpoint_file
from iadet.config import load_config
from iadet.data.coco import CocoDetection
from tests.reliability.harness import QUICKSTART, assert_one_line_error, run_main, run_train


@pytest.fixture
def coco(tmp_path, opts):
    """A COCO-format copy of the synthetic training set: ``images/`` and ``train.json``."""
    root = synthetic_dataset_root(load_config(QUICKSTART, opts))
    target = tmp_path / "coco"
    shutil.copytree(root / "train", target / "images")
    shutil.copy(root / "annotations" / "instances_train.json", target / "train.json")
    return target


def coco_opts(opts, coco, ann_file=None, image_dir=None):
    """Train on ``ann_file`` / ``image_dir`` (default: the good copy), validate on the good copy."""
    ann_file, image_dir = ann_file or coco / "train.json", image_dir or coco / "images"
    return opts + ["data.train.type=coco", f"data.train.ann_file={ann_file}", f"data.train.image_dir={image_dir}",
                   "data.val.type=coco", f"data.val.ann_file={coco / 'train.json'}",
                   f"data.val.image_dir={coco / 'images'}", "train.max_iters=5"]  # one epoch: every image


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def victim(coco):
    """The image the tests break."""
    return json.loads((coco / "train.json").read_text())["images"][3]


@pytest.mark.parametrize("workers", [0, 1])  # 1: the error comes from a DataLoader worker process
def test_truncated_image_stops_the_run_with_one_line_naming_it(tmp_path, opts, coco, workers):
    image = victim(coco)
    truncate(coco / "images" / image["file_name"])
    done = run_train(tmp_path / "run", coco_opts(opts, coco) + [f"data.num_workers={workers}"], expect_rc=2)
    assert_one_line_error(done.stderr, f"image id {image['id']}", str(coco / "images" / image["file_name"]),
                          "cannot decode")


def test_truncated_image_is_skipped_with_a_warning_when_asked(tmp_path, opts, coco, capsys):
    image = victim(coco)
    truncate(coco / "images" / image["file_name"])
    with pytest.warns(UserWarning, match=rf"skipping 1 bad image.*image id {image['id']}.*{image['file_name']}"):
        code, err = run_main(tmp_path / "run", coco_opts(opts, coco) + ["data.skip_bad_images=true"], capsys)
    assert code == 0, err[-3000:]
    assert load_checkpoint_file(tmp_path / "run" / "latest.pth")["iteration"] == 5  # the epoch went on


def test_no_decodable_image_with_skip_bad_images_is_a_clear_error(tmp_path, opts, coco, capsys):
    for path in (coco / "images").iterdir():
        truncate(path)
    code, err = run_main(tmp_path / "run", coco_opts(opts, coco) + ["data.skip_bad_images=true"], capsys)
    assert code == 2, f"crashed: {code!r}"
    assert_one_line_error(err, "image id")


def broken(kind: str, good: dict) -> str:
    """The text of a broken annotation file."""
    images, categories = good["images"], good["categories"]
    return {
        "0 bytes": "",
        "{}": "{}",
        "not JSON": "{images: [",
        "a JSON list": "[]",
        "no categories": json.dumps({"images": images, "annotations": [], "categories": []}),
        "no images": json.dumps({"images": [], "annotations": [], "categories": categories}),
        "images null": json.dumps({**good, "images": None}),
        "image without id": json.dumps({**good, "images": [{"file_name": im["file_name"]} for im in images]}),
        "annotation without category_id": json.dumps(
            {**good, "annotations": [{k: v for k, v in a.items() if k != "category_id"} for a in good["annotations"]]}),
        "bbox not numbers": json.dumps({**good, "annotations": [dict(a, bbox="abcd") for a in good["annotations"]]}),
    }[kind]


@pytest.mark.parametrize("kind", [
    "0 bytes", "{}", "not JSON", "a JSON list", "no categories", "no images", "images null", "image without id",
    "annotation without category_id", "bbox not numbers",
])
def test_empty_or_malformed_annotation_file_is_named_before_training(tmp_path, opts, coco, capsys, kind):
    ann_file = coco / "broken.json"
    ann_file.write_text(broken(kind, json.loads((coco / "train.json").read_text())))
    work = tmp_path / "run"
    code, err = run_main(work, coco_opts(opts, coco, ann_file=ann_file), capsys)
    assert code == 2, f"crashed: {code!r}" if isinstance(code, Exception) else err[-3000:]
    assert_one_line_error(err, ann_file.name)
    assert not list(work.glob("*.pth"))


def test_empty_annotation_file_through_a_real_process(tmp_path, opts, coco):
    (coco / "empty.json").write_text("")
    done = run_train(tmp_path / "run", coco_opts(opts, coco, ann_file=coco / "empty.json"), expect_rc=2)
    assert_one_line_error(done.stderr, str(coco / "empty.json"), "is not valid JSON")


def test_training_set_without_any_box_is_refused_or_warned(tmp_path, opts, coco, capsys):
    good = json.loads((coco / "train.json").read_text())
    ann_file = coco / "no_boxes.json"
    ann_file.write_text(json.dumps({**good, "annotations": []}))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        code, err = run_main(tmp_path / "run", coco_opts(opts, coco, ann_file=ann_file) + ["train.max_iters=1"],
                             capsys)
    warned = [str(w.message) for w in record if ann_file.name in str(w.message)]
    assert (code == 2 and ann_file.name in err) or (code == 0 and warned), (code, err[-2000:])


def test_missing_image_folder_is_named(tmp_path, opts, coco, capsys):
    code, err = run_main(tmp_path / "run", coco_opts(opts, coco, image_dir=coco / "nowhere"), capsys)
    assert code == 2, f"crashed: {code!r}"
    assert_one_line_error(err, "image folder not found", str(coco / "nowhere"))


def test_nonfinite_boxes_are_dropped_with_a_warning(coco):
    """NaN or infinite coordinates never reach a batch: such boxes are dropped and reported."""
    data = json.loads((coco / "train.json").read_text())
    bad = [(0, [math.nan, 1, 5, 5]), (1, [1, 1, math.inf, 5]), (2, [-math.inf, 1, math.inf, 5])]
    for k, bbox in bad:
        data["annotations"][k]["bbox"] = bbox
    (coco / "nonfinite.json").write_text(json.dumps(data))  # Python's json writes NaN / Infinity
    with pytest.warns(UserWarning, match=r"nonfinite\.json: dropped 2 box") as record:
        dataset = CocoDetection(coco / "nonfinite.json", coco / "images")
    assert dataset.num_dropped_boxes == 2  # [1, 1, inf, 5] is clipped to the image and kept
    assert any("clipped" in str(w.message) for w in record)
    boxes = [dataset.raw_target(i)["boxes"] for i in range(len(dataset))]
    assert all(bool(b.isfinite().all()) for b in boxes)
    assert sum(len(b) for b in boxes) == len(data["annotations"]) - 2
