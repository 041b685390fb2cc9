"""Shape geometry and the exact rasteriser of the synthetic shapes dataset.

The nine ``CLASSES`` differ in outline only. ``shape_polygons`` gives one shape as
polygons in continuous pixel coordinates (pixel (i, j) covers [i, i+1) x [j, j+1)),
randomly proportioned, rotated and maybe mirrored; its box is the outline's extent.
``rasterize_polygons`` draws exactly those polygons (even-odd fill, anti-aliased by
``SUPERSAMPLE`` x ``SUPERSAMPLE`` samples a pixel), so the drawn extent is the box, and
``render_shape`` places a shape in an image and rasterises the window around it.

:mod:`iadet.data.synthetic` draws whole images from these. Any change here changes the
generated pixels: bump ``iadet.data.synthetic.GENERATOR_VERSION`` with it.
"""
import math
from dataclasses import dataclass

import numpy as np

CLASSES = ("ellipse", "rectangle", "triangle", "star", "cross",
           "ring", "crescent", "hexagon", "L-shape")
SUPERSAMPLE = 4             # samples per pixel side in rasterize_polygons (small shapes)


def _rotation(angle):
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _ellipse(ratio, n=128):
    t = 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(t), ratio * np.sin(t)], axis=1)


def _crescent(rng, n=64):
    """Unit circle minus a circle of radius rb centred at (d, 0), as one polygon."""
    rb, d = rng.uniform(0.75, 0.95), rng.uniform(0.35, 0.6)
    xi = (d * d + 1 - rb * rb) / (2 * d)            # the circles meet at (xi, +-yi)
    theta = math.atan2(math.sqrt(1 - xi * xi), xi)
    phi = math.atan2(math.sqrt(1 - xi * xi), xi - d)
    outer = np.linspace(theta, 2 * np.pi - theta, n)  # far side of the unit circle
    inner = np.linspace(2 * np.pi - phi, phi, n)[1:-1]  # near side of the cut-out
    return np.concatenate([np.stack([np.cos(outer), np.sin(outer)], 1),
                           np.stack([d + rb * np.cos(inner), rb * np.sin(inner)], 1)])


def _unit_shape(name, rng):
    """Outline (N, 2) and holes of one ``name`` shape, unrotated; random proportions."""
    holes = []
    if name == "ellipse":
        outline = _ellipse(rng.uniform(0.55, 1.0))
    elif name == "rectangle":
        h = rng.uniform(0.45, 1.0)
        outline = np.array([[-1, -h], [1, -h], [1, h], [-1, h]])
    elif name == "triangle":
        t = np.deg2rad(90 + np.array([0, 120, 240]) + rng.uniform(-20, 20, 3))
        outline = np.stack([np.cos(t), np.sin(t)], 1) * rng.uniform(0.8, 1.0, (3, 1))
    elif name == "star":
        t = np.pi / 2 + np.pi * np.arange(10) / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.55))
        outline = np.stack([np.cos(t), np.sin(t)], 1) * r[:, None]
    elif name == "cross":
        a = rng.uniform(0.25, 0.4)
        outline = np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a],
                            [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]])
    elif name == "ring":
        outline = _ellipse(rng.uniform(0.8, 1.0))
        holes = [outline * rng.uniform(0.45, 0.7)]
    elif name == "crescent":
        outline = _crescent(rng)
    elif name == "hexagon":
        t = 2 * np.pi * np.arange(6) / 6
        outline = np.stack([np.cos(t), rng.uniform(0.85, 1.0) * np.sin(t)], 1)
    elif name == "L-shape":
        t, length = rng.uniform(0.3, 0.5), rng.uniform(0.6, 1.0)
        outline = np.array([[0, 0], [1, 0], [1, t], [t, t], [t, length], [0, length]])
    else:
        raise ValueError(f"unknown shape {name!r}; known shapes: {', '.join(CLASSES)}")
    return outline, holes


