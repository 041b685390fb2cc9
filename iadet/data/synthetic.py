"""Embedded synthetic detection dataset of shapes, written to disk as a real COCO dataset.

Nine classes that differ in outline (colour never identifies a class) on textured, noisy,
cluttered backgrounds, with partial occlusion, low-contrast and blurred objects, and box
sizes spanning COCO's small / medium / large ranges at 320 x 320::

    OUT/train/000000.png ...             OUT/val/000000.png ...
    OUT/annotations/instances_train.json OUT/annotations/instances_val.json

so it goes through the same COCO reader and COCOeval as real data.

Ground truth is exact, because localisation is what the IoU-aware detector is about:
shapes are polygons in continuous pixel coordinates (pixel (i, j) covers [i, i+1) x
[j, j+1)), the box is the outline's extent after rotation, and ``rasterize_polygons``
draws exactly that polygon (anti-aliased by 4 x 4 samples a pixel); the shapes and the
rasteriser are in :mod:`iadet.data.shapes`. This module draws whole images (backgrounds,
clutter, placement, colour, blur, noise), writes the COCO dataset, keeps the cache of
generated datasets (``ensure_synthetic_coco``) and is the command line. The box is the
full object extent even where later objects occlude it, as COCO annotates occluded objects;
placement rejects any object that would hide more than half of an earlier one.

Deterministic: image ``i`` of a split is drawn by its own ``np.random.default_rng((seed,
split, i))``, so the same settings give byte-identical files whatever the generation order.
Images are PNG (lossless, no timestamp chunk): the pixels on disk are the pixels drawn,
byte-identical run to run, and no JPEG ringing or chroma subsampling moves the edges of
10 px objects. The price is size: pixel noise barely compresses, about 200 KB an image
(JPEG would be about 35 KB).
"""
import argparse
import difflib
import hashlib
import inspect
import json
import math
import os
import re
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

# Imported here too, so that `from iadet.data.synthetic import CLASSES, render_shape` works.
from iadet.data.shapes import (CLASSES, SUPERSAMPLE, RenderedShape, _rotation,  # noqa: F401
                               rasterize_polygons, render_shape, shape_polygons)

# Bump whenever a drawing rule or constant here or in shapes.py changes: it keys the cache.
GENERATOR_VERSION = 2

SPLITS = ("train", "val")
SMALL_AREA, LARGE_AREA = 32 ** 2, 96 ** 2  # COCOeval's area ranges, absolute pixels

MAX_HIDDEN_FRACTION = 0.5   # no object is more than this much covered by later ones
PLACEMENT_TRIES = 15        # positions tried per object before it is dropped
P_LOW_CONTRAST = 0.2        # object colour 20-40 RGB units from its local background
P_OBJECT_BLUR = 0.25        # object edges blurred, sigma 0.6-2 px (and <= 8% of its size)
P_TWO_TONE = 0.15           # object filled with stripes of two colours
P_IMAGE_BLUR = 0.15         # whole image blurred, sigma 0.5-1.2 px
MAX_NOISE_SIGMA = 10.0      # per-image Gaussian pixel noise, sigma uniform in [0, this]


# ------------------------------------------------------------------------ one image
def _gaussian_blur(a, sigma):
    """Separable Gaussian blur of (h, w) or (h, w, c) float32 over the first two axes."""
    r = max(1, math.ceil(3 * sigma))
    kernel = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma ** 2)).astype(np.float32)
    kernel /= kernel.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * a.ndim
        pad[axis] = (r, r)
        padded, n = np.pad(a, pad, mode="edge"), a.shape[axis]
        a = sum(w * padded.take(np.arange(i, i + n), axis=axis) for i, w in enumerate(kernel))
    return a


def _smooth_noise(rng, height, width, cells, amplitude):
    """(height, width, 3) float32 colour noise, smoothly interpolated from a coarse grid."""
    gh = max(1, round(cells * height / max(height, width)))
    gw = max(1, round(cells * width / max(height, width)))
    grid = rng.normal(0.0, amplitude, (gh + 1, gw + 1, 3)).astype(np.float32)

    def lerp(a, n, g, axis):  # smoothstep interpolation along one axis: no grid lines
        f = (np.arange(n) + 0.5) / n * g
        i = np.minimum(f.astype(np.int64), g - 1)
        t = (f - i).astype(np.float32)
        t = np.expand_dims(t * t * (3 - 2 * t), [d for d in range(3) if d != axis])
        return a.take(i, axis=axis) + (a.take(i + 1, axis=axis) - a.take(i, axis=axis)) * t
    return lerp(lerp(grid, width, gw, axis=1), height, gh, axis=0)


