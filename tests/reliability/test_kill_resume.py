"""Kill a real training process (SIGKILL, SIGTERM, Ctrl-C) and resume it with ``--resume auto``.

Whatever the moment of a SIGKILL, every checkpoint left loads with weights_only=True, at most
``checkpoint_interval`` iterations are lost, and the resumed run ends in the state of an
uninterrupted one, bit for bit (model, optimiser, AMP scaler, schedule, sampler, torch, Python and
NumPy RNGs).
"""
import json
import random
import re
import shutil
import signal
import time

import pytest

from iadet.checkpoint import load_checkpoint_file
from tests.reliability.harness import (CHECKPOINT_INTERVAL, ITERS_PER_EPOCH, MAX_ITERS, QUICKSTART,
                                       assert_same_state, check_run_folder, metrics_size, run_train, start_train,
                                       state_differences, train_records, wait_for)

STARTUP_WINDOW_S = 3.0  # a startup kill lands at a random moment of this window (or at the first iteration)

# Was a bug (see test_resume_from_the_last_iteration_of_an_epoch_is_exact, now fixed): a
# checkpoint taken at the last iteration of an epoch made the resumed run replay that epoch.
# While True, a random trial that resumes from such a checkpoint is run and checked but its
# final state is not compared; False compares every trial.
KNOWN_BUG_EPOCH_END_RESUME = False


def temporary_files(work) -> set:
    found = set()
    for path in work.glob("*.pth.tmp"):
        try:
            found.add((path.name, path.stat().st_mtime_ns))
        except FileNotFoundError:  # renamed in between
            pass
    return found


def pending_checkpoint_writes(work, stale: set):
    """Checkpoints being written now: ``*.pth.tmp`` files other than those left by earlier kills."""
    return sorted(name for name, mtime in temporary_files(work) - stale)


def kill_once(work, opts, mode: str, rng: random.Random, target=None) -> dict:
    """Start ``--resume auto``, SIGKILL it at a point chosen by ``mode``, check the run folder.

    - ``startup``: at a random moment of its first seconds, at the latest when it logs its first iteration;
    - ``iteration``: a random delay (0-0.3 s) after it logs iteration ``target``;
    - ``checkpoint``: while it writes a checkpoint (a ``*.pth.tmp`` exists), once it logged ``target``;
    - ``end``: a random delay (0-0.6 s) after its last iteration (final save, evaluation, exit).

    ``target`` defaults to a random iteration after its checkpoint. Returns where the kill landed."""
    start_point = check_run_folder(work)
    offset = metrics_size(work)
    new = lambda: [r["iteration"] for r in train_records(work, offset)]  # noqa: E731
    if target is None:  # an iteration still to come
        target = rng.randint(min(start_point.iteration + 1, MAX_ITERS), MAX_ITERS)
    stale = temporary_files(work)
    proc = start_train(work, opts, resume_auto=True)
    start = time.monotonic()
    if mode == "startup":
        delay = rng.uniform(0, STARTUP_WINDOW_S)
        alive = wait_for(lambda: time.monotonic() - start > delay or bool(new()), proc)
    elif mode == "iteration":
        alive = wait_for(lambda: any(i >= target for i in new()), proc)
        time.sleep(rng.uniform(0, 0.3))  # the moment of the kill, not a synchronisation
    elif mode == "checkpoint":
        alive = wait_for(lambda: any(i >= target for i in new()) and bool(pending_checkpoint_writes(work, stale)),
                         proc)
    elif mode == "end":
        alive = wait_for(lambda: MAX_ITERS in new(), proc)
        time.sleep(rng.uniform(0, 0.6))
    else:
        raise ValueError(mode)
    writing = pending_checkpoint_writes(work, stale)
    proc.kill()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (-signal.SIGKILL, 0), f"exit code {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
    iterations = new()
    first = start_point.iteration + 1  # continues from its checkpoint, never from 1
    assert iterations == list(range(first, first + len(iterations))), (start_point, iterations)
    after = check_run_folder(work)
    logged = max((r["iteration"] for r in train_records(work)), default=0)
    assert logged - after.iteration <= CHECKPOINT_INTERVAL, (logged, after)  # work lost
    return {"mode": mode, "target": target, "killed": alive and proc.returncode == -signal.SIGKILL,
            "last_logged": iterations[-1] if iterations else None, "writing": writing,
            "at": iterations[-1] if iterations else start_point.iteration,  # iterations done when killed
            "resumes_from": after.iteration, "epoch_end": after.position == ITERS_PER_EPOCH}


