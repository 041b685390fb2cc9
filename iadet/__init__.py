"""iadet: the IoU-aware single-stage object detector (Wu, Li, Wang) in pure PyTorch.

Python API::

    import iadet
    cfg = iadet.load_config("configs/iou_aware_retinanet_r50_fpn_1x_coco.yaml", ["model.test.alpha=0.4"])
    model = iadet.build_detector(cfg)
    detections = model.predict(["image.jpg"])  # boxes, scores, labels, ious per image
"""
__version__ = "0.1.0"


def load_config(path=None, opts=None):
    """Load a YAML config with ``_base_`` inheritance and ``key=value`` overrides (strict)."""
    from iadet.config import load_config as _load
    return _load(path, opts)


def build_detector(cfg, class_names=None):
    """Build the detector described by ``cfg`` (see :mod:`iadet.builder`)."""
    from iadet.builder import build_detector as _build
    return _build(cfg, class_names=class_names)


__all__ = ["load_config", "build_detector", "__version__"]
