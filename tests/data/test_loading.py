"""Tests for iadet/data/loading.py: collate padding, sharded and grouped sampling, the loader."""
import random

import numpy as np
import pytest
import torch

from iadet.data.loading import (GroupedBatchSampler, ShardedSampler, aspect_ratio_group_ids, build_dataloader,
                                collate_detection)


def pair(height, width, value=1.0, image_id=0):
    target = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64), "image_id": image_id,
              "size": (height, width), "scale_factor": (2.0, 3.0)}
    return torch.full((3, height, width), value), target


def test_collate_pads_to_multiple_of_32_bottom_right_with_zeros():
    batch = collate_detection([pair(50, 70, 1.0), pair(65, 33, 2.0)])
    images = batch["images"]
    assert images.shape == (2, 3, 96, 96) and images.dtype == torch.float32
    assert batch["image_sizes"] == [(50, 70), (65, 33)]
    assert batch["scale_factors"] == [(2.0, 3.0), (2.0, 3.0)]
    assert (images[0, :, :50, :70] == 1).all() and images[0, :, 50:].abs().sum() == 0
    assert images[0, :, :, 70:].abs().sum() == 0
    assert (images[1, :, :65, :33] == 2).all() and images[1, :, :, 33:].abs().sum() == 0
    assert [t["image_id"] for t in batch["targets"]] == [0, 0]
    assert collate_detection([pair(64, 32)])["images"].shape == (1, 3, 64, 32)
    assert collate_detection([pair(50, 70)], size_divisor=1)["images"].shape == (1, 3, 50, 70)
    with pytest.raises(ValueError, match="empty"):
        collate_detection([])


@pytest.mark.parametrize("n", [0, 1, 2, 7, 10, 13])
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_are_disjoint_and_cover_the_dataset(n, world):
    shards = [list(ShardedSampler(n, world, rank, shuffle=True, seed=5)) for rank in range(world)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(n))  # disjoint and complete: no index twice, none missing
    assert [len(s) for s in shards] == [len(ShardedSampler(n, world, r)) for r in range(world)]
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.parametrize("n", [7, 13])
def test_drop_last_gives_equal_disjoint_shards(n):
    shards = [list(ShardedSampler(n, 2, rank, seed=1, drop_last=True)) for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == n // 2
    assert not set(shards[0]) & set(shards[1])


def test_epochs_reshuffle_and_same_seed_epoch_same_order():
    a = ShardedSampler(50, 1, 0, seed=0)
    epoch0 = list(a)
    assert list(a) == epoch0  # iterating again without set_epoch repeats the epoch
    a.set_epoch(1)
    epoch1 = list(a)
    assert epoch1 != epoch0 and sorted(epoch1) == sorted(epoch0)
    b = ShardedSampler(50, 1, 0, seed=0)
    b.set_epoch(1)
    assert list(b) == epoch1
    assert list(ShardedSampler(50, 1, 0, seed=1)) != epoch0
    assert list(ShardedSampler(5, 1, 0, shuffle=False)) == [0, 1, 2, 3, 4]


def test_state_dict_resumes_mid_epoch():
    a = ShardedSampler(23, 2, 1, seed=7)
    a.set_epoch(3)
    full = list(a)
    a.set_epoch(4)
    a.set_epoch(3)
    it = iter(a)
    first = [next(it) for _ in range(4)]
    state = a.state_dict()
    assert state["epoch"] == 3 and state["position"] == 4
    b = ShardedSampler(23, 2, 1, seed=7)
    b.load_state_dict(state)
    b.set_epoch(3)  # a trainer calls set_epoch for the resumed epoch: the position is kept
    rest = list(b)
    assert first + rest == full
    b.set_epoch(4)  # the next epoch starts from its beginning
    assert len(list(b)) == len(full)
    assert a.state_dict(consumed=2)["position"] == 2


def test_aspect_ratio_groups():
    assert aspect_ratio_group_ids([1.5, 1.0, 0.7]).tolist() == [0, 0, 1]


@pytest.mark.parametrize("world", [1, 2])
def test_grouped_batches_are_single_group_disjoint_and_complete(world):
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 2, size=37)
    samplers = [GroupedBatchSampler(groups, batch_size=4, num_replicas=world, rank=r, seed=3) for r in range(world)]
    batches = [b for s in samplers for b in s]
    assert all(len(set(groups[b])) == 1 for b in batches)
    assert all(1 <= len(b) <= 4 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(37))
    assert sum(len(b) < 4 for b in batches) <= 2  # at most one short batch per group
    assert [len(s) for s in samplers] == [len(list(s)) for s in samplers]


