"""Learning-rate schedule and the linear scaling rule, by hand."""
import pytest

import iadet
from iadet.builder import scaled_lr
from iadet.lr_schedule import WarmupStepSchedule


def test_warmup_then_steps_by_hand():
    s = WarmupStepSchedule(0.01, steps=[1000, 2000], gamma=0.1, warmup_iters=500, warmup_ratio=1 / 3)
    assert s.lr_at(0) == pytest.approx(0.01 / 3)
    assert s.lr_at(250) == pytest.approx(0.01 * (1 - 0.5 * (2 / 3)))
    assert s.lr_at(500) == pytest.approx(0.01)
    assert s.lr_at(999) == pytest.approx(0.01)
    assert s.lr_at(1000) == pytest.approx(0.001)
    assert s.lr_at(2500) == pytest.approx(0.0001)


def test_linear_scaling_rule():
    cfg = iadet.load_config(None, ["train.lr=0.01"])
    assert scaled_lr(cfg, 16) == pytest.approx(0.01)
    assert scaled_lr(cfg, 8) == pytest.approx(0.005)  # paper: R101 4 x 2 images, lr 0.005
    assert scaled_lr(cfg, 12) == pytest.approx(0.0075)  # paper: 600 px ablations 2 x 6, lr 0.0075
    assert scaled_lr(iadet.load_config(None, ["train.scale_lr=false"]), 8) == pytest.approx(0.01)
