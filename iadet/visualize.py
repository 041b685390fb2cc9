"""Drawing detections (and the ground truth beside them) legibly on images.

:func:`draw_detections` upscales small images (the long side to at least ``min_size``, 512 px
by default: the quickstart's 160-pixel images become 512), draws each box in its class colour
with a short label (``name 0.87``: class and confidence S) on a filled tag, and leaves a
label out rather than letting it cover another one (higher scores are labelled first).
With ``ground_truth`` the result is two panels side by side, the ground truth on the left and
the predictions on the right, each with a title bar.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
           (0, 128, 128), (220, 190, 255), (170, 110, 40), (128, 0, 0), (170, 255, 195), (128, 128, 0)]
IGNORE_COLOR = (160, 160, 160)
MAX_NAME = 12  # characters of a class name in a label


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: scalable
    except (TypeError, OSError, AttributeError):
        return ImageFont.load_default()


def _text_size(font, text: str) -> Tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return right - left, bottom - top


def _label_name(label: int, class_names: Optional[Sequence[str]]) -> str:
    name = str(class_names[label]) if class_names and 0 <= label < len(class_names) else str(label)
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "."


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _to_pil(image: Tensor, scale: float):
    from PIL import Image

    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) uint8 image, got {tuple(image.shape)} {image.dtype}")
    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().cpu().numpy())
    if scale != 1.0:
        pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.Resampling.BICUBIC)
    return pil


def _draw_boxes(pil, boxes: Tensor, texts: List[Optional[str]], colors: List[tuple], order: List[int],
                font, width: int) -> None:
    """Boxes (already scaled), then their tags in ``order`` (most important first), each tag
    placed above its box, inside its top, below it or inside its bottom, wherever it covers
    no tag already placed; a tag that fits nowhere is left out."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(pil)
    W, H = pil.size
    for i in reversed(order):  # the most important box drawn last, on top
        x1, y1, x2, y2 = boxes[i].tolist()
        draw.rectangle([x1, y1, x2, y2], outline=colors[i], width=width)
    placed = []
    pad = max(2, width)
    for i in order:
        if not texts[i]:
            continue
        tw, th = _text_size(font, texts[i])
        w, h = tw + 2 * pad, th + 2 * pad
        x1, y1, x2, y2 = boxes[i].tolist()
        left = min(max(0, x1), max(0, W - w))
        for top in (y1 - h, y1, y2, y2 - h):
            top = min(max(0, top), max(0, H - h))
            rect = (left, top, left + w, top + h)
            if not any(_overlaps(rect, other) for other in placed):
                placed.append(rect)
                r, g, b = colors[i]
                ink = (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)
                draw.rectangle(rect, fill=colors[i])
                bbox = font.getbbox(texts[i])
                draw.text((left + pad - bbox[0], top + pad - bbox[1]), texts[i], fill=ink, font=font)
                break


def _panel(image: Tensor, boxes: Tensor, labels: Tensor, texts: List[Optional[str]], order: List[int],
           scale: float, extra_boxes: Optional[Tensor] = None):
    pil = _to_pil(image, scale)
    long_side = max(pil.size)
    font = _font(max(12, min(28, round(long_side * 0.028))))
    width = max(2, round(long_side / 256))
    boxes = boxes.detach().float().cpu().reshape(-1, 4) * scale
    colors = [PALETTE[int(l) % len(PALETTE)] for l in labels.tolist()]
    if extra_boxes is not None and extra_boxes.numel():  # ignore regions: grey, no tag, under the rest
        extra = extra_boxes.detach().float().cpu().reshape(-1, 4) * scale
        n = len(boxes)
        boxes = torch.cat([boxes, extra])
        colors += [IGNORE_COLOR] * len(extra)
        texts = list(texts) + [None] * len(extra)
        order = list(order) + list(range(n, n + len(extra)))
    _draw_boxes(pil, boxes, texts, colors, order, font, max(1, width))
    return pil, font