def _paint(canvas, shape, fill, alpha=None):
    """Alpha-composite ``fill`` ((3,) or (h, w, 3)) over the shape's window, in place."""
    a = (shape.alpha if alpha is None else alpha)[..., None]
    h, w = shape.alpha.shape
    window = canvas[shape.y0:shape.y0 + h, shape.x0:shape.x0 + w]
    window += a * (fill - window)


def _background(rng, height, width, difficulty=1.0):
    """(height, width, 3) float32: a gradient with colour blobs, plus stripes, checks, fine
    texture and clutter, whose frequency and amount scale with ``difficulty``."""
    yy = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    xx = (np.arange(width, dtype=np.float32) + 0.5)[None, :]

    def along(angle):
        return xx * math.cos(angle) + yy * math.sin(angle)
    u = along(rng.uniform(0, 2 * np.pi))
    u = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    img = c0 + (c1 - c0) * u[..., None]
    if rng.random() < 0.6:   # large colour blobs
        img += _smooth_noise(rng, height, width, rng.integers(2, 8), rng.uniform(15, 60))
    if rng.random() < 0.35 * difficulty:  # stripes, sinusoidal or square
        wave = np.sin(2 * np.pi * along(rng.uniform(0, np.pi)) / rng.uniform(4, 40) + rng.uniform(0, 6.3))
        wave = np.sign(wave) if rng.random() < 0.5 else wave
        tint = rng.normal(size=3)
        img += wave[..., None] * (tint / np.linalg.norm(tint) * rng.uniform(10, 50)).astype(np.float32)
    if rng.random() < 0.25 * difficulty:  # rotated checkerboard
        angle, cell = rng.uniform(0, np.pi), rng.uniform(4, 24)
        check = np.sign(np.sin(np.pi * along(angle) / cell) * np.sin(np.pi * along(angle + np.pi / 2) / cell))
        img += check[..., None] * np.float32(rng.uniform(8, 35))
    if rng.random() < 0.3 * difficulty:   # fine texture
        img += _smooth_noise(rng, height, width, max(height, width) // rng.integers(2, 6), rng.uniform(5, 25))
    for _ in range(round(rng.integers(0, 7) * difficulty)):  # clutter: line segments
        length, thick = rng.uniform(10, 0.5 * max(height, width)), rng.uniform(1, 3)
        bar = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [length / 2, thick / 2]
        bar = bar @ _rotation(rng.uniform(0, np.pi)).T
        shape = render_shape([bar], rng.uniform(0, 1, 2) * [width, height], height, width)
        _paint(img, shape, rng.uniform(0, 255, 3).astype(np.float32))
    for _ in range(round(rng.integers(0, 4) * difficulty)):  # clutter: irregular blobs that are no class
        t = 2 * np.pi * np.arange(96) / 96
        r = 1 + sum(rng.uniform(0.1, 0.3) * np.cos(k * t + rng.uniform(0, 6.3)) for k in (3, 4, 5, 6))
        blob = [np.stack([np.cos(t), np.sin(t)], 1) * r[:, None] * rng.uniform(5, 40)]
        shape = render_shape(blob, rng.uniform(0, 1, 2) * [width, height], height, width)
        _paint(img, shape, rng.uniform(0, 255, 3).astype(np.float32))
    return img


def _object_colour(rng, background, difficulty=1.0):
    """A fill colour far from ``background`` (3,), or close to it for low-contrast objects."""
    if rng.random() < P_LOW_CONTRAST * difficulty:
        direction = rng.normal(size=3)
        delta = direction / np.linalg.norm(direction) * rng.uniform(20, 40)
        colour = np.clip(background + delta, 0, 255)
        if np.linalg.norm(colour - background) < 0.5 * np.linalg.norm(delta):
            colour = np.clip(background - delta, 0, 255)  # clipped at white/black: go the other way
        return colour
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - background) >= 80:
            break
    return colour


