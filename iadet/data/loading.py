"""From a dataset to batches: collate with padding, sharded and aspect-ratio-grouped sampling.

* :func:`collate_detection` pads a list of (image, target) pairs into one batch tensor.
* :class:`ShardedSampler` splits the indices of an epoch among distributed ranks
  (``DistributedSampler``-like) and can resume in the middle of an epoch.
* :class:`GroupedBatchSampler` batches images of the same orientation (width >= height vs
  height > width) together, so little of a padded batch is padding; it shards *batches*
  among ranks with a :class:`ShardedSampler`.
* :func:`build_dataloader` puts them together.
* :func:`error_message` turns an error re-raised from a loader worker back into its own
  one-line message (for the ``error:`` line of the command-line tools).

Every order is a pure function of ``(seed, epoch)``: the same seed and epoch give the same
batches on any machine and with any number of workers.
"""
import functools
import math
import random
import re
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler


def aspect_ratio_group_ids(aspect_ratios: Sequence[float]) -> np.ndarray:
    """(N,) int64 group of each image: 0 for width >= height (landscape, square), 1 otherwise."""
    return (np.asarray(aspect_ratios, dtype=np.float64) < 1.0).astype(np.int64)


def collate_detection(batch: Sequence[Tuple[Tensor, Dict]], size_divisor: int = 32) -> Dict[str, object]:
    """Stack (image, target) pairs into a zero-padded batch.

    Args:
        batch: N pairs of a (3, h_i, w_i) image (normally normalised float32) and its target.
        size_divisor: the padded height and width are multiples of this (32; 1 = no rounding).

    Returns a dict:
        images: (N, 3, Hp, Wp) float32; image i occupies ``[:, :h_i, :w_i]``, the rest is 0
            (zero after normalisation = the mean colour), padding at the bottom and right.
        image_sizes: list of (h_i, w_i), the valid region of each image.
        scale_factors: list of (sy, sx) = resized / original size, from the targets.
        targets: list of the N target dicts.
    """
    if len(batch) == 0:
        raise ValueError("collate_detection got an empty batch")
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    for image, target in zip(images, targets):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected (3, H, W) images, got {tuple(image.shape)} for image id "
                             f"{target.get('image_id')}")
    image_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    d = max(int(size_divisor), 1)
    pad_h = int(math.ceil(max(h for h, _ in image_sizes) / d) * d)
    pad_w = int(math.ceil(max(w for _, w in image_sizes) / d) * d)
    padded = torch.empty((len(images), 3, pad_h, pad_w), dtype=torch.float32)
    for i, (image, (h, w)) in enumerate(zip(images, image_sizes)):
        padded[i, :, :h, :w].copy_(image)
        padded[i, :, h:, :].zero_()  # zero only the padding: one pass over memory instead of two
        padded[i, :, :h, w:].zero_()
    scale_factors = [tuple(t.get("scale_factor", (1.0, 1.0))) for t in targets]
    return {"images": padded, "image_sizes": image_sizes, "scale_factors": scale_factors, "targets": targets}


