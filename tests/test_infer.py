"""The inference CLI and the Python predict API."""
import json
import subprocess
import sys

import torch

import iadet
from iadet.io import read_image_rgb

from tests.conftest import CONFIGS, REPO_ROOT

SMALL = ["model.backbone.name=resnet18", "input.min_size=256", "input.max_size=320",
         "model.neck.out_channels=64", "model.head.feat_channels=64", "model.num_classes=5"]


def _small_model(score_bias=-1.0):
    torch.manual_seed(0)
    model = iadet.build_detector(iadet.load_config(None, SMALL))
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(score_bias)  # plenty of detections from random weights
    return model.eval()


def test_predict_returns_original_pixel_boxes(coco128_image_path):
    model = _small_model()
    image = read_image_rgb(coco128_image_path)
    res = model.predict(image)[0]
    assert set(res) == {"boxes", "scores", "labels", "cls_scores", "ious"}
    assert len(res["scores"]) == 100
    h, w = image.shape[-2:]
    assert res["boxes"][:, 0::2].max() <= w + 1e-3 and res["boxes"][:, 1::2].max() <= h + 1e-3
    # the same detections as the batch path, scaled from the resized to the original image
    batch, sizes, _ = model.preprocessor([image.float()])
    direct = model.detect(batch, sizes)[0]
    sy, sx = h / sizes[0][0], w / sizes[0][1]
    torch.testing.assert_close(res["boxes"], direct["boxes"] * torch.tensor([sx, sy, sx, sy]))
    # list input, numpy input and a path give the same result
    again = model.predict([str(coco128_image_path), image.permute(1, 2, 0).numpy()])
    for r in again:
        torch.testing.assert_close(r["scores"], res["scores"])
    # score threshold
    high = model.predict(image, score_thr=float(res["scores"][10]))[0]
    assert len(high["scores"]) == 11


def test_predict_alpha_override_and_batch_of_two(coco128_image_path):
    model = _small_model()
    image = read_image_rgb(coco128_image_path)
    small = image[:, :200, :300]
    both = model.predict([image, small])
    alone = model.predict(small)[0]
    # padding with another image must not change the detections of the smaller one
    torch.testing.assert_close(both[1]["scores"], alone["scores"], atol=1e-4, rtol=1e-4)
    p_only = model.predict(image, alpha=1.0)[0]
    torch.testing.assert_close(p_only["scores"], p_only["cls_scores"])


def test_infer_cli_writes_json_and_drawn_images(tmp_path, coco128_image_path):
    model = _small_model(score_bias=0.0)
    ckpt = tmp_path / "model.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"class_names": list("abcde")}}, ckpt)
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(coco128_image_path.read_bytes())
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "iadet.infer", "--config", str(CONFIGS / "iou_aware_retinanet_r50_fpn_1x_coco.yaml"),
           "--checkpoint", str(ckpt), "--input", str(images), "--out", str(out), "--score-thr", "0.2",
           "--opts", *SMALL, "model.test.candidates=pairs"]  # as _small_model (iadet's default)
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    records = json.loads((out / "detections.json").read_text())
    assert len(records) == 1 and records[0]["file"].endswith("a.jpg")
    rec = records[0]
    assert len(rec["boxes"]) == len(rec["scores"]) == len(rec["labels"]) == len(rec["ious"]) > 0
    assert min(rec["scores"]) >= 0.2 and all(0 <= l < 5 for l in rec["labels"])
    assert all(len(b) == 4 and b[0] <= b[2] and b[1] <= b[3] for b in rec["boxes"])
    expected = model.predict(coco128_image_path, score_thr=0.2)[0]
    torch.testing.assert_close(torch.tensor(rec["boxes"]), expected["boxes"], atol=1e-3, rtol=0)
    assert read_image_rgb(out / "a.jpg").shape == read_image_rgb(coco128_image_path).shape
    # the inference fast paths from the config, and bf16 autocast from the flag
    fast = subprocess.run(cmd + ["model.test.fuse_bn=true", "model.test.channels_last=true", "--amp", "bf16",
                                 "--no-draw"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert fast.returncode == 0, fast.stderr
    rec_fast = json.loads((out / "detections.json").read_text())[0]
    assert len(rec_fast["scores"]) > 0 and min(rec_fast["scores"]) >= 0.2
    assert abs(len(rec_fast["scores"]) - len(rec["scores"])) <= max(3, len(rec["scores"]) // 10)


def test_infer_cli_errors_name_the_file(tmp_path):
    cfg = str(CONFIGS / "quickstart.yaml")
    done = subprocess.run([sys.executable, "-m", "iadet.infer", "--config", cfg, "--input",
                           str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "o")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "missing.jpg" in done.stderr and "Traceback" not in done.stderr
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    img = tmp_path / "x.png"
    from torchvision.io import write_png
    write_png(torch.zeros(3, 32, 32, dtype=torch.uint8), str(img))
    done = subprocess.run([sys.executable, "-m", "iadet.infer", "--config", cfg, "--checkpoint", str(bad),
                           "--input", str(img), "--out", str(tmp_path / "o")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "bad.pth" in done.stderr and "Traceback" not in done.stderr


def test_checkpoint_without_iou_branch_loads_with_warning(tmp_path):
    import pytest
    from iadet.checkpoint import load_detector_weights

    plain = iadet.build_detector(iadet.load_config(None, SMALL + ["model.head.iou_branch=false"]))
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": plain.state_dict()}, path)
    aware = iadet.build_detector(iadet.load_config(None, SMALL))
    with pytest.warns(UserWarning, match="IoU branch"):
        load_detector_weights(aware, path)
    wrong = iadet.build_detector(iadet.load_config(None, SMALL + ["model.num_classes=7"]))
    with pytest.raises(ValueError, match="plain.pth"):
        load_detector_weights(wrong, path)


def test_backbone_init_from_a_torchvision_checkpoint(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = iadet.build_detector(iadet.load_config(None, SMALL + [f"model.backbone.init={path}"]))
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