def _titled(pil, title: str, font):
    from PIL import Image, ImageDraw

    tw, th = _text_size(font, title)
    bar = th + 12
    out = Image.new("RGB", (pil.width, pil.height + bar), (32, 32, 32))
    out.paste(pil, (0, bar))
    bbox = font.getbbox(title)
    ImageDraw.Draw(out).text((6 - bbox[0], 6 - bbox[1]), title, fill=(255, 255, 255), font=font)
    return out


def draw_detections(image: Tensor, det: Dict[str, Tensor], class_names: Optional[Sequence[str]] = None,
                    ground_truth: Optional[Dict[str, Tensor]] = None, min_size: int = 512,
                    score_thr: Optional[float] = None, max_labels: int = 50) -> Tensor:
    """Draw ``det`` on ``image`` and return the drawing as a (3, H', W') uint8 tensor.

    Args:
        image: (3, H, W) uint8 image; the detections' boxes are in its pixels.
        det: ``boxes`` (K, 4) xyxy, ``scores`` (K,) and ``labels`` (K,) contiguous class index
            (``ious`` and other keys are not drawn: they are in ``detections.json``).
        class_names: names of the labels (index = label); the label number otherwise.
        ground_truth: ``boxes`` (G, 4) xyxy and ``labels`` (G,) (optional ``ignore_boxes``,
            drawn grey): drawn in a second panel, to the left of the predictions.
        min_size: the drawing's long side is at least this (the image is upscaled).
        score_thr: only used for the predictions panel's title.
        max_labels: tags for at most this many detections (the highest scores).

    Without ``ground_truth`` the drawing has the image's aspect ratio and, when its long side
    is at least ``min_size``, its size.
    """
    from PIL import Image

    height, width = image.shape[-2:]
    scale = max(1.0, min_size / max(height, width, 1))
    scores = det["scores"].detach().float().cpu().reshape(-1)
    labels = det["labels"].detach().cpu().reshape(-1)
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    texts: List[Optional[str]] = [None] * len(order)
    for i in order[:max_labels]:
        texts[i] = f"{_label_name(int(labels[i]), class_names)} {float(scores[i]):.2f}"
    pred, font = _panel(image, det["boxes"], labels, texts, order, scale)
    if ground_truth is None:
        drawn = pred
    else:
        gt_labels = ground_truth["labels"].detach().cpu().reshape(-1)
        gt_texts = [_label_name(int(l), class_names) for l in gt_labels.tolist()]
        gt_boxes = ground_truth["boxes"].detach().float().cpu().reshape(-1, 4)
        areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
        gt_order = torch.argsort(areas, stable=True).tolist()  # small objects' tags first
        gt, _ = _panel(image, gt_boxes, gt_labels, gt_texts, gt_order, scale, ground_truth.get("ignore_boxes"))
        thr = f" (S >= {score_thr:.2f})" if score_thr is not None else ""
        gt = _titled(gt, f"ground truth: {len(gt_labels)}", font)
        pred = _titled(pred, f"predictions{thr}: {len(order)}", font)
        gap = max(8, pred.width // 64)
        drawn = Image.new("RGB", (gt.width + gap + pred.width, max(gt.height, pred.height)), (255, 255, 255))
        drawn.paste(gt, (0, 0))
        drawn.paste(pred, (gt.width + gap, 0))
    import numpy as np

    return torch.from_numpy(np.asarray(drawn).copy()).permute(2, 0, 1).contiguous()


def save_image(image: Tensor, path) -> None:
    """Write a (3, H, W) uint8 tensor as PNG (``.png``) or JPEG (anything else, quality 95)."""
    from PIL import Image

    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().cpu().numpy())
    if str(path).lower().endswith(".png"):
        pil.save(path, format="PNG")
    else:
        pil.save(path, format="JPEG", quality=95)
