"""Tests for iadet/data/synthetic.py: determinism, COCO validity, sizes, exact boxes, cache."""
import json
import math
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from iadet.data import synthetic
from iadet.data.synthetic import (CLASSES, coco_summary, ensure_synthetic_coco, generate_synthetic_coco,
                                  main, rasterize_polygons, render_shape, shape_polygons)

SMALL = dict(num_train=20, num_val=10, image_size=(160, 240))  # rectangular on purpose


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "seed0"
    return generate_synthetic_coco(root, seed=0, progress=False, **SMALL)


@pytest.fixture(scope="module")
def default_size_dataset(tmp_path_factory):
    """50 training images at the default 320 x 320."""
    root = tmp_path_factory.mktemp("synthetic") / "default"
    return generate_synthetic_coco(root, num_train=50, num_val=0, seed=0, progress=False)


def test_same_seed_gives_identical_bytes_and_other_seed_differs(small_dataset, tmp_path):
    first = _files(small_dataset["root"])
    again = _files(generate_synthetic_coco(tmp_path / "again", seed=0, progress=False, **SMALL)["root"])
    other = _files(generate_synthetic_coco(tmp_path / "other", seed=1, progress=False, **SMALL)["root"])
    assert len(first) == 20 + 10 + 2
    assert again == first
    assert other.keys() == first.keys()
    assert all(other[name] != first[name] for name in first if name.endswith(".png"))
    assert other["annotations/instances_train.json"] != first["annotations/instances_train.json"]


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_files_load_with_pycocotools_and_boxes_lie_inside(small_dataset, split):
    paths = small_dataset[split]
    coco = COCO(str(paths["ann_file"]))
    height, width = SMALL["image_size"]
    assert len(coco.getImgIds()) == SMALL[f"num_{split}"]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert coco.dataset["info"]["settings"]["seed"] == 0
    for image in coco.loadImgs(coco.getImgIds()):
        with Image.open(paths["img_dir"] / image["file_name"]) as im:
            assert im.size == (image["width"], image["height"]) == (width, height)
            assert im.mode == "RGB"
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns, "expected some objects in the split"
    assert len({a["id"] for a in anns}) == len(anns)
    for a in anns:
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0, a
        assert x + w <= width and y + h <= height, a
        assert a["area"] == pytest.approx(w * h, abs=1e-2)
        assert a["iscrowd"] == 0 and 1 <= a["category_id"] <= len(CLASSES)


def test_sizes_cover_coco_small_medium_large(default_size_dataset):
    summary = coco_summary(default_size_dataset["train"]["ann_file"])
    sizes = summary["sizes"]
    assert sum(sizes.values()) == summary["boxes"] > 100
    for name, count in sizes.items():  # each range well populated, not a stray box
        assert count >= 0.15 * summary["boxes"], (name, sizes)


def test_many_classes_present_and_at_most_ten_objects_per_image(default_size_dataset):
    coco = json.loads(default_size_dataset["train"]["ann_file"].read_text())
    present = {a["category_id"] for a in coco["annotations"]}
    assert len(present) >= 6
    assert all(1 <= n <= 10 for n in np.bincount([a["image_id"] for a in coco["annotations"]])[1:] if n)


def test_empty_fraction_and_num_classes(tmp_path):
    paths = generate_synthetic_coco(tmp_path / "half", num_train=20, num_val=0, image_size=(128, 128),
                                    empty_fraction=0.5, num_classes=3, progress=False)
    summary = coco_summary(paths["train"]["ann_file"])
    assert 0 < summary["empty_images"] < 20
    assert list(summary["per_class"]) == list(CLASSES[:3])

    paths = generate_synthetic_coco(tmp_path / "empty", num_train=3, num_val=0, image_size=(64, 96),
                                    empty_fraction=1.0, progress=False)
    coco = COCO(str(paths["train"]["ann_file"]))  # no objects at all still loads
    assert len(coco.getImgIds()) == 3 and coco.getAnnIds() == []


def test_rasterize_rectangle_by_hand():
    # a 20 x 5.5 px rectangle: rows 20-24 fully covered, row 25 half covered
    rect = np.array([[10.0, 20.0], [30.0, 20.0], [30.0, 25.5], [10.0, 25.5]])
    alpha = rasterize_polygons([rect], 0, 0, 40, 40)
    assert alpha.shape == (40, 40) and alpha.dtype == np.float32
    assert alpha.sum() == pytest.approx(110.0)
    assert np.all(alpha[20:25, 10:30] == 1.0) and np.all(alpha[25, 10:30] == 0.5)
    assert alpha[:20].sum() == alpha[26:].sum() == alpha[:, :10].sum() == alpha[:, 30:].sum() == 0