def render_image(rng, height=320, width=320, num_classes=len(CLASSES), max_objects=10,
                 empty_fraction=0.05, min_object_size=10.0, max_object_fraction=0.7, difficulty=1.0):
    """Draw one image with ``rng`` (np.random.Generator).

    Returns (image (height, width, 3) uint8 RGB, boxes (K, 4) float64 xyxy absolute pixels,
    labels (K,) int64 indices into ``CLASSES``), K <= max_objects. Object sides are
    log-uniform in [min_object_size, max_object_fraction * min(height, width)]. A box is
    the exact extent of its object's outline: also where later objects occlude it (at most
    MAX_HIDDEN_FRACTION of it), and where the object's edges are blurred.
    """
    canvas = _background(rng, height, width, difficulty)
    owner = np.full((height, width), -1, dtype=np.int64)  # topmost object at each pixel
    boxes, labels = [], []
    areas = visible = np.zeros(0, dtype=np.int64)  # solid pixels of each object: drawn, still visible
    num_objects = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))
    log_sizes = math.log(min_object_size), math.log(max_object_fraction * min(height, width))
    for _ in range(num_objects):
        label = int(rng.integers(num_classes))
        size = math.exp(rng.uniform(*log_sizes))
        polygons = shape_polygons(CLASSES[label], size, rng.uniform(0, 2 * np.pi), rng, rng.random() < 0.5)
        half = polygons[0].max(0)  # box is centred on 0: half its width and height
        fit = min(1.0, 0.49 * width / half[0], 0.49 * height / half[1])
        polygons, half = [p * fit for p in polygons], half * fit
        # blur sigma at most 8% of the size: a 10 px object stays recognisable
        blur = min(rng.uniform(0.6, 2.0), 0.08 * size) if rng.random() < P_OBJECT_BLUR * difficulty else 0.0
        for _ in range(PLACEMENT_TRIES):
            centre = rng.uniform(half, [width - half[0], height - half[1]])
            shape = render_shape(polygons, centre, height, width, margin=1 + math.ceil(3 * blur))
            solid = shape.alpha >= 0.5
            h, w = solid.shape
            covered = owner[shape.y0:shape.y0 + h, shape.x0:shape.x0 + w][solid]
            lost = np.bincount(covered + 1, minlength=len(boxes) + 1)[1:]
            if solid.any() and np.all(visible - lost >= (1 - MAX_HIDDEN_FRACTION) * areas):
                break
        else:
            continue  # no position keeps every earlier object half visible: drop this one
        window = canvas[shape.y0:shape.y0 + h, shape.x0:shape.x0 + w]
        colour = _object_colour(rng, window[solid].mean(0), difficulty).astype(np.float32)
        # shading along a random direction, and sometimes stripes of a second colour
        yy = (np.arange(h) + shape.y0 + 0.5 - centre[1])[:, None] / (size / 2)
        xx = (np.arange(w) + shape.x0 + 0.5 - centre[0])[None, :] / (size / 2)
        a = rng.uniform(0, 2 * np.pi)
        u = (xx * math.cos(a) + yy * math.sin(a)).astype(np.float32)
        fill = colour + (u * np.float32(rng.uniform(0, 30)))[..., None]
        if rng.random() < P_TWO_TONE * difficulty:
            second = np.clip(colour + rng.normal(0, 60, 3), 0, 255).astype(np.float32)
            stripes = np.sin(u * np.float32(np.pi * rng.uniform(2, 5))) > 0
            fill = np.where(stripes[..., None], fill, second)
        _paint(canvas, shape, fill, _gaussian_blur(shape.alpha, blur) if blur else None)
        owner[shape.y0:shape.y0 + h, shape.x0:shape.x0 + w][solid] = len(boxes)
        areas, visible = np.append(areas, solid.sum()), np.append(visible - lost, solid.sum())
        boxes.append(shape.box)
        labels.append(label)
    if rng.random() < P_IMAGE_BLUR * difficulty:
        canvas = _gaussian_blur(canvas, rng.uniform(0.5, 1.2))
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(rng.uniform(0, MAX_NOISE_SIGMA * difficulty))
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(labels, dtype=np.int64)