def finish_and_compare(work, opts, reference, resume_from: int, compare: bool = True) -> None:
    """Resume to the end: iterations continue from the checkpoint with the reference's lr, and
    the final state equals the uninterrupted run's."""
    offset = metrics_size(work)
    done = run_train(work, opts, resume_auto=True)
    if resume_from:
        assert f"at iteration {resume_from} " in done.stdout, done.stdout[-2000:]
    else:
        assert "starting fresh" in done.stdout, done.stdout[-2000:]
    records = train_records(work, offset)
    assert [r["iteration"] for r in records] == list(range(resume_from + 1, MAX_ITERS + 1))
    assert all(r["lr"] == reference.lr(r["iteration"]) for r in records)  # the schedule did not restart
    if compare:
        assert_same_state(reference.state(), load_checkpoint_file(work / "latest.pth"))


def kill_resume_trial(work, opts, reference, kills, rng) -> list:
    """SIGKILL and resume for each ``(mode, target)`` of ``kills``, then resume to the end."""
    landings = []
    for mode, target in kills:
        landings.append(kill_once(work, opts, mode, rng, target))
        if not landings[-1]["killed"]:  # it finished first: nothing left to kill
            break
    compare = not (KNOWN_BUG_EPOCH_END_RESUME and any(l["epoch_end"] for l in landings))
    finish_and_compare(work, opts, reference, landings[-1]["resumes_from"], compare)
    landings[-1]["compared"] = compare
    return landings


def test_sigkill_at_startup_and_during_a_checkpoint_write_then_resume_is_exact(tmp_path, opts, reference):
    landings = kill_resume_trial(tmp_path / "run", opts, reference, [("startup", None), ("checkpoint", 7)],
                                 random.Random(7))
    assert [l["killed"] for l in landings] == [True, True] and landings[-1]["compared"]
    assert landings[0]["resumes_from"] == 0  # killed before its first checkpoint
    assert landings[1]["writing"]  # killed with a half-written *.pth.tmp, which resume ignored


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_exact(tmp_path, opts, reference):
    """12 seeded trials of 1 to 3 SIGKILLs each; every mode is the first kill of 3 trials."""
    rng = random.Random(20261125)
    modes = ["startup", "iteration", "checkpoint", "end"]
    first_targets = rng.sample(range(1, MAX_ITERS), 12)  # spread over the run
    landings = []
    for trial in range(12):
        kills = [(modes[trial % len(modes)], first_targets[trial])]
        kills += [(mode, None) for mode in rng.choices(modes, weights=[1, 3, 2, 1], k=rng.randint(0, 2))]
        work = tmp_path / f"trial{trial}"
        found = kill_resume_trial(work, opts, reference, kills, rng)
        for landing in found:
            print(f"trial {trial}: {landing}")
        landings += found
        shutil.rmtree(work)
    killed = [l for l in landings if l["killed"]]
    compared = sum(l.get("compared", False) for l in landings)
    print(f"{len(killed)} kills in 12 trials ({compared} compared bit for bit), after iterations "
          f"{sorted(l['at'] for l in killed)}")
    assert len(killed) >= 12
    # every trial compared bit for bit (with KNOWN_BUG_EPOCH_END_RESUME: all but the ~1 in 12 resuming at an epoch end)
    assert compared == 12 or (KNOWN_BUG_EPOCH_END_RESUME and compared >= 8)
    assert any(l["resumes_from"] == 0 for l in killed)  # before the first checkpoint
    assert any(l["writing"] for l in killed)  # during a checkpoint write
    assert any(l["last_logged"] == MAX_ITERS for l in killed)  # after the last iteration


