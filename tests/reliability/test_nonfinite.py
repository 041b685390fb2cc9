"""A batch whose loss is NaN or infinite, injected at an exact step of a real training process.

``train.nonfinite: stop`` (default): exit code 3, one line naming the loss term, iteration, lr and
image ids; the checkpoints before it stay valid and equal to an uninterrupted run's.
``train.nonfinite: skip``: the batch changes nothing, is counted and logged, and the count is
part of the resume state.
"""
import re
import shutil

from iadet.checkpoint import load_checkpoint_file
from tests.reliability.harness import (MAX_ITERS, assert_one_line_error, assert_same_state, check_run_folder,
                                       run_train, state_differences, train_records)


def poisoned_images(stdout: str) -> str:
    found = re.search(r"inject: .* on images (\[[\d, ]+\])", stdout)
    assert found, stdout[-2000:]
    return found.group(1)


def test_nonfinite_loss_stops_naming_the_culprit_and_keeps_the_last_good_checkpoint(tmp_path, opts, reference):
    work = tmp_path / "run"
    done = run_train(work, opts, expect_rc=3, inject=["--nan-at", "6", "--nan-term", "loss_reg"])
    assert_one_line_error(done.stderr, "non-finite loss", "loss_reg = nan", "at iteration 6",
                          f"(lr {reference.lr(7):.3g})", f"on images {poisoned_images(done.stdout)}",
                          f"the last good checkpoint is in {work}")
    assert [r["iteration"] for r in train_records(work)] == list(range(1, 7))  # nothing logged for the bad step
    assert check_run_folder(work).iteration == 6  # every file loads; the newest is iteration 6
    assert_same_state(reference.state("iter_6.pth"), load_checkpoint_file(work / "latest.pth"))  # intact


def test_nonfinite_batch_is_skipped_counted_logged_and_resumed(tmp_path, opts):
    work = tmp_path / "run"
    opts = opts + ["train.nonfinite=skip", "train.checkpoint_interval=1"]
    done = run_train(work, opts, inject=["--nan-at", "6", "--nan-term", "loss_cls", "--nan-value", "inf"])
    assert re.search(rf"warning: skipped batch 1: non-finite loss_cls = inf at iteration 6 \(lr [\d.e-]+\) "
                     rf"on images {re.escape(poisoned_images(done.stdout))}", done.stderr), done.stderr[-2000:]
    records = train_records(work)
    assert [r["iteration"] for r in records] == list(range(1, MAX_ITERS + 1))
    assert [r["skipped_batches"] for r in records] == [0] * 6 + [1] * (MAX_ITERS - 6)
    assert "loss" not in records[6] and all("loss" in r for r in records[:6] + records[7:])

    before, after = load_checkpoint_file(work / "iter_6.pth"), load_checkpoint_file(work / "iter_7.pth")
    assert not state_differences(before["model"], after["model"])  # the batch changed nothing
    assert not state_differences(before["optimizer"], after["optimizer"])
    assert (before["skipped_batches"], after["skipped_batches"]) == (0, 1)
    final = load_checkpoint_file(work / "latest.pth")
    assert final["iteration"] == MAX_ITERS and final["skipped_batches"] == 1

    resumed = tmp_path / "resumed"  # the count is part of the resume state
    resumed.mkdir()
    shutil.copy(work / "iter_14.pth", resumed / "iter_14.pth")
    run_train(resumed, opts, resume_auto=True)
    assert_same_state(final, load_checkpoint_file(resumed / "latest.pth"))
