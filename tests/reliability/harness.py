"""Helpers of the fault-injection suite: a tiny training run, real processes, run-folder checks."""
import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional

import torch

from iadet.checkpoint import load_checkpoint_file
from iadet.engine.checkpointing import CHECKPOINT_GLOBS, find_resume_checkpoint

from tests.conftest import CONFIGS, REPO_ROOT

QUICKSTART = CONFIGS / "quickstart.yaml"
MAX_ITERS = 16
CHECKPOINT_INTERVAL = 2
ITERS_PER_EPOCH = 5  # 10 training images, batch 2


def tiny_opts(cache: Path) -> List[str]:
    """The quickstart config shrunk to ~0.1 s per iteration: 64-pixel images, a frozen ResNet-18,
    a 16-channel FPN and head, batch 2, 10 training images (5 iterations per epoch), 16
    iterations with an lr step at 10, a checkpoint every 2 iterations, deterministic loading."""
    return [f"data.synthetic.cache_dir={cache}", "data.synthetic.num_train=10", "data.synthetic.num_val=2",
            "data.synthetic.height=64", "data.synthetic.width=64", "data.num_workers=0",
            "input.min_size=64", "input.max_size=64", "model.backbone.frozen_stages=4",
            "model.neck.out_channels=16", "model.head.feat_channels=16", "model.head.stacked_convs=1",
            "model.head.gn_groups=4", "train.batch_size=2", "train.log_interval=1", "train.warmup_iters=3",
            "train.optimizer=AdamW", "train.lr=0.001", "train.weight_decay=0.0", f"train.max_iters={MAX_ITERS}",
            "train.lr_steps=[10]", f"train.checkpoint_interval={CHECKPOINT_INTERVAL}", "train.eval_interval=0"]


def subprocess_env() -> Dict[str, str]:
    """One math thread per process: two training processes share this 2-core machine."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def train_command(work: Path, opts, resume_auto: bool = False, inject=(), extra=()) -> List[str]:
    """``python -m iadet.train ...``, or the same through ``tests.reliability.inject`` with ``inject``."""
    args = ["--config", str(QUICKSTART), "--work-dir", str(work), "--device", "cpu", "--no-progress", *extra]
    if resume_auto:
        args += ["--resume", "auto"]
    args += ["--opts", *opts]
    if inject:
        return [sys.executable, "-m", "tests.reliability.inject", *inject, "--", *args]
    return [sys.executable, "-m", "iadet.train", *args]


def run_train(work: Path, opts, expect_rc: Optional[int] = 0, **kwargs) -> subprocess.CompletedProcess:
    """Run a training process to its end; check its exit code (unless ``expect_rc`` is None)."""
    done = subprocess.run(train_command(work, opts, **kwargs), cwd=REPO_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    if expect_rc is not None:
        assert done.returncode == expect_rc, \
            f"exit code {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def start_train(work: Path, opts, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(train_command(work, opts, **kwargs), cwd=REPO_ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition: Callable[[], bool], proc: Optional[subprocess.Popen] = None, timeout: float = 300,
             poll: float = 0.002) -> bool:
    """Poll ``condition`` until it holds (True) or ``proc`` has exited (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            return condition()
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(poll)
    return True


def metrics_size(work: Path) -> int:
    path = work / "metrics.jsonl"
    return path.stat().st_size if path.is_file() else 0


def train_records(work: Path, offset: int = 0) -> List[dict]:
    """The complete ``train`` lines of metrics.jsonl written after byte ``offset``."""
    path = work / "metrics.jsonl"
    if not path.is_file():
        return []
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read().decode()
    lines = data.split("\n")[:-1]  # a line without its newline is still being written
    return [r for r in map(json.loads, lines) if r["mode"] == "train"]


def resume_candidates(work: Path) -> List[Path]:
    return sorted({p for g in CHECKPOINT_GLOBS for p in work.glob(g)})


class ResumePoint(NamedTuple):
    iteration: int  # 0: no checkpoint, a fresh start
    epoch: int
    position: int  # batches of that epoch already used


def check_run_folder(work: Path) -> ResumePoint:
    """After a kill: every ``*.pth`` loads with weights_only=True and holds what its name says;
    ``--resume auto`` picks the newest, without a warning. Returns where it resumes."""
    states = {}
    for path in sorted(work.glob("*.pth")):
        states[path] = state = load_checkpoint_file(path)  # raises on a damaged file
        if path.name.startswith("iter_"):
            assert state["iteration"] == int(path.stem[5:]), path
        if path.name.startswith("epoch_"):
            assert state["epoch"] == int(path.stem[6:]) and state["sampler"]["position"] == 0, path
    candidates = resume_candidates(work)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "skipping damaged checkpoint" warning fails the test
        chosen = find_resume_checkpoint(work)
    if not candidates:
        assert chosen is None
        return ResumePoint(0, 0, 0)
    assert chosen is not None and chosen.suffix == ".pth"
    assert states[chosen]["iteration"] == max(states[p]["iteration"] for p in candidates)
    return ResumePoint(int(states[chosen]["iteration"]), int(states[chosen]["epoch"]),
                       int(states[chosen]["sampler"]["position"]))


def state_differences(a, b, where: str = "") -> List[str]:
    """Where two checkpoint states differ (tensors bit for bit, everything else with ==)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where} keys {sorted(set(a) ^ set(b), key=str)}"]
        return [d for k in a for d in state_differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in state_differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


# The Python and NumPy RNG states of a checkpoint. The trainer seeds them from train.seed (see
# test_kill_resume.test_trainer_seeds_every_rng_it_checkpoints), so they are compared by default;
# compare_unseeded_rng=False leaves them out (for a trainer that seeds torch only).
UNSEEDED_RNG = re.compile(r"^\.rng(_per_rank\[\d+\])?\.(python|numpy)\b")


def assert_same_state(expected: dict, actual: dict, compare_unseeded_rng: bool = True) -> None:
    """Model, optimiser, schedule, sampler, torch RNG... equal; model weights reported first."""
    model_diffs = state_differences(expected["model"], actual["model"], "model")
    assert not model_diffs, f"{len(model_diffs)} model tensors differ, e.g. {model_diffs[:5]}"
    diffs = state_differences(expected, actual)
    if not compare_unseeded_rng:
        diffs = [d for d in diffs if not UNSEEDED_RNG.match(d)]
    assert not diffs, f"states differ at {diffs[:10]}"


def error_lines(stderr: str) -> List[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def assert_one_line_error(stderr: str, *needles: str) -> str:
    """A single ``error: ...`` line holding every needle, and no Python traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def run_main(work: Path, opts, capsys, extra=()):
    """``iadet.train.main`` in this process -> (exit code, or the exception that escaped; stderr)."""
    from iadet.train import main

    argv = ["--config", str(QUICKSTART), "--work-dir", str(work), "--device", "cpu", "--no-progress", *extra,
            "--opts", *opts]
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:  # what a user would see as a traceback
        code = exc
    return code, capsys.readouterr().err
