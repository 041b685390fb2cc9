"""The IoU-aware RetinaNet, assembled from injected parts (paper Fig. 2)."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from iadet.models.anchors import AnchorGenerator
from iadet.models.box_coder import DeltaBoxCoder
from iadet.models.head import IoUAwareRetinaHead
from iadet.models.postprocess import PostProcessor
from iadet.models.preprocess import ImagePreprocessor

ImageLike = Union[Tensor, np.ndarray, str, Path, "PIL.Image.Image"]


def to_rgb_tensor(image: ImageLike) -> Tensor:
    """A file path, PIL image, (H, W, 3) uint8 array or (3, H, W) tensor -> (3, H, W) float in [0, 255]."""
    if isinstance(image, (str, Path)):
        from iadet.io import read_image_rgb
        return read_image_rgb(image).float()
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"an image tensor must be (3, H, W) RGB in [0, 255], got {tuple(image.shape)}")
        return image.float()
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"an image array must be (H, W, 3) RGB, got {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float()


class IoUAwareRetinaNet(nn.Module):
    """RetinaNet with an IoU prediction branch.

    Args:
        backbone: image (N, 3, H, W) -> [C3, C4, C5].
        neck: [C3, C4, C5] -> [P3, ..., P7].
        head: pyramid -> ``cls_logits``, ``bbox_deltas``, ``iou_logits`` (see the head).
        anchor_generator: anchors for the pyramid of a padded batch.
        box_coder: delta encoding of boxes.
        postprocessor: head outputs -> detections (Eq. 7 scoring and NMS).
        preprocessor: raw images -> normalised padded batch (used by :meth:`predict`).
        class_names: optional names of the contiguous class indices.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: IoUAwareRetinaHead,
                 anchor_generator: AnchorGenerator, box_coder: DeltaBoxCoder,
                 postprocessor: PostProcessor, preprocessor: Optional[ImagePreprocessor] = None,
                 class_names: Optional[Sequence[str]] = None):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder
        self.postprocessor = postprocessor
        self.preprocessor = preprocessor or ImagePreprocessor()
        self.class_names = list(class_names) if class_names is not None else None

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward(self, batch: Tensor) -> Dict[str, Tensor]:
        """Raw network outputs for a normalised, padded batch (N, 3, H, W).

        Returns the head's dict (``cls_logits`` (N, M, C), ``bbox_deltas`` (N, M, 4),
        ``iou_logits`` (N, M) with the IoU branch, ``num_anchors_per_level``) plus
        ``anchors`` (M, 4) xyxy in batch pixels.
        """
        features = self.neck(self.backbone(batch))
        out = self.head(features)
        out["anchors"] = torch.cat(self.anchor_generator(features, batch.shape[-2:]))
        return out

    def forward_float32(self, batch: Tensor, amp_dtype: Optional[torch.dtype] = None) -> Dict[str, Tensor]:
        """:meth:`forward`, optionally under autocast (``torch.bfloat16`` / ``torch.float16``),
        with the floating outputs cast back to float32, so that post-processing (Eq. 7,
        top-k, NMS) runs in float32 whatever the network's precision."""
        with torch.autocast(batch.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = self.forward(batch)
        return {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in out.items()}

    @torch.no_grad()
    def detect(self, batch: Tensor, image_sizes, alpha="default",
               amp_dtype: Optional[torch.dtype] = None) -> List[Dict[str, Tensor]]:
        """Detections in batch pixels for a preprocessed batch (see :class:`PostProcessor`)."""
        out = self.forward_float32(batch, amp_dtype)
        return self.postprocessor(out, out["anchors"], image_sizes, alpha=alpha)

    @torch.no_grad()
    def predict(self, images: Union[ImageLike, Sequence[ImageLike]], score_thr: Optional[float] = None,
                alpha="default", amp_dtype: Optional[torch.dtype] = None) -> List[Dict[str, Tensor]]:
        """Detect objects in raw images.

        Args:
            images: one image or a list: file paths, PIL images, (H, W, 3) uint8 arrays or
                (3, H, W) RGB tensors with values in [0, 255].
            score_thr: drop detections with confidence S below this (on top of the model's
                own test threshold).
            amp_dtype: run the network under autocast with this dtype (``torch.bfloat16``
                on CPU or GPU, ``torch.float16`` on GPU); post-processing stays float32.
        Returns:
            one dict per image with ``boxes`` (K, 4) xyxy in original image pixels,
            ``scores`` (K,) confidence S of Eq. 7, ``labels`` (K,) contiguous class index,
            ``cls_scores`` (K,) and, with the IoU branch, ``ious`` (K,) predicted IoU.
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            tensors = [to_rgb_tensor(im).to(device) for im in images]
            batch, sizes, original = self.preprocessor(tensors)
            results = self.detect(batch, sizes, alpha=alpha, amp_dtype=amp_dtype)
        finally:
            self.train(was_training)
        for res, (h, w), (oh, ow) in zip(results, sizes, original):
            # Same ratios as torchvision's transform.postprocess: original / resized, float32.
            ratio = torch.tensor([ow / w, oh / h, ow / w, oh / h], dtype=torch.float32,
                                 device=res["boxes"].device)
            res["boxes"] = res["boxes"] * ratio
            if score_thr is not None:
                keep = res["scores"] >= score_thr
                for key in list(res):
                    res[key] = res[key][keep]
        return results
