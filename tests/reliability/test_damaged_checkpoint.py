"""Damaged checkpoints: ``--resume auto`` warns, skips them and resumes from the newest valid one."""
import shutil

import pytest
import torch

from iadet.checkpoint import load_checkpoint_file
from iadet.engine.checkpointing import find_resume_checkpoint, save_checkpoint
from tests.reliability.harness import MAX_ITERS, assert_same_state, run_train, train_records

DAMAGES = {
    "empty": lambda data: b"",
    "one byte": lambda data: data[:1],
    "truncated at 10%": lambda data: data[: len(data) // 10],
    "truncated at 99%": lambda data: data[: len(data) * 99 // 100],
    "garbage": lambda data: bytes(range(256)) * 64,
    "zip header then garbage": lambda data: data[:64] + b"\xff" * 4096,
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_damaged_newest_checkpoint_is_skipped_with_a_warning(tmp_path, damage):
    save_checkpoint({"iteration": 4}, tmp_path / "iter_4.pth")
    save_checkpoint({"iteration": 6, "weights": torch.arange(10_000.0)}, tmp_path / "iter_6.pth")
    path = tmp_path / "iter_6.pth"
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    with pytest.warns(UserWarning, match=r"skipping damaged checkpoint .*iter_6\.pth"):
        assert find_resume_checkpoint(tmp_path) == tmp_path / "iter_4.pth"


def test_loadable_file_without_an_iteration_is_skipped(tmp_path):
    save_checkpoint({"iteration": 4}, tmp_path / "iter_4.pth")
    torch.save({"model": {}}, tmp_path / "latest.pth")  # e.g. a converted weights file put there
    with pytest.warns(UserWarning, match=r"latest\.pth"):
        assert find_resume_checkpoint(tmp_path) == tmp_path / "iter_4.pth"


def test_resume_skips_damaged_checkpoints_and_still_reaches_the_same_weights(tmp_path, opts, reference):
    """The checkpoints of a run stopped at iteration 6, with latest.pth overwritten by garbage and
    iter_6.pth truncated: the run goes on from epoch_1.pth (iteration 5) to the reference state."""
    work = tmp_path / "run"
    work.mkdir()
    for name in ("iter_2.pth", "iter_4.pth", "epoch_1.pth", "iter_6.pth"):
        shutil.copy(reference.work / name, work / name)
    data = (work / "iter_6.pth").read_bytes()
    (work / "iter_6.pth").write_bytes(data[: len(data) // 2])
    (work / "latest.pth").write_bytes(b"\x00garbage" * 1000)
    done = run_train(work, opts, resume_auto=True)
    assert f"continuing from {work / 'epoch_1.pth'}" in done.stdout
    for name in ("latest.pth", "iter_6.pth"):
        assert f"skipping damaged checkpoint {work / name}" in done.stderr
    assert "Traceback" not in done.stderr
    assert [r["iteration"] for r in train_records(work)] == list(range(6, MAX_ITERS + 1))
    assert_same_state(reference.state(), load_checkpoint_file(work / "latest.pth"))
