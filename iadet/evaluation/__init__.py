"""Evaluation: dataset inference and COCO-style metrics."""
