"""Tests for iadet/data/transforms.py: resize sizes and boxes, flips, normalisation."""
import pytest
import torch

from iadet.data.transforms import (Compose, Normalize, RandomHorizontalFlip, Resize, build_test_transforms,
                                   build_train_transforms, flip_horizontal, keep_ratio_size)


def make_target(boxes, height, width):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": boxes, "labels": torch.zeros(len(boxes), dtype=torch.int64),
            "ignore_boxes": torch.zeros((0, 4)), "image_id": 1, "orig_size": (height, width),
            "size": (height, width), "scale_factor": (1.0, 1.0), "flipped": False, "file_name": "x.jpg"}


@pytest.mark.parametrize("height, width, min_size, max_size, expected", [
    (426, 640, 800, 1333, (800, 1202)),    # short edge reaches 800: 640 * 800 / 426 = 1201.88
    (500, 1500, 800, 1333, (444, 1333)),   # long edge reaches 1333: 500 * 1333 / 1500 = 444.33
    (640, 426, 600, 1000, (901, 600)),     # portrait: 640 * 600 / 426 = 901.4
    (100, 130, 5, 1000, (5, 7)),           # 130 * 0.05 = 6.5 rounds half up to 7 (Python's round gives 6)
    (800, 1333, 800, 1333, (800, 1333)),   # already fits exactly
])
def test_keep_ratio_size_by_hand(height, width, min_size, max_size, expected):
    assert keep_ratio_size(height, width, min_size, max_size) == expected


def test_resize_scales_boxes_size_and_scale_factor():
    image = torch.randint(0, 256, (3, 426, 640), dtype=torch.uint8)
    target = make_target([[10, 20, 110, 220], [0, 0, 640, 426]], 426, 640)
    target["ignore_boxes"] = torch.tensor([[0.0, 0.0, 64.0, 42.6]])
    out, t = Resize(max_size=1333, min_size=800)(image, target)
    assert out.shape == (3, 800, 1202) and out.dtype == torch.uint8
    sy, sx = 800 / 426, 1202 / 640
    assert t["size"] == (800, 1202)
    assert t["scale_factor"] == pytest.approx((sy, sx))
    assert torch.allclose(t["boxes"], torch.tensor([[10 * sx, 20 * sy, 110 * sx, 220 * sy], [0, 0, 1202, 800]]))
    assert torch.allclose(t["ignore_boxes"], torch.tensor([[0.0, 0.0, 64 * sx, 42.6 * sy]]))
    assert target["boxes"][0, 2] == 110  # the input target is not modified
    out_f, _ = Resize(max_size=1333, min_size=800)(image.float(), target)
    assert out_f.dtype == torch.float32 and (out_f - out.float()).abs().max() <= 1.5  # uint8 path is fixed-point


def test_resize_twice_composes_scale_factor():
    image = torch.zeros((3, 200, 300), dtype=torch.uint8)
    _, t = Compose([Resize(max_size=150, min_size=100), Resize(max_size=600, min_size=400)])(
        image, make_target([], 200, 300))
    assert t["size"] == (400, 600)
    assert t["scale_factor"] == pytest.approx((2.0, 2.0))


@pytest.mark.parametrize("height, width, min_size, max_size", [(123, 217, 800, 1333), (480, 640, 300, 500)])
def test_resized_boxes_cover_the_resized_box_pixels(height, width, min_size, max_size):
    """Rasterise a box on the original, resize image and mask: the mask's box is the transformed box."""
    box = [37.0, 21.0, 150.0, 90.0]
    mask = torch.zeros((3, height, width))
    mask[:, 21:90, 37:150] = 1.0
    out, t = Resize(max_size=max_size, min_size=min_size)(mask, make_target([box], height, width))
    ys, xs = torch.nonzero(out[0] >= 0.5, as_tuple=True)
    mask_box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    assert torch.allclose(mask_box, t["boxes"][0], atol=1.0), (mask_box, t["boxes"][0])


def test_flip_by_hand_and_twice_is_identity():
    image = torch.randint(0, 256, (3, 20, 100), dtype=torch.uint8)
    target = make_target([[10, 2, 30, 4], [0, 0, 100, 20]], 20, 100)
    once_image, once = flip_horizontal(image, target)
    assert torch.equal(once["boxes"], torch.tensor([[70.0, 2, 90, 4], [0, 0, 100, 20]]))
    assert torch.equal(once_image[:, :, 0], image[:, :, -1]) and once["flipped"] is True
    twice_image, twice = flip_horizontal(once_image, once)
    assert torch.equal(twice_image, image) and torch.equal(twice["boxes"], target["boxes"])
    assert twice["flipped"] is False


def test_random_flip_probability_and_seed():
    image = torch.zeros((3, 4, 8), dtype=torch.uint8)
    target = make_target([[1, 1, 3, 3]], 4, 8)
    assert not RandomHorizontalFlip(p=0.0)(image, target)[1]["flipped"]
    assert RandomHorizontalFlip(p=1.0)(image, target)[1]["flipped"]

    def draws(flip):
        return [flip(image, target)[1]["flipped"] for _ in range(40)]
    a, b = draws(RandomHorizontalFlip(0.5, seed=3)), draws(RandomHorizontalFlip(0.5, seed=3))
    assert a == b and 5 < sum(a) < 35
    assert draws(RandomHorizontalFlip(0.5, seed=4)) != a
    with pytest.raises(ValueError, match="probability"):
        RandomHorizontalFlip(1.5)


def test_normalize_values():
    image = torch.zeros((3, 2, 2), dtype=torch.uint8)
    image[0, 0, 0] = 255
    out, _ = Normalize()(image, make_target([], 2, 2))
    assert out.dtype == torch.float32
    assert out[0, 0, 0].item() == pytest.approx((255 - 123.675) / 58.395)
    assert out[:, 1, 1].tolist() == pytest.approx([-123.675 / 58.395, -116.28 / 57.12, -103.53 / 57.375])
    mean_image = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1).expand(3, 2, 2).clone()
    out, _ = Normalize()(mean_image, None)
    assert out.abs().max() < 1e-6
    assert mean_image[0, 0, 0] == pytest.approx(123.675)  # a float input is not modified in place
    with pytest.raises(ValueError, match="3 means"):
        Normalize(mean=(1.0, 2.0))


def test_build_pipelines():
    train = build_train_transforms(min_size=600, max_size=1000, flip_prob=0.5, seed=0)
    assert [type(t) for t in train.transforms] == [Resize, RandomHorizontalFlip, Normalize]
    assert [type(t) for t in build_train_transforms(flip_prob=0.0).transforms] == [Resize, Normalize]
    test = build_test_transforms(min_size=600, max_size=1000)
    assert [type(t) for t in test.transforms] == [Resize, Normalize]
    image, target = test(torch.zeros((3, 300, 500), dtype=torch.uint8), make_target([[0, 0, 50, 30]], 300, 500))
    assert image.shape == (3, 600, 1000) and image.dtype == torch.float32
    assert torch.allclose(target["boxes"], torch.tensor([[0.0, 0, 100, 60]]))
