"""Training end to end on a tiny synthetic dataset: smoke run, run folder, exact resume."""
import json
import subprocess
import sys

import pytest
import torch

from iadet.checkpoint import load_checkpoint_file

from tests.conftest import CONFIGS, REPO_ROOT


def tiny_opts(cache):
    """A very small model and dataset: seconds per iteration on a CPU."""
    return [f"data.synthetic.cache_dir={cache}", "data.synthetic.num_train=10", "data.synthetic.num_val=4",
            "data.synthetic.height=96", "data.synthetic.width=96", "data.num_workers=0",
            "input.min_size=96", "input.max_size=96", "model.neck.out_channels=32", "model.head.feat_channels=32",
            "model.head.stacked_convs=2", "model.head.gn_groups=8", "train.batch_size=2", "train.log_interval=1",
            "train.warmup_iters=3", "train.optimizer=AdamW", "train.lr=0.001", "train.weight_decay=0.0"]


def run_train(work_dir, opts, extra=()):
    cmd = [sys.executable, "-m", "iadet.train", "--config", str(CONFIGS / "quickstart.yaml"), "--work-dir",
           str(work_dir), "--device", "cpu", "--no-progress", *extra, "--opts", *opts]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_smoke_training_writes_a_complete_run_folder(tmp_path):
    work = tmp_path / "run"
    done = run_train(work, tiny_opts(tmp_path / "cache") + ["train.max_iters=20", "train.checkpoint_interval=10"])
    for name in ("config.yaml", "command.txt", "env.json", "metrics.jsonl", "latest.pth", "iter_10.pth",
                 "epoch_1.pth", "best.pth", "metrics.json"):
        assert (work / name).is_file(), name
    assert list((work / "tb").glob("events.out.tfevents.*"))
    lines = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
    train_lines = [l for l in lines if l["mode"] == "train"]
    assert [l["iteration"] for l in train_lines] == list(range(1, 21))
    assert all(l["loss_cls"] > 0 and l["loss"] == pytest.approx(l["loss_cls"] + l["loss_reg"] + l["loss_iou"], rel=1e-5)
               for l in train_lines)
    metrics = json.loads((work / "metrics.json").read_text())
    assert set(metrics) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    state = load_checkpoint_file(work / "latest.pth")
    assert state["iteration"] == 20 and set(state) >= {"model", "optimizer", "scaler", "rng", "sampler", "config"}
    assert "AP" in done.stdout


def test_resume_is_bit_exact(tmp_path):
    opts = tiny_opts(tmp_path / "cache") + ["train.eval_interval=0", "train.lr_steps=[4]"]
    run_train(tmp_path / "straight", opts + ["train.max_iters=6"])
    run_train(tmp_path / "split", opts + ["train.max_iters=3"])  # stops mid-epoch (5 iterations per epoch)
    run_train(tmp_path / "split", opts + ["train.max_iters=6"], extra=["--resume", "auto"])
    a = load_checkpoint_file(tmp_path / "straight" / "latest.pth")
    b = load_checkpoint_file(tmp_path / "split" / "latest.pth")
    assert a["iteration"] == b["iteration"] == 6
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_bad_config_fails_before_training(tmp_path):
    cmd = [sys.executable, "-m", "iadet.train", "--config", str(CONFIGS / "quickstart.yaml"), "--work-dir",
           str(tmp_path / "w"), "--opts", "train.lr=-1"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "train.lr" in done.stderr and "Traceback" not in done.stderr


def test_bf16_autocast_trains_with_float32_losses(tmp_path):
    work = tmp_path / "bf16"
    run_train(work, tiny_opts(tmp_path / "cache") + ["train.max_iters=2", "train.amp=bf16", "train.eval_interval=0"])
    lines = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert len(lines) == 2 and all(torch.isfinite(torch.tensor(l["loss"])) for l in lines)


def test_epoch_schedule_completes_its_last_epoch(tmp_path):
    work = tmp_path / "epochs"
    run_train(work, tiny_opts(tmp_path / "cache") + ["train.max_iters=null", "train.epochs=2", "train.lr_steps=[1]",
                                                   "train.eval_interval=2"])
    state = load_checkpoint_file(work / "latest.pth")
    assert state["iteration"] == 10 and state["epoch"] == 2  # 10 images / batch 2 = 5 iterations per epoch
    assert (work / "epoch_1.pth").is_file() and (work / "epoch_2.pth").is_file()
    assert state["sampler"]["position"] == 0


def test_sigterm_saves_a_checkpoint_and_resume_reaches_the_same_weights(tmp_path):
    """SIGTERM mid-run: exit code 143, latest.pth at the iteration reached; resuming gives the
    weights of an uninterrupted run."""
    import signal
    import time
    opts = tiny_opts(tmp_path / "cache") + ["train.eval_interval=0", "train.lr_steps=[12]", "train.max_iters=16"]
    run_train(tmp_path / "straight", opts)
    work = tmp_path / "killed"
    cmd = [sys.executable, "-m", "iadet.train", "--config", str(CONFIGS / "quickstart.yaml"), "--work-dir",
           str(work), "--device", "cpu", "--no-progress", "--opts", *opts, "train.log_interval=1"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait for a few logged iterations, then stop it
        log = work / "metrics.jsonl"
        if log.is_file() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM" in err and "--resume auto" in err
    state = load_checkpoint_file(work / "latest.pth")
    assert 3 <= state["iteration"] < 16
    run_train(work, opts, extra=["--resume", "auto"])
    a = load_checkpoint_file(tmp_path / "straight" / "latest.pth")
    b = load_checkpoint_file(work / "latest.pth")
    assert a["iteration"] == b["iteration"] == 16
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_nonfinite_loss_stops_with_the_culprit_named_or_is_skipped(tmp_path):
    """A learning rate of 1e30 blows the weights up: every loss after the first step is non-finite."""
    opts = tiny_opts(tmp_path / "cache") + ["train.eval_interval=0", "train.max_iters=4", "train.lr=1.0e+30",
                                             "train.grad_clip=null", "train.warmup_iters=0"]
    cmd = [sys.executable, "-m", "iadet.train", "--config", str(CONFIGS / "quickstart.yaml"), "--work-dir",
           str(tmp_path / "stop"), "--device", "cpu", "--no-progress", "--opts", *opts]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "non-finite" in done.stderr and "iteration" in done.stderr and "images [" in done.stderr
    assert "train.nonfinite: skip" in done.stderr
    skipped = run_train(tmp_path / "skip", opts + ["train.nonfinite=skip"])
    assert "skipped batch" in skipped.stderr
    state = load_checkpoint_file(tmp_path / "skip" / "latest.pth")
    assert state["iteration"] == 4 and state["skipped_batches"] >= 1


def test_final_eval_false_leaves_the_evaluation_to_iadet_eval(tmp_path):
    work = tmp_path / "no_final_eval"
    done = run_train(work, tiny_opts(tmp_path / "cache") + ["train.max_iters=3", "train.eval_interval=0",
                                                          "train.final_eval=false"])
    assert (work / "latest.pth").is_file() and not (work / "metrics.json").exists()
    lines = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
    assert not [l for l in lines if l["mode"] == "val"] and "evaluation at iteration" not in done.stdout
