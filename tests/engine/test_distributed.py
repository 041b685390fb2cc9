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


def test_torchrun_evaluation_shards_and_gathers_every_image(tmp_path):
    """2 ranks each run half of the images; rank 0 writes the same results as one process."""
    import json
    import os
    import iadet
    opts = [*tiny_opts(tmp_path / "cache"), "model.test.score_thr=0.0"]
    torch.manual_seed(0)
    model = iadet.build_detector(iadet.load_config(CONFIGS / "quickstart.yaml", opts))
    torch.save({"model": model.state_dict()}, tmp_path / "weights.pth")  # every rank loads the same weights
    base = ["-m", "iadet.eval", "--config", str(CONFIGS / "quickstart.yaml"), "--checkpoint", str(tmp_path / "weights.pth"),
            "--device", "cpu", "--no-progress", "--batch-size", "1", "--alphas", "1.0,0.5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for launcher, out in (([sys.executable], "one"), (TORCHRUN, "two")):
        done = subprocess.run(launcher + base + ["--out", str(tmp_path / out), "--opts", *opts], cwd=REPO_ROOT,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    key = lambda r: (r["image_id"], r["category_id"], r["bbox"], r["score"])  # noqa: E731
    assert len({r["image_id"] for r in one}) == 4 and sorted(one, key=key) == sorted(two, key=key)
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m1["alpha_sweep"] == m2["alpha_sweep"]


def test_torchrun_resume_continues_every_rank_exactly(tmp_path):
    """2 ranks: 6 iterations straight = 3 + --resume auto + 3 (per-rank RNG states restored)."""
    import os
    from iadet.checkpoint import load_checkpoint_file
    opts = [*tiny_opts(tmp_path / "cache"), "train.eval_interval=0", "train.lr_steps=[4]", "data.flip_prob=0.5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def train(work, iters, extra=()):
        cmd = TORCHRUN + ["-m", "iadet.train", "--config", str(CONFIGS / "quickstart.yaml"), "--work-dir", str(work),
                          "--device", "cpu", "--no-progress", *extra, "--opts", *opts, f"train.max_iters={iters}"]
        done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    train(tmp_path / "straight", 6)
    train(tmp_path / "split", 3)
    state = load_checkpoint_file(tmp_path / "split" / "latest.pth")
    assert len(state["rng_per_rank"]) == 2  # each rank's streams, restored on its own rank
    train(tmp_path / "split", 6, extra=["--resume", "auto"])
    a = load_checkpoint_file(tmp_path / "straight" / "latest.pth")["model"]
    b = load_checkpoint_file(tmp_path / "split" / "latest.pth")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
