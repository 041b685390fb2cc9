"""DDP on CPU (gloo): 2 ranks x batch b give the gradients of 1 rank x batch 2b; torchrun trains."""
import subprocess
import sys

import torch

from tests.conftest import CONFIGS, REPO_ROOT
from tests.engine.test_train import tiny_opts

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def test_two_ranks_equal_one_rank_with_the_whole_batch(tmp_path):
    script = str(REPO_ROOT / "tests" / "engine" / "ddp_grad_check.py")
    env = {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    import os
    env = {**os.environ, **env}
    single = subprocess.run([sys.executable, script, str(tmp_path / "one.pt")], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    double = subprocess.run(TORCHRUN + [script, str(tmp_path / "two.pt")], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert set(one) == set(two) and len(one) > 50
    for name in one:
        scale = one[name].abs().max().clamp(min=1e-6)
        assert (one[name] - two[name]).abs().max() <= 1e-4 * scale, name


def test_torchrun_trains_a_few_iterations(tmp_path):
    import os
    work = tmp_path / "run"
    cmd = TORCHRUN + ["-m", "iadet.train", "--config", str(CONFIGS / "quickstart.yaml"), "--work-dir", str(work),
                      "--device", "cpu", "--no-progress", "--opts",
                      *tiny_opts(tmp_path / "cache"), "train.max_iters=3", "train.eval_interval=0"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    from iadet.checkpoint import load_checkpoint_file
    state = load_checkpoint_file(work / "latest.pth")
    assert state["iteration"] == 3
    assert (work / "metrics.json").is_file()
