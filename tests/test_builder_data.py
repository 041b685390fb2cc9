"""Config -> datasets (iadet.builder) and the browse tool."""
import subprocess
import sys

import pytest
import torch

import iadet
from iadet.builder import build_dataset
from iadet.config import ConfigError

from tests.conftest import COCO128, CONFIGS, REPO_ROOT


def _tiny_synthetic(tmp_path):
    return [f"data.synthetic.cache_dir={tmp_path / 'cache'}", "data.synthetic.num_train=6",
            "data.synthetic.num_val=3", "data.synthetic.height=96", "data.synthetic.width=128"]


def test_synthetic_dataset_from_config(tmp_path):
    cfg = iadet.load_config(CONFIGS / "quickstart.yaml", _tiny_synthetic(tmp_path))
    train = build_dataset(cfg, "train", seed=0)
    val = build_dataset(cfg, "val")
    assert len(train) == 6 and len(val) == 3
    assert train.num_classes == cfg.model.num_classes == 3  # the quickstart uses 3 shape classes
    image, target = val[0]
    assert image.dtype == torch.float32 and image.shape[0] == 3
    assert max(image.shape[-2:]) == cfg.input.max_size  # resized to fit the input size
    assert target["boxes"].shape[1] == 4 and target["labels"].dtype == torch.int64


def test_class_count_mismatch_names_the_key(tmp_path):
    cfg = iadet.load_config(CONFIGS / "quickstart.yaml", _tiny_synthetic(tmp_path) + ["model.num_classes=80"])
    with pytest.raises(ConfigError, match="model.num_classes.*3"):
        build_dataset(cfg, "val")


def test_unset_and_missing_coco_paths(tmp_path):
    with pytest.raises(ConfigError, match="data.train.ann_file"):
        build_dataset(iadet.load_config(None), "train")
    cfg = iadet.load_config(CONFIGS / "iou_aware_retinanet_r50_fpn_1x_coco.yaml",
                            [f"data.val.ann_file={tmp_path / 'nope.json'}"])
    with pytest.raises(FileNotFoundError, match="nope.json"):
        build_dataset(cfg, "val")


def test_coco128_through_the_config():
    if not (COCO128 / "annotations").is_dir():
        pytest.skip(f"COCO128 sample not found at {COCO128}")
    cfg = iadet.load_config(CONFIGS / "iou_aware_retinanet_r50_fpn_1x_coco.yaml", [
        f"data.val.ann_file={COCO128 / 'annotations' / 'instances_val2017.json'}",
        f"data.val.image_dir={COCO128 / 'val2017'}", "input.min_size=320", "input.max_size=512"])
    val = build_dataset(cfg, "val")
    assert len(val) == 128 and val.num_classes == 80


def test_browse_cli(tmp_path):
    out = tmp_path / "browse"
    done = subprocess.run([sys.executable, "-m", "iadet.tools.browse", "--config", str(CONFIGS / "quickstart.yaml"),
                           "--out", str(out), "--num", "3", "--opts", *_tiny_synthetic(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(list(out.glob("*.jpg"))) == 3
    bad = subprocess.run([sys.executable, "-m", "iadet.tools.browse", "--config", str(CONFIGS / "quickstart.yaml"),
                          "--out", str(out), "--opts", "data.train.type=coco", "data.train.ann_file=/nowhere/a.json",
                          "data.train.image_dir=/nowhere"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "/nowhere" in bad.stderr and "Traceback" not in bad.stderr