# ------------------------------------------------------------------ the COCO dataset
def synthetic_settings(**overrides):
    """The full, validated settings of ``generate_synthetic_coco``: its defaults updated by
    ``overrides``. Raises TypeError on an unknown key, ValueError on a bad value."""
    names = list(DEFAULT_SETTINGS)
    for key in overrides:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3)
            raise TypeError(f"unknown synthetic dataset setting {key!r}"
                            + (f"; did you mean {', '.join(close)}?" if close else f"; valid: {', '.join(names)}"))
    s = DEFAULT_SETTINGS | overrides
    s["num_classes"] = len(CLASSES) if s["num_classes"] is None else s["num_classes"]
    try:
        height, width = (int(v) for v in s["image_size"])
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width), got {s['image_size']!r}") from None
    s["image_size"] = [height, width]  # a list, as it reads back from JSON
    for key in ("num_train", "num_val", "seed", "num_classes", "max_objects"):
        if isinstance(s[key], bool) or int(s[key]) != s[key] or s[key] < 0:
            raise ValueError(f"{key} must be a non-negative integer, got {s[key]!r}")
        s[key] = int(s[key])
    for key in ("empty_fraction", "min_object_size", "max_object_fraction", "difficulty"):
        s[key] = float(s[key])
    if not 0.0 <= s["difficulty"] <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {s['difficulty']}")
    if not 1 <= s["num_classes"] <= len(CLASSES):
        raise ValueError(f"num_classes must be in [1, {len(CLASSES)}], got {s['num_classes']}")
    if min(height, width) < 32 or s["max_objects"] < 1 or not 0 <= s["empty_fraction"] <= 1:
        raise ValueError(f"need image sides >= 32, max_objects >= 1 (empty_fraction=1 for no objects) "
                         f"and empty_fraction in [0, 1], got {s}")
    if not 4 <= s["min_object_size"] < s["max_object_fraction"] * min(height, width):
        raise ValueError(f"need 4 <= min_object_size < max_object_fraction * min(image_size), got {s}")
    return s


def generate_synthetic_coco(out_dir, num_train=2000, num_val=300, image_size=(320, 320), seed=0,
                            num_classes=None, max_objects=10, empty_fraction=0.05,
                            min_object_size=10.0, max_object_fraction=0.7, difficulty=1.0, progress=True):
    """Write the synthetic dataset under ``out_dir`` (must be absent or empty).

    image_size: (height, width); num_classes: the first ``num_classes`` of ``CLASSES``
    (None: all); difficulty in [0, 1] scales background texture (stripes, checks, fine
    texture) and clutter, low-contrast, two-tone and blurred objects, image blur and pixel
    noise (1: the full set, 0: none of them: gradient and colour-blob backgrounds, solid
    shaded objects; occlusion stays). Returns ``{"root": Path, "train": {"img_dir": Path, "ann_file": Path},
    "val": {...}}``. COCO ids start at 1; boxes are [x, y, w, h] floats, area = w * h.
    """
    s = synthetic_settings(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed,
                           num_classes=num_classes, max_objects=max_objects, empty_fraction=empty_fraction,
                           min_object_size=min_object_size, max_object_fraction=max_object_fraction,
                           difficulty=difficulty)
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; choose a new folder or delete it first")
    height, width = s["image_size"]
    draw = {k: s[k] for k in ("num_classes", "max_objects", "empty_fraction",
                              "min_object_size", "max_object_fraction", "difficulty")}
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"}
                  for i, n in enumerate(CLASSES[:s["num_classes"]])]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    paths = {"root": root}
    # One thread encodes image i while image i + 1 is drawn (zlib releases the GIL): each
    # file's bytes depend only on its own pixels, so this cannot change the output.
    with ThreadPoolExecutor(max_workers=1) as writer, \
            tqdm(total=s["num_train"] + s["num_val"], desc="synthetic COCO", unit="img",
                 disable=not progress) as bar:
        for split_index, split in enumerate(SPLITS):
            img_dir, ann_file = root / split, root / "annotations" / f"instances_{split}.json"
            img_dir.mkdir(exist_ok=True)
            images, annotations, written = [], [], None
            for i in range(s[f"num_{split}"]):
                rng = np.random.default_rng((s["seed"], split_index, i))
                image, boxes, labels = render_image(rng, height, width, **draw)
                file_name = f"{i:06d}.png"
                if written is not None:
                    written.result()  # at most one image waits in memory; errors surface here
                written = writer.submit(Image.fromarray(image).save, img_dir / file_name,
                                        format="PNG", compress_level=1)
                images.append({"id": i + 1, "file_name": file_name, "width": width, "height": height})
                for box, label in zip(boxes.tolist(), labels.tolist()):
                    x, y = round(box[0], 3), round(box[1], 3)
                    w, h = round(box[2] - x, 3), round(box[3] - y, 3)
                    annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                        "category_id": label + 1, "bbox": [x, y, w, h],
                                        "area": round(w * h, 3), "iscrowd": 0})
                bar.update()
            if written is not None:
                written.result()
            info = {"description": "iadet synthetic shapes", "generator": "iadet.data.synthetic",
                    "generator_version": GENERATOR_VERSION, "split": split, "seed": s["seed"], "settings": s}
            coco = {"info": info, "licenses": [], "images": images,
                    "annotations": annotations, "categories": categories}
            ann_file.write_text(json.dumps(coco, separators=(",", ":")))
            paths[split] = {"img_dir": img_dir, "ann_file": ann_file}
    return paths