def interrupt_once(work, opts, signum, after: int) -> int:
    """``--resume auto``, then ``signum`` once iteration ``after`` is logged: exit code 128 +
    signal, one message, latest.pth at the last finished iteration. Returns that iteration."""
    offset = metrics_size(work)
    proc = start_train(work, opts, resume_auto=True)
    assert wait_for(lambda: any(r["iteration"] >= after for r in train_records(work, offset)), proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err
    stopped = re.search(rf"interrupted: {signum.name} at iteration (\d+): saved .*latest\.pth; continue with "
                        r"--resume auto", err)
    assert stopped, err[-2000:]
    iteration = int(stopped.group(1))
    assert train_records(work)[-1]["iteration"] == iteration  # no finished iteration lost
    assert load_checkpoint_file(work / "latest.pth")["iteration"] == iteration
    assert check_run_folder(work).iteration == iteration
    return iteration


def test_sigterm_and_ctrl_c_save_exit_and_resume_exactly(tmp_path, opts, reference):
    """SIGTERM in epoch 1, then Ctrl-C (SIGINT) in epoch 2 of the resumed run, each after
    iteration 3 of its epoch (the epoch's last iteration has its own test below)."""
    work = tmp_path / "run"
    first = interrupt_once(work, opts, signal.SIGTERM, after=3)
    second = interrupt_once(work, opts, signal.SIGINT, after=first + 3)
    assert first % ITERS_PER_EPOCH and second % ITERS_PER_EPOCH
    finish_and_compare(work, opts, reference, second)


def test_resume_from_the_last_iteration_of_an_epoch_is_exact(tmp_path, opts, reference):
    """iter_10.pth, the last iteration of epoch 2, is what a SIGTERM at iteration 10, or a SIGKILL
    before epoch_2.pth is written, leaves as the newest checkpoint."""
    work = tmp_path / "run"
    work.mkdir()
    shutil.copy(reference.work / "iter_10.pth", work / "iter_10.pth")
    state = load_checkpoint_file(work / "iter_10.pth")
    assert (state["iteration"], state["epoch"], state["sampler"]["position"]) == (10, 1, ITERS_PER_EPOCH)
    finish_and_compare(work, opts, reference, 10)


@pytest.mark.parametrize("phase", ["startup", "final-eval"])
def test_ctrl_c_outside_the_training_loop_exits_cleanly(tmp_path, opts, phase):
    done = run_train(tmp_path / "run", opts + ["train.max_iters=2"], expect_rc=None,
                     inject=["--signal", "SIGINT", "--signal-at", phase])
    assert "inject: sending SIGINT" in done.stdout
    assert done.returncode == 128 + signal.SIGINT and "Traceback" not in done.stderr, done.stderr[-3000:]


def test_kill_during_a_scheduled_evaluation_redoes_it_on_resume(tmp_path, opts):
    """eval_interval 1, 6 iterations: an evaluation after epoch 1 (iteration 5) and a final one.
    SIGKILL as the first starts, then resume: the run folder must hold both, as an
    uninterrupted run's does."""
    work, opts = tmp_path / "run", opts + ["train.eval_interval=1", "train.max_iters=6"]
    killed = run_train(work, opts, expect_rc=-signal.SIGKILL, inject=["--signal", "SIGKILL", "--signal-at", "eval"])
    assert "inject: sending SIGKILL at eval" in killed.stdout
    check_run_folder(work)
    run_train(work, opts, resume_auto=True)
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["mode"] == "val"] == [ITERS_PER_EPOCH, 6]


def test_trainer_seeds_every_rng_it_checkpoints(tmp_path, opts):
    """Two trainers of one config start from the same RNG states, whatever ran before."""
    import numpy as np

    from iadet.config import load_config
    from iadet.engine.checkpointing import rng_state
    from iadet.engine.trainer import Trainer

    cfg = load_config(QUICKSTART, opts)
    Trainer(cfg, tmp_path / "a", progress=False)
    first = rng_state()
    random.random(), np.random.rand()  # whatever else the process did in between
    Trainer(cfg, tmp_path / "b", progress=False)
    assert not state_differences(first, rng_state())