class ShardedSampler(Sampler[int]):
    """Indices ``0..dataset_len-1`` split among ``num_replicas`` ranks, reshuffled every epoch.

    Args:
        dataset_len: number of items to sample from.
        num_replicas: number of ranks (world size); rank ``r`` takes positions
            ``r, r + W, r + 2W, ...`` of the epoch's order.
        rank: this process's rank, ``0 <= rank < num_replicas``.
        shuffle: a new random order each epoch (``numpy.random.default_rng([seed, epoch])``);
            False keeps ``0..dataset_len-1``.
        seed: the base seed; it must be the same on every rank.
        drop_last: False (default): the ranks' shards are disjoint and together cover the
            dataset exactly, so shard lengths differ by one when ``dataset_len`` is not a
            multiple of ``num_replicas`` (no duplicates, unlike torch's
            ``DistributedSampler``, which pads by repeating indices). True: every rank gets
            ``dataset_len // num_replicas`` indices; the order's last
            ``dataset_len % num_replicas`` are left out this epoch (equal lengths, as DDP
            training needs).

    Call :meth:`set_epoch` before each epoch. ``state_dict()`` / ``load_state_dict()`` hold
    the epoch and the position inside it, so that a resumed run continues mid-epoch.
    """

    def __init__(self, dataset_len: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False):
        if dataset_len < 0:
            raise ValueError(f"dataset_len must be >= 0, got {dataset_len}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got rank {rank} of {num_replicas}")
        self.dataset_len = dataset_len
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0

    def epoch_order(self) -> np.ndarray:
        """(dataset_len,) int64, the global order of this epoch (identical on every rank)."""
        if not self.shuffle:
            return np.arange(self.dataset_len, dtype=np.int64)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.dataset_len)

    def indices(self) -> List[int]:
        """This rank's indices for the current epoch, in order."""
        order = self.epoch_order()
        if self.drop_last:
            order = order[:len(order) - len(order) % self.num_replicas]
        return order[self.rank::self.num_replicas].tolist()

    def __len__(self) -> int:
        n, w = self.dataset_len, self.num_replicas
        return n // w if self.drop_last else (n - self.rank + w - 1) // w

    def __iter__(self) -> Iterator[int]:
        indices = self.indices()
        start = self.position if self.position < len(indices) else 0
        for k in range(start, len(indices)):
            self.position = k + 1
            yield indices[k]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order; a new epoch starts at its beginning."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def state_dict(self, consumed: Optional[int] = None) -> Dict[str, int]:
        """``{"epoch", "position", ...}``; ``position`` = items of this epoch already handed out.

        A DataLoader with workers draws ahead of the training loop (prefetching), so a trainer
        should pass ``consumed``, the number of items it has actually used this epoch.
        """
        return {"epoch": self.epoch, "position": self.position if consumed is None else int(consumed),
                "seed": self.seed, "num_replicas": self.num_replicas, "dataset_len": self.dataset_len}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Continue from ``state``: the next iteration resumes at ``state["position"]``.

        If the seed, world size or dataset length changed, the order is different, so the
        saved epoch restarts from its beginning (with a warning).
        """
        self.epoch = int(state["epoch"])
        self.position = int(state.get("position", 0))
        changed = [k for k in ("seed", "num_replicas", "dataset_len") if k in state and state[k] != getattr(self, k)]
        if changed and self.position:
            warnings.warn(f"ShardedSampler: {', '.join(changed)} changed since the state was saved; "
                          f"restarting epoch {self.epoch} from its beginning", stacklevel=2)
            self.position = 0


class GroupedBatchSampler(Sampler[List[int]]):
    """Batches whose images all come from one group (e.g. one orientation), sharded by rank.

    Each epoch, with ``numpy.random.default_rng([seed, epoch, 1])``, the indices of every
    group are shuffled and cut into batches of ``batch_size`` (the last batch of a group may
    be smaller: at most one short batch per group and epoch); the list of batches is then
    shuffled and split among ranks by a :class:`ShardedSampler` over batches. So the ranks'
    batches are disjoint and together cover the dataset, and everything is a function of
    ``(seed, epoch)``.

    Args:
        group_ids: (N,) group of every dataset index (:func:`aspect_ratio_group_ids`).
        batch_size: images per batch on this rank.
        num_replicas, rank, shuffle, seed: as in :class:`ShardedSampler`.
        drop_last: as in :class:`ShardedSampler` but for batches: True leaves out up to
            ``num_replicas - 1`` batches per epoch so that every rank yields the same number
            of batches (DDP training); short batches are kept either way.

    ``set_epoch``, ``state_dict`` and ``load_state_dict`` work as in :class:`ShardedSampler`,
    with ``position`` counted in batches.
    """

    def __init__(self, group_ids: Sequence[int], batch_size: int, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.group_ids = np.asarray(group_ids, dtype=np.int64).reshape(-1)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.groups = np.unique(self.group_ids)
        num_batches = sum(-(-int((self.group_ids == g).sum()) // batch_size) for g in self.groups)
        self.batch_order = ShardedSampler(num_batches, num_replicas, rank, shuffle, seed, drop_last)

    def epoch_batches(self) -> List[List[int]]:
        """All batches of the current epoch (every rank's), before shuffling and sharding."""
        rng = np.random.default_rng([self.seed, self.batch_order.epoch, 1])
        batches = []
        for g in self.groups:
            members = np.flatnonzero(self.group_ids == g)
            if self.shuffle:
                members = rng.permutation(members)
            batches += [members[k:k + self.batch_size].tolist() for k in range(0, len(members), self.batch_size)]
        return batches

    def __iter__(self) -> Iterator[List[int]]:
        batches = self.epoch_batches()
        for b in self.batch_order:
            yield batches[b]

    def __len__(self) -> int:
        return len(self.batch_order)

    @property
    def epoch(self) -> int:
        return self.batch_order.epoch

    def set_epoch(self, epoch: int) -> None:
        self.batch_order.set_epoch(epoch)

    def state_dict(self, consumed: Optional[int] = None) -> Dict[str, int]:
        """See :meth:`ShardedSampler.state_dict`; ``consumed`` counts batches."""
        return self.batch_order.state_dict(consumed)

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.batch_order.load_state_dict(state)


def worker_init_fn(worker_id: int) -> None:
    """Seed ``random``, ``numpy`` and ``torch`` in a DataLoader worker.

    The seed is the worker's ``get_worker_info().seed`` = base seed + worker id, where the
    DataLoader draws the base seed for every epoch from its ``generator`` (seeded with the
    run's seed by :func:`build_dataloader`): deterministic, and different per worker and
    per epoch.
    """
    info = torch.utils.data.get_worker_info()
    seed = info.seed if info is not None else torch.initial_seed()
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)


