"""Datasets: the COCO-format reader's inputs and the embedded synthetic shapes dataset."""