# The settings of a dataset, with their defaults: generate_synthetic_coco's signature.
DEFAULT_SETTINGS = {name: p.default for name, p in inspect.signature(generate_synthetic_coco).parameters.items()
                    if name not in ("out_dir", "progress")}


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_synthetic_coco(cache_dir, progress=True, **settings):
    """Path of a complete synthetic dataset for ``settings`` under ``cache_dir``, generating
    it on first use.

    The folder is ``cache_dir/synthetic_coco-<hash of settings and GENERATOR_VERSION>``. It
    is generated into a temporary sibling ``.synthetic_coco-<hash>.tmp-<host>-<pid>`` and
    renamed when complete, so a folder with the final name is always complete; temporary
    folders left by dead processes on this host are deleted.
    """
    s = synthetic_settings(**settings)
    record = json.dumps({"generator_version": GENERATOR_VERSION, "settings": s}, sort_keys=True)
    name = f"synthetic_coco-{hashlib.sha256(record.encode()).hexdigest()[:16]}"
    cache_dir = Path(cache_dir)
    final, record_file = cache_dir / name, "synthetic_settings.json"
    if not final.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())
        for stale in cache_dir.glob(f".{name}.tmp-{host}-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = cache_dir / f".{name}.tmp-{host}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            generate_synthetic_coco(tmp, progress=progress, **s)
            (tmp / record_file).write_text(record)
            os.rename(tmp, final)
        except OSError:
            if not (final / record_file).exists():  # not a lost race with another process
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    found = final / record_file
    if not found.exists() or found.read_text() != record:
        raise RuntimeError(f"{final} exists but does not hold the synthetic dataset for {s}; delete it and retry")
    return final


def coco_summary(ann_file):
    """Counts in a COCO annotation file: images, boxes, empty images, COCO size ranges (by
    the ``area`` field, as COCOeval) and boxes per class name."""
    coco = json.loads(Path(ann_file).read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    areas = [a["area"] for a in coco["annotations"]]
    per_class = {n: 0 for n in names.values()}
    for a in coco["annotations"]:
        per_class[names[a["category_id"]]] += 1
    return {"images": len(coco["images"]), "boxes": len(areas),
            "empty_images": len(coco["images"]) - len({a["image_id"] for a in coco["annotations"]}),
            "sizes": {"small": sum(a < SMALL_AREA for a in areas),
                      "medium": sum(SMALL_AREA <= a < LARGE_AREA for a in areas),
                      "large": sum(a >= LARGE_AREA for a in areas)},
            "per_class": per_class}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the synthetic shapes dataset in COCO format.")
    parser.add_argument("--out", required=True, help="output folder (must be absent or empty)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=300)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--num-classes", type=int, default=None, help=f"first N of {len(CLASSES)} classes")
    parser.add_argument("--difficulty", type=float, default=1.0,
                        help="0..1: amount of clutter, low contrast, blur and noise (default 1)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    paths = generate_synthetic_coco(args.out, num_train=args.num_train, num_val=args.num_val,
                                    image_size=(args.height, args.width), seed=args.seed,
                                    num_classes=args.num_classes, difficulty=args.difficulty)
    print(f"wrote {paths['root']} in {time.perf_counter() - start:.1f} s")
    for split in SPLITS:
        info = coco_summary(paths[split]["ann_file"])
        print(f"{split}: {info['images']} images ({info['empty_images']} empty), {info['boxes']} boxes, "
              f"sizes {info['sizes']}\n  per class {info['per_class']}")


if __name__ == "__main__":
    main()
