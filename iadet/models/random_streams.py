"""Optional parts of the detector draw their random initial weights from their own stream.

Paired experiments (issue 13) compare variants that differ by an optional part (the IoU
branch, later branches): with one seed, every parameter the variants share must start equal.
A part built inside :func:`own_random_stream` neither reads nor advances the global CPU RNG:
``torch.manual_seed(s); build_detector(cfg)`` gives bit-identical shared tensors whether or
not the part exists, and the data order that follows is unchanged. The part's own stream is
seeded by the global seed and the part's name, so it still changes with the seed and two
parts never share a stream.
"""
import zlib
from contextlib import contextmanager

import torch


def part_seed(name: str) -> int:
    """The seed of optional part ``name``'s stream: ``torch.initial_seed()`` and the name."""
    return (torch.initial_seed() * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63)


@contextmanager
def own_random_stream(name: str):
    """Run the block (building and initialising one optional part) on the part's own CPU
    random stream; the global stream is restored afterwards, as if the block never ran."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(part_seed(name))
        yield
