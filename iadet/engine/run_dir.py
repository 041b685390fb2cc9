"""The run folder: everything needed to reproduce and follow a run (STYLE habit 7).

``config.yaml`` (resolved), ``command.txt``, ``env.json`` (git commit, library versions,
devices), ``metrics.jsonl`` (one JSON object per logged step or evaluation) and
TensorBoard events under ``tb/``. Only rank 0 writes.
"""
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional

import torch

from iadet.config import dump_config


def git_commit(repo: Path) -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    import numpy
    import torchvision

    return {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__,
            "cuda": torch.version.cuda, "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "git_commit": git_commit(Path(__file__).resolve().parents[2])}


class RunLogger:
    """Writes the run folder; a no-op on ranks other than 0."""

    def __init__(self, work_dir: Path, enabled: bool = True):
        self.work_dir = Path(work_dir)
        self.enabled = enabled
        self._tb = None
        if enabled:
            self.work_dir.mkdir(parents=True, exist_ok=True)

    def record_start(self, cfg, argv) -> None:
        if not self.enabled:
            return
        dump_config(cfg, self.work_dir / "config.yaml")
        with open(self.work_dir / "command.txt", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {shlex.join([sys.executable, '-m', 'iadet.train', *argv])}\n")
        (self.work_dir / "env.json").write_text(json.dumps(environment(), indent=2))

    @property
    def tb(self):
        if self._tb is None and self.enabled:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.work_dir / "tb"))
        return self._tb

    def log(self, record: Dict, step: int, prefix: str = "train") -> None:
        """Append ``record`` to metrics.jsonl and its numbers to TensorBoard as ``prefix/key``."""
        if not self.enabled:
            return
        with open(self.work_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"mode": prefix, "iteration": step, **record}) + "\n")
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