def test_rasterize_ring_leaves_its_hole_empty():
    t = 2 * np.pi * np.arange(256) / 256
    circle = np.stack([np.cos(t), np.sin(t)], 1)
    alpha = rasterize_polygons([50 + 40 * circle, 50 + 20 * circle], 0, 0, 100, 100)
    assert alpha.sum() == pytest.approx(np.pi * (40 ** 2 - 20 ** 2), rel=0.01)
    assert alpha[50, 50] == 0 and alpha[50, 20] == 1


@pytest.mark.parametrize("name", CLASSES)
def test_box_is_tight_to_the_drawn_shape(name):
    rng = np.random.default_rng(7)
    for size, angle in [(10.0, 0.0), (23.7, 0.4), (61.0, 2.1), (150.0, 5.0)]:
        polygons = shape_polygons(name, size, angle, rng, flip=bool(angle > 1))
        shape = render_shape(polygons, (200.3, 190.6), 400, 420)  # alone on a flat background
        rows, cols = np.nonzero(shape.alpha.any(1))[0], np.nonzero(shape.alpha.any(0))[0]
        extent = [shape.x0 + cols[0], shape.y0 + rows[0], shape.x0 + cols[-1] + 1, shape.y0 + rows[-1] + 1]
        assert np.all(np.abs(np.array(extent) - shape.box) <= 1), (name, size, extent, shape.box)
        # size is the unrotated longer side; a rotation changes the box's longer side by <= sqrt(2)
        assert size / math.sqrt(2) - 1e-6 <= max(shape.box[2:] - shape.box[:2]) <= size * math.sqrt(2) + 1e-6


def test_ensure_reuses_a_complete_folder(tmp_path, monkeypatch):
    settings = dict(num_train=4, num_val=2, image_size=(96, 128), seed=3)
    root = ensure_synthetic_coco(tmp_path, progress=False, **settings)
    ann = root / "annotations" / "instances_train.json"
    mtime = ann.stat().st_mtime_ns
    monkeypatch.setattr(synthetic, "generate_synthetic_coco",
                        lambda *a, **k: pytest.fail("regenerated a complete dataset"))
    assert ensure_synthetic_coco(tmp_path, progress=False, **settings) == root
    assert ann.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folder left


def test_leftover_temporary_folder_is_not_a_complete_dataset(tmp_path):
    settings = dict(num_train=3, num_val=1, image_size=(64, 64))
    name = ensure_synthetic_coco(tmp_path / "probe", progress=False, **settings).name
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftovers = [tmp_path / f".{name}.tmp-otherhost-1", tmp_path / f".{name}.tmp-{host}-{dead.pid}"]
    for folder in leftovers:  # half-written datasets of interrupted runs
        (folder / "annotations").mkdir(parents=True)
        (folder / "annotations" / "instances_train.json").write_text("{}")
    root = ensure_synthetic_coco(tmp_path, progress=False, **settings)
    assert root == tmp_path / name
    assert len(COCO(str(root / "annotations" / "instances_train.json")).getImgIds()) == 3
    assert leftovers[0].exists()      # another host's may still be running
    assert not leftovers[1].exists()  # this host's dead process: cleaned up


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(TypeError, match="num_train"):
        ensure_synthetic_coco(tmp_path, num_trian=3)
    with pytest.raises(ValueError, match="num_classes"):
        generate_synthetic_coco(tmp_path / "x", num_classes=len(CLASSES) + 1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_synthetic_coco(tmp_path / "full", num_train=1, num_val=1)


def test_command_line_prints_a_summary(tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--seed", "2", "--num-train", "3", "--num-val", "2",
          "--height", "96", "--width", "128"])
    out = capsys.readouterr().out
    assert "train: 3 images" in out and "val: 2 images" in out and "'small'" in out
    assert os.path.isfile(tmp_path / "cli" / "val" / "000001.png")


def test_difficulty_scales_texture_clutter_and_noise():
    from iadet.data.synthetic import render_image

    full = render_image(np.random.default_rng(3), 96, 96, difficulty=1.0)
    again = render_image(np.random.default_rng(3), 96, 96)
    assert np.array_equal(full[0], again[0])  # 1.0 is the default: same pixels
    clean = render_image(np.random.default_rng(3), 96, 96, difficulty=0.0)
    assert not np.array_equal(full[0], clean[0])
    with pytest.raises(ValueError, match="difficulty"):
        generate_synthetic_coco("/nonexistent-never-written", num_train=1, num_val=1, difficulty=1.5)