def test_grouped_batches_deterministic_per_seed_and_epoch_and_resumable():
    groups = [0, 1] * 20
    a, b = GroupedBatchSampler(groups, 3, seed=1), GroupedBatchSampler(groups, 3, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    epoch1 = list(a)
    assert epoch1 != list(b)
    it = iter(a)
    head = [next(it) for _ in range(2)]
    c = GroupedBatchSampler(groups, 3, seed=1)
    c.load_state_dict(a.state_dict())
    c.set_epoch(1)
    assert head + list(c) == epoch1


def test_grouped_drop_last_equal_batch_counts():
    groups = [0] * 9 + [1] * 4
    counts = [len(list(GroupedBatchSampler(groups, 2, num_replicas=2, rank=r, drop_last=True))) for r in range(2)]
    assert counts[0] == counts[1] == 3  # 5 + 2 batches -> 3 per rank


class RandomValueDataset(torch.utils.data.Dataset):
    """Tiny dataset: landscape and portrait images whose pixel values record the RNG draws."""

    def __init__(self, n=10):
        self.n = n

    def __len__(self):
        return self.n

    def aspect_ratios(self):
        return np.array([2.0 if i % 3 else 0.5 for i in range(self.n)])

    def __getitem__(self, i):
        h, w = (8, 16) if i % 3 else (16, 8)
        draws = torch.tensor([random.random(), np.random.rand(), torch.rand(()).item()])
        image = draws.view(3, 1, 1).expand(3, h, w).clone()
        target = {"image_id": i, "size": (h, w), "scale_factor": (1.0, 1.0)}
        return image, target


def run_loader(num_workers, seed=0):
    loader = build_dataloader(RandomValueDataset(), batch_size=2, num_workers=num_workers, shuffle=True, seed=seed)
    out = []
    for batch in loader:
        ids = [t["image_id"] for t in batch["targets"]]
        out.append((ids, batch["images"][:, :, 0, 0]))
    return out


def test_build_dataloader_batches_groups_and_is_reproducible():
    single = run_loader(0)
    ids = [i for batch_ids, _ in single for i in batch_ids]
    assert sorted(ids) == list(range(10))
    for batch_ids, _ in single:
        assert len({i % 3 == 0 for i in batch_ids}) == 1  # one orientation per batch
    workers_a, workers_b = run_loader(2), run_loader(2)
    assert [x for x, _ in workers_a] == [x for x, _ in single]  # same order with or without workers
    for (_, va), (_, vb) in zip(workers_a, workers_b):
        assert torch.equal(va, vb)  # python/numpy/torch seeded per worker from the base seed
    draws = torch.cat([v for _, v in workers_a])
    assert len(set(draws[:, 1].tolist())) == len(draws)  # numpy draws differ between workers/images


def test_build_dataloader_distributed_and_eval():
    dataset = RandomValueDataset(11)
    seen = []
    for rank in range(2):
        loader = build_dataloader(dataset, 2, shuffle=False, distributed=(rank, 2))
        seen += [t["image_id"] for batch in loader for t in batch["targets"]]
    assert sorted(seen) == list(range(11))  # evaluation: every image exactly once
    with pytest.raises(TypeError, match="aspect_ratios"):
        build_dataloader(torch.utils.data.TensorDataset(torch.zeros(3)), 2)


class FlipRecorder(torch.utils.data.Dataset):
    """Returns whether a seeded RandomHorizontalFlip flipped item i."""

    def __init__(self, n=16):
        from iadet.data.transforms import RandomHorizontalFlip
        self.n, self.flip = n, RandomHorizontalFlip(0.5, seed=0)

    def __len__(self):
        return self.n

    def aspect_ratios(self):
        return np.ones(self.n)

    def __getitem__(self, i):
        _, target = self.flip(torch.zeros((3, 2, 2)), {"boxes": torch.zeros((0, 4)), "flipped": False})
        return torch.zeros((3, 2, 2)), {"image_id": i, "flipped": target["flipped"]}


def test_seeded_flip_differs_between_workers_and_repeats_between_runs():
    def flips():
        loader = build_dataloader(FlipRecorder(), batch_size=1, num_workers=2, shuffle=False, seed=0)
        return [batch["targets"][0]["flipped"] for batch in loader]
    a = flips()
    assert a == flips()
    assert a[0::2] != a[1::2]  # worker 0 serves the even batches, worker 1 the odd ones


class _Failing(torch.utils.data.Dataset):
    """Raises (chained, as the datasets do) a ValueError whose message has two lines."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        try:
            raise OSError("broken data stream")
        except OSError as exc:
            raise ValueError(f"image id {index}: /data/x.png: cannot decode it\nfix the file") from exc


@pytest.mark.parametrize("num_workers", [0, 1])
def test_error_message_of_a_loader_worker_is_the_original_one(num_workers):
    from iadet.data.loading import error_message

    loader = torch.utils.data.DataLoader(_Failing(), num_workers=num_workers)
    with pytest.raises(ValueError) as err:
        next(iter(loader))
    if num_workers:
        assert "Original Traceback" in str(err.value)  # what the DataLoader re-raises
    message = error_message(err.value)
    assert message == ("image id 0: /data/x.png: cannot decode it fix the file" if num_workers else
                       "image id 0: /data/x.png: cannot decode it\nfix the file")
    assert error_message(ValueError("plain: message")) == "plain: message"