def build_dataloader(dataset, batch_size: int, num_workers: int = 0, shuffle: bool = True, seed: int = 0,
                     aspect_ratio_grouping: bool = True, distributed: Optional[Tuple[int, int]] = None,
                     drop_last: Optional[bool] = None, size_divisor: int = 32,
                     pin_memory: bool = False) -> DataLoader:
    """A DataLoader of padded detection batches (see :func:`collate_detection`).

    Args:
        dataset: a map-style dataset of (image, target) pairs; with ``aspect_ratio_grouping``
            it must have ``aspect_ratios()`` (:class:`~iadet.data.coco.CocoDetection`,
            :class:`~iadet.data.voc.VOCDetection`).
        batch_size: images per batch on this rank.
        num_workers: loader processes (0 loads in the main process).
        shuffle: new order every epoch (training); False for evaluation.
        seed: base seed of the order and of the workers' RNGs; the same on every rank.
        aspect_ratio_grouping: batch landscape and portrait images separately; False puts
            all images in one group.
        distributed: ``(rank, world_size)``; None for a single process.
        drop_last: equal batch counts on every rank (see :class:`GroupedBatchSampler`);
            None = True when shuffling with several ranks (DDP training), else False
            (evaluation: every image exactly once).
        size_divisor: pad batches to a multiple of this.
        pin_memory: passed to the DataLoader.

    The batch sampler is ``loader.batch_sampler``: call ``loader.batch_sampler.set_epoch(e)``
    before each epoch and save/restore its ``state_dict`` to resume mid-epoch.
    """
    rank, world = distributed if distributed is not None else (0, 1)
    if drop_last is None:
        drop_last = shuffle and world > 1
    if aspect_ratio_grouping:
        if not hasattr(dataset, "aspect_ratios"):
            raise TypeError(f"aspect_ratio_grouping needs dataset.aspect_ratios(), which "
                            f"{type(dataset).__name__} lacks; pass aspect_ratio_grouping=False")
        group_ids = aspect_ratio_group_ids(dataset.aspect_ratios())
    else:
        group_ids = np.zeros(len(dataset), dtype=np.int64)
    batch_sampler = GroupedBatchSampler(group_ids, batch_size, num_replicas=world, rank=rank, shuffle=shuffle,
                                        seed=seed, drop_last=drop_last)
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers,
                      collate_fn=functools.partial(collate_detection, size_divisor=size_divisor),
                      worker_init_fn=worker_init_fn if num_workers > 0 else None,
                      generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory)


# The last line of a formatted traceback: "ValueError: message" (or "package.module.Error: ...").
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*(?P<name>[A-Za-z_]\w*): ")


def error_message(exc: BaseException) -> str:
    """``str(exc)``, except for an error raised in a DataLoader worker process: the DataLoader
    re-raises it (same type) with the worker's whole traceback as its message ("Caught
    ValueError in DataLoader worker process 0.\\nOriginal Traceback ..."); this returns the
    original error's message, without its "ValueError: " prefix."""
    text = str(exc)
    head, sep, trace = text.partition("\nOriginal Traceback")
    if not sep:
        return text
    lines = trace.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):  # the exception line; a multi-line message follows it
        match = _EXCEPTION_LINE.match(lines[i])
        if match and (match["name"] == type(exc).__name__ or match["name"].endswith(("Error", "Exception"))):
            return " ".join(line.strip() for line in [lines[i][match.end():], *lines[i + 1:]] if line.strip())
    return lines[-1].strip() if lines else head
