"""Helper for test_distributed.py: gradients of one step on a fixed batch of 4 images.

Run alone: the whole batch in one process. Under torchrun with N ranks: each rank takes
its 4/N images, DistributedDataParallel averages the gradients. Rank 0 saves them to the
path given as the first argument.
"""
import sys

import torch
from torch import nn

import iadet
from iadet.builder import build_criterion
from iadet.distributed import cleanup, init_distributed

OPTS = ["model.num_classes=3", "model.backbone.name=resnet18", "model.backbone.norm=gn",
        "model.backbone.gn_groups=16", "model.backbone.frozen_stages=-1", "model.neck.out_channels=32",
        "model.head.feat_channels=32", "model.head.norm=gn", "model.head.gn_groups=8", "model.head.stacked_convs=2"]


def fixed_batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 96, 96, generator=g)
    targets = []
    for i in range(4):
        xy = torch.rand(i + 1, 2, generator=g) * 50
        boxes = torch.cat([xy, xy + 12 + torch.rand(i + 1, 2, generator=g) * 30], 1)
        targets.append({"boxes": boxes, "labels": torch.arange(i + 1) % 3, "ignore_boxes": torch.zeros(0, 4)})
    return images, targets


def main(out_path):
    dist = init_distributed("cpu")
    torch.manual_seed(0)
    model = iadet.build_detector(iadet.load_config(None, OPTS))
    criterion = build_criterion(iadet.load_config(None, OPTS))
    images, targets = fixed_batch()
    per_rank = len(images) // dist.world_size
    sl = slice(dist.rank * per_rank, (dist.rank + 1) * per_rank)
    net = nn.parallel.DistributedDataParallel(model) if dist.distributed else model
    out = net(images[sl])
    losses = criterion(out, out["anchors"], targets[sl])
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    if dist.is_main:
        torch.save({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, out_path)
    cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