def shape_polygons(name, size, angle, rng, flip=False):
    """Polygons of one shape centred on its box at (0, 0): ``[outline, *holes]``.

    size: side in pixels of the unrotated shape's bounding square (its longer side);
    angle: rotation in radians; flip: mirror in x first. Each polygon is (N, 2) float64
    (x, y) in pixels. The shape is the even-odd fill of the polygons, and its box is the
    outline's extent.
    """
    outline, holes = _unit_shape(name, rng)
    lo, hi = outline.min(0), outline.max(0)
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2
    rot = _rotation(angle) * (size / 2 / half)
    mirror = np.array([-1.0, 1.0]) if flip else np.ones(2)
    polygons = [((p - centre) * mirror) @ rot.T for p in [outline, *holes]]
    box_centre = (polygons[0].min(0) + polygons[0].max(0)) / 2
    return [p - box_centre for p in polygons]


def rasterize_polygons(polygons, x0, y0, width, height, supersample=SUPERSAMPLE):
    """Anti-aliased even-odd coverage of ``polygons`` over a window of pixels.

    polygons: list of (N, 2) (x, y) in absolute continuous pixel coordinates; the window is
    pixels [x0, x0 + width) x [y0, y0 + height). Returns (height, width) float32 in [0, 1]:
    the fraction of each pixel's supersample centres inside the polygons. We do not use
    ``ImageDraw.polygon``: Pillow rounds vertices to whole pixels and fills the edge pixels
    on both sides, dilating a shape by half a (supersampled) pixel, so its box would not be
    the drawn extent.
    """
    s = supersample
    rows, cols = height * s, width * s
    yc = y0 + (np.arange(rows) + 0.5) / s                     # centres of the sample rows
    toggles = []
    for p in polygons:
        q = np.roll(p, -1, axis=0)                             # edge p[e] -> q[e]
        lo, hi = np.minimum(p[:, 1], q[:, 1]), np.maximum(p[:, 1], q[:, 1])
        r, e = np.nonzero((lo <= yc[:, None]) & (yc[:, None] < hi))  # half-open crossings
        t = (yc[r] - p[e, 1]) / (q[e, 1] - p[e, 1])
        x = p[e, 0] + t * (q[e, 0] - p[e, 0])
        k = np.clip(np.ceil((x - x0) * s - 0.5), 0, cols).astype(np.int64)  # first centre right of x
        toggles.append(r * (cols + 1) + k)
    # uint8 throughout (wrapping keeps parity; <= 16 samples a pixel), and the samples of a
    # pixel summed by strided slices: together ~10x faster than int64 and reshape().mean()
    counts = np.bincount(np.concatenate(toggles), minlength=rows * (cols + 1)).astype(np.uint8)
    inside = np.cumsum(counts.reshape(rows, cols + 1)[:, :cols], axis=1, dtype=np.uint8) & 1
    samples = sum(inside[j::s] for j in range(s))             # (height, cols)
    samples = sum(samples[:, j::s] for j in range(s))         # (height, width)
    return samples * np.float32(1 / (s * s))


@dataclass(frozen=True)
class RenderedShape:
    """A shape rasterised into a window of the image.

    alpha: (h, w) float32 coverage in [0, 1] of pixels [x0, x0 + w) x [y0, y0 + h);
    box: (4,) float64 xyxy absolute pixels, the exact extent of the outline polygon.
    """
    alpha: np.ndarray
    x0: int
    y0: int
    box: np.ndarray


def render_shape(polygons, offset, height, width, margin=1):
    """Rasterise ``shape_polygons`` output translated by ``offset`` (x, y) into an image of
    ``height`` x ``width``; the window is the box grown by ``margin`` pixels, clipped.
    Windows over 128 px a side are sampled 2 x 2 per pixel instead of 4 x 4: a quarter of
    the time, and edges of a > 128 px shape need no finer steps than half a pixel."""
    polygons = [p + np.asarray(offset, dtype=np.float64) for p in polygons]
    box = np.concatenate([polygons[0].min(0), polygons[0].max(0)])
    x0 = max(0, math.floor(box[0]) - margin)
    y0 = max(0, math.floor(box[1]) - margin)
    x1 = max(x0 + 1, min(width, math.ceil(box[2]) + margin))
    y1 = max(y0 + 1, min(height, math.ceil(box[3]) + margin))
    supersample = SUPERSAMPLE if max(x1 - x0, y1 - y0) <= 128 else SUPERSAMPLE // 2
    alpha = rasterize_polygons(polygons, x0, y0, x1 - x0, y1 - y0, supersample)
    return RenderedShape(alpha, x0, y0, box)
