"""Drawn detections are legible: small images upscaled to >= 512 px, the ground truth in its own
panel beside the predictions, no crash without detections or ground truth."""
import json

import pytest
import torch

from iadet.visualize import draw_detections, save_image


def image(h=160, w=160):
    return torch.arange(3 * h * w, dtype=torch.int64).reshape(3, h, w).remainder(251).to(torch.uint8)


def detections(n, h=160, w=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
    wh = 8 + torch.rand(n, 2, generator=g) * 40
    return {"boxes": torch.cat([xy, xy + wh], 1), "scores": torch.rand(n, generator=g),
            "labels": torch.randint(0, 3, (n,), generator=g), "ious": torch.rand(n, generator=g)}


NONE = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
NAMES = ["ellipse", "rectangle", "triangle"]


def test_a_small_image_is_upscaled_to_at_least_512_pixels():
    drawn = draw_detections(image(), detections(12), NAMES)
    assert drawn.dtype == torch.uint8 and drawn.shape == (3, 512, 512)
    wide = draw_detections(image(100, 300), detections(3, 100, 300), NAMES)
    assert wide.shape[0] == 3 and max(wide.shape[1:]) >= 512
    assert abs(wide.shape[2] / wide.shape[1] - 3) < 0.05  # aspect ratio kept


def test_a_large_image_keeps_its_size():
    assert draw_detections(image(480, 640), detections(5, 480, 640), NAMES).shape == (3, 480, 640)
    assert draw_detections(image(100, 100), NONE, min_size=64).shape == (3, 100, 100)


def test_boxes_and_labels_are_drawn():
    plain = draw_detections(image(), NONE, NAMES)
    drawn = draw_detections(image(), detections(4), NAMES)
    assert plain.shape == drawn.shape and (plain != drawn).any()


def test_the_ground_truth_gets_its_own_panel_beside_the_predictions():
    gt = {"boxes": detections(3)["boxes"], "labels": torch.tensor([0, 1, 2]),
          "ignore_boxes": torch.tensor([[0.0, 0, 20, 20]])}
    alone = draw_detections(image(), detections(6), NAMES)
    both = draw_detections(image(), detections(6), NAMES, ground_truth=gt, score_thr=0.3)
    assert both.shape[1] > alone.shape[1]  # title bars
    assert both.shape[2] >= 2 * alone.shape[2]  # two panels side by side
    half = both.shape[2] // 2
    assert not torch.equal(both[:, :, :half], both[:, :, -half:])  # different content per panel


@pytest.mark.parametrize("dets, gt", [(0, 0), (0, 3), (5, 0)])
def test_no_crash_with_zero_detections_or_zero_ground_truth(dets, gt):
    det = detections(dets) if dets else NONE
    truth = {"boxes": detections(gt)["boxes"], "labels": torch.zeros(gt, dtype=torch.int64)} if gt else \
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    drawn = draw_detections(image(), det, NAMES, ground_truth=truth)
    assert drawn.shape[1] >= 512 and drawn.shape[2] >= 1024


def test_unknown_labels_and_degenerate_boxes_are_drawn():
    det = {"boxes": torch.tensor([[10.0, 10, 10, 10], [-5, -5, 300, 300], [150, 150, 170, 170]]),
           "scores": torch.tensor([0.5, 0.9, 0.1]), "labels": torch.tensor([7, 0, 1])}
    assert draw_detections(image(), det, NAMES).shape == (3, 512, 512)
    assert draw_detections(image(), det, None).shape == (3, 512, 512)


def test_save_image_writes_png_and_jpeg(tmp_path):
    drawn = draw_detections(image(), detections(3), NAMES)
    save_image(drawn, tmp_path / "a.png")
    save_image(drawn, tmp_path / "a.jpg")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "a.jpg").read_bytes()[:2] == b"\xff\xd8"


def test_infer_draws_the_ground_truth_of_annotated_images(tmp_path):
    """``python -m iadet.infer --ann``: annotated images get both panels, the others one."""
    from torchvision.io import write_png

    from iadet.infer import main
    from iadet.io import read_image_rgb
    from tests.conftest import CONFIGS

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        write_png(image(), str(images / name))
    ann = {"images": [{"id": 1, "file_name": "val/a.png", "width": 160, "height": 160}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [10, 10, 40, 30], "area": 1200,
                            "iscrowd": 0}],
           "categories": [{"id": 1, "name": "ellipse"}, {"id": 2, "name": "rectangle"}, {"id": 3, "name": "triangle"}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    with pytest.warns(UserWarning, match=r"1 of 2 images are not in"):
        main(["--config", str(CONFIGS / "quickstart.yaml"), "--input", str(images), "--out", str(tmp_path / "out"),
              "--device", "cpu", "--ann", str(tmp_path / "ann.json"), "--format", "png"])
    a, b = read_image_rgb(tmp_path / "out" / "a.png"), read_image_rgb(tmp_path / "out" / "b.png")
    assert b.shape == (3, 512, 512) and a.shape[2] > 2 * 512 and a.shape[1] > 512
