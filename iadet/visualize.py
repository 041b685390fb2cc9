"""Drawing detections on images."""
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor


def draw_detections(image: Tensor, det: Dict[str, Tensor], class_names: Optional[Sequence[str]] = None,
                    width: int = 2) -> Tensor:
    """(3, H, W) uint8 image + detections (``boxes`` xyxy, ``scores``, ``labels``, optional
    ``ious``) -> (3, H, W) uint8 image with labelled boxes."""
    from torchvision.utils import draw_bounding_boxes

    if det["boxes"].numel() == 0:
        return image
    labels = []
    for i in range(len(det["scores"])):
        lab = int(det["labels"][i])
        name = class_names[lab] if class_names and lab < len(class_names) else str(lab)
        text = f"{name} {float(det['scores'][i]):.2f}"
        if "ious" in det:
            text += f" iou {float(det['ious'][i]):.2f}"
        labels.append(text)
    palette = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
               (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]
    colors = [palette[int(l) % len(palette)] for l in det["labels"]]
    return draw_bounding_boxes(image, det["boxes"].float().cpu(), labels=labels, colors=colors, width=width)
