"""scripts/gpu_check.sh without a GPU: exits at once with code 2 and a clear message, runs and
writes nothing. (On a CUDA machine the script itself is the test: see its header.)"""
import os
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.sh"


def run(env_changes, tmp_path, timeout=60):
    env = {**os.environ, **env_changes}
    start = time.perf_counter()
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "report.md")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return done, time.perf_counter() - start


def test_the_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


@pytest.mark.parametrize("hidden", ["", "-1"])
def test_hidden_gpus_exit_2_at_once_with_a_clear_message(tmp_path, hidden):
    done, _ = run({"CUDA_VISIBLE_DEVICES": hidden}, tmp_path)
    assert done.returncode == 2, done.stderr
    assert "CUDA is not available" in done.stderr and "nothing was run" in done.stderr
    assert "CUDA_VISIBLE_DEVICES" in done.stderr
    assert done.stdout == ""  # it stopped before any step (no step prints anything first)
    assert list(tmp_path.iterdir()) == []  # no report, no logs


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would run the checks")
def test_no_gpu_on_this_machine_exits_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "report.md")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "CUDA is not available" in done.stderr, done.stderr
    assert not (tmp_path / "report.md").exists()


def test_gpu_throughput_refuses_cuda_without_a_gpu_and_nccl_smoke_without_torchrun():
    script = str(REPO_ROOT / "scripts" / "gpu_throughput.py")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, script, "--device", "cuda"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "torch.cuda.is_available() is False" in done.stderr
    env = {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([sys.executable, script, "--nccl-smoke"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "runs under torchrun" in done.stderr
