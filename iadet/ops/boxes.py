"""Box geometry on ``xyxy`` boxes in absolute pixels (width = x2 - x1, no "+1")."""
import torch
from torch import Tensor


def box_area(boxes: Tensor) -> Tensor:
    """Area of (..., 4) xyxy boxes -> (...)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M).

    Same arithmetic as ``torchvision.ops.box_iou``: inter / (area1 + area2 - inter).
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def aligned_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of matching rows of (..., 4) and (..., 4) xyxy boxes -> (...).

    Differentiable in both arguments; ``eps`` keeps degenerate boxes finite.
    """
    lt = torch.max(boxes1[..., :2], boxes2[..., :2])
    rb = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return inter / union.clamp(min=eps)


def clip_boxes(boxes: Tensor, height, width) -> Tensor:
    """Clip (..., 4) xyxy boxes to images of ``height`` x ``width`` pixels.

    ``height`` and ``width`` are numbers or tensors broadcastable to ``boxes[..., 0]``.
    """
    height = torch.as_tensor(height, dtype=boxes.dtype, device=boxes.device)
    width = torch.as_tensor(width, dtype=boxes.dtype, device=boxes.device)
    zero = boxes.new_zeros(())
    x1 = torch.minimum(torch.maximum(boxes[..., 0], zero), width)
    y1 = torch.minimum(torch.maximum(boxes[..., 1], zero), height)
    x2 = torch.minimum(torch.maximum(boxes[..., 2], zero), width)
    y2 = torch.minimum(torch.maximum(boxes[..., 3], zero), height)
    return torch.stack((x1, y1, x2, y2), dim=-1)
