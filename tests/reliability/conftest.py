"""Fixtures of the fault-injection suite: one uninterrupted reference run shared by the xdist
workers of a session, the synthetic data it trains on, and disk clean-up (checkpoints are 46 MB)."""
import json
import os
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

from iadet.checkpoint import load_checkpoint_file
from tests.reliability.harness import run_train, tiny_opts

# checkpoints of the reference that tests copy; the others are deleted to save disk
REFERENCE_KEEPS = ("latest.pth", "iter_2.pth", "iter_4.pth", "epoch_1.pth", "iter_6.pth", "iter_10.pth")


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> Path:
    """A folder common to every xdist worker of this session."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = root / "reliability_shared"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def opts(shared_dir):
    """The tiny training config (``harness.tiny_opts``) on a synthetic set shared by the session."""
    return tiny_opts(shared_dir / "synthetic")


class Reference:
    """The run folder of an uninterrupted run of ``opts``."""

    def __init__(self, work: Path):
        self.work = work
        self._states = {}

    def state(self, name: str = "latest.pth") -> dict:
        if name not in self._states:
            self._states[name] = load_checkpoint_file(self.work / name)
        return self._states[name]

    def lr(self, iteration: int) -> float:
        """The lr logged for ``iteration`` (1-based, as in metrics.jsonl)."""
        for line in (self.work / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record["mode"] == "train" and record["iteration"] == iteration:
                return record["lr"]
        raise KeyError(iteration)


@pytest.fixture(scope="session")
def reference(shared_dir, opts) -> Reference:
    """Trains ``opts`` once per session (the first worker to ask does it, the other waits)."""
    work = shared_dir / "reference"
    with FileLock(str(shared_dir / "reference.lock")):
        if not (work / "done").is_file():
            shutil.rmtree(work, ignore_errors=True)
            run_train(work, opts)
            for path in work.glob("*.pth"):
                if path.name not in REFERENCE_KEEPS:
                    path.unlink()
            (work / "done").write_text("")
    return Reference(work)


@pytest.fixture(autouse=True)
def _delete_checkpoints_afterwards(tmp_path):
    """pytest keeps the last three sessions' folders: drop their 46 MB checkpoints."""
    yield
    for pattern in ("*.pth", "*.pth.tmp"):
        for path in tmp_path.rglob(pattern):
            path.unlink(missing_ok=True)
