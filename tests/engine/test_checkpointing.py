"""Resume state: RNG round trip, newest valid checkpoint, damaged files skipped."""
import random

import numpy as np
import pytest
import torch

from iadet.checkpoint import load_checkpoint_file
from iadet.engine.checkpointing import find_resume_checkpoint, rng_state, save_checkpoint, set_rng_state


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    save_checkpoint({"rng": rng_state(), "iteration": 0}, tmp_path / "a.pth")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    set_rng_state(load_checkpoint_file(tmp_path / "a.pth")["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_newest_valid_checkpoint_wins_and_damaged_ones_are_skipped(tmp_path):
    assert find_resume_checkpoint(tmp_path) is None
    save_checkpoint({"iteration": 10}, tmp_path / "epoch_1.pth")
    save_checkpoint({"iteration": 30}, tmp_path / "iter_30.pth")
    save_checkpoint({"iteration": 20}, tmp_path / "latest.pth")
    assert find_resume_checkpoint(tmp_path) == tmp_path / "iter_30.pth"
    data = (tmp_path / "iter_30.pth").read_bytes()
    (tmp_path / "iter_30.pth").write_bytes(data[: len(data) // 2])  # a half-written file
    with pytest.warns(UserWarning, match="iter_30.pth"):
        assert find_resume_checkpoint(tmp_path) == tmp_path / "latest.pth"
    assert not list(tmp_path.glob("*.tmp"))
