"""A stand-in for ImageNet: pretrain a ResNet on classifying synthetic shape crops.

    python -m iadet.tools.pretrain_shapes [--out data/pretrained/resnet18_shapes.pth]

The small-scale study (issue 13, ``make reproduce-mini``) fine-tunes its detectors the way the
paper fine-tunes an ImageNet backbone: from one pretrained start shared by every arm, with
BatchNorm statistics and the first stages frozen. This tool makes that start. Its task is
separate from detection: one object per 32 x 32 crop (half to 0.9 of the crop), 9 shape
classes (all of :data:`~iadet.data.shapes.CLASSES`; the detection set uses the first 3),
smooth backgrounds (difficulty 0), drawn by :func:`~iadet.data.synthetic.render_image` from a
seed stream the detection data never uses; AdamW with warm-up and a cosine decay (from random
weights it learns this several times faster than SGD in a CPU budget). The output is a
torchvision-format ResNet state dict (``conv1.weight``, ..., ``fc.weight``), loaded through
``model.backbone.init`` exactly like ImageNet weights, with a JSON record beside it
(settings, accuracy per epoch, time, sha256, CPU model).

Deterministic (one process, fixed seeds): the same settings on the same CPU type give the
same file; a later run with the same settings finds the record and does nothing (cached).
"""
import argparse
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from iadet.data.shapes import CLASSES
from iadet.data.synthetic import render_image
from iadet.io import atomic_torch_save, atomic_write_text
from iadet.machine import cpu_model

DEFAULT_OUT = Path("data/pretrained/resnet18_shapes.pth")
SETTINGS = {"arch": "resnet18", "crop_size": 32, "min_object_fraction": 0.5, "num_train": 12000, "num_val": 1000,
            "difficulty": 0.0, "epochs": 6, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.05, "seed": 0,
            "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
CROP_STREAM = 7_461  # the seed stream of the crops: (seed, CROP_STREAM, split, index)


def make_crops(num: int, split: int, s: dict, progress: bool = True):
    """(num, 3, S, S) uint8 crops, each holding one shape, and their (num,) class labels."""
    size = s["crop_size"]
    images = np.empty((num, size, size, 3), dtype=np.uint8)
    labels = np.empty(num, dtype=np.int64)
    for i in tqdm(range(num), desc=f"crops ({'train' if split == 0 else 'val'})", disable=not progress):
        rng = np.random.default_rng((s["seed"], CROP_STREAM, split, i))
        image, _, label = render_image(rng, size, size, num_classes=len(CLASSES), max_objects=1, empty_fraction=0.0,
                                       min_object_size=s["min_object_fraction"] * size, max_object_fraction=0.9,
                                       difficulty=s["difficulty"])
        images[i], labels[i] = image, label[0]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


class ShapeClassifier(nn.Module):
    """iadet's ResNet (torchvision parameter names) + global average pool + ``fc``."""

    def __init__(self, arch: str, num_classes: int):
        super().__init__()
        from iadet.models.backbone import build_resnet

        self.backbone = build_resnet(arch, norm="bn", frozen_stages=-1)
        self.fc = nn.Linear(self.backbone.out_channels[-1], num_classes)

    def forward(self, x):
        return self.fc(self.backbone(x)[-1].mean((2, 3)))

    def torchvision_state_dict(self) -> dict:
        state = {k: v.clone() for k, v in self.backbone.state_dict().items()}
        state.update({f"fc.{k}": v.clone() for k, v in self.fc.state_dict().items()})
        return state


def _normalise(images: torch.Tensor, s: dict) -> torch.Tensor:
    mean = torch.tensor(s["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(s["std"]).view(1, 3, 1, 1)
    return (images.float() - mean) / std


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, s: dict) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), 500):
        correct += int((model(_normalise(images[i:i + 500], s)).argmax(1) == labels[i:i + 500]).sum())
    model.train()
    return correct / len(images)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_path(out: Path) -> Path:
    return out.with_suffix(".json")


def cached(out: Path, s: dict) -> Optional[dict]:
    """The record of an earlier run with these settings whose file is intact, else None."""
    try:
        record = json.loads(record_path(out).read_text())
    except (OSError, ValueError):
        return None
    if record.get("settings") != s or not out.is_file() or sha256(out) != record.get("sha256"):
        return None
    return record


def pretrain(out: Path = DEFAULT_OUT, progress: bool = True, **overrides) -> dict:
    """Train (or find cached) the shape classifier; returns its record."""
    unknown = set(overrides) - set(SETTINGS)
    if unknown:
        raise TypeError(f"unknown pretraining setting(s) {sorted(unknown)}; valid: {', '.join(SETTINGS)}")
    s = {**SETTINGS, **overrides}
    out = Path(out)
    record = cached(out, s)
    if record is not None:
        print(f"pretrained backbone found: {out} (val accuracy {record['val_accuracy']:.4f}, sha256 {record['sha256'][:12]})")
        return record
    start = time.time()
    torch.manual_seed(s["seed"])
    train_x, train_y = make_crops(s["num_train"], 0, s, progress)
    val_x, val_y = make_crops(s["num_val"], 1, s, progress)
    model = ShapeClassifier(s["arch"], len(CLASSES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])
    steps_per_epoch = s["num_train"] // s["batch_size"]
    total = s["epochs"] * steps_per_epoch
    warmup = min(100, total // 10)
    generator = torch.Generator().manual_seed(s["seed"])
    bar = tqdm(total=total, desc="pretrain", unit="it", disable=not progress)
    step, history = 0, []
    for epoch in range(s["epochs"]):
        order = torch.randperm(s["num_train"], generator=generator)
        for b in range(steps_per_epoch):
            index = order[b * s["batch_size"]:(b + 1) * s["batch_size"]]
            images = train_x[index]
            flip = torch.rand(len(index), generator=generator) < 0.5
            images[flip] = images[flip].flip(-1)
            lr = s["lr"] * (min(1.0, (step + 1) / warmup) if warmup else 1.0) * 0.5 * (1 + math.cos(math.pi * step / total))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = nn.functional.cross_entropy(model(_normalise(images, s)), train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.3g}")
        history.append({"epoch": epoch + 1, "loss": float(loss.detach()), "val_accuracy": accuracy(model, val_x, val_y, s)})
        bar.write(f"epoch {epoch + 1}: val accuracy {history[-1]['val_accuracy']:.4f}")
    bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(model.torchvision_state_dict(), out)
    record = {"settings": s, "val_accuracy": history[-1]["val_accuracy"], "history": history,
              "seconds": round(time.time() - start, 1), "sha256": sha256(out), "cpu": cpu_model(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "classes": list(CLASSES)}
    atomic_write_text(json.dumps(record, indent=2), record_path(out))
    print(f"wrote {out} (val accuracy {record['val_accuracy']:.4f}, {record['seconds'] / 60:.1f} min)")
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the checkpoint (a .json record beside it)")
    parser.add_argument("--num-train", type=int, default=SETTINGS["num_train"])
    parser.add_argument("--epochs", type=int, default=SETTINGS["epochs"])
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    pretrain(args.out, progress=not args.no_progress, num_train=args.num_train, epochs=args.epochs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
