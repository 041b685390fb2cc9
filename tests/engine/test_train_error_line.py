"""An error raised during training starts on a line of its own, not on the progress bar's line."""
import pytest

from iadet.engine.trainer import Trainer
from iadet.train import main

from tests.conftest import CONFIGS
from tests.engine.test_train import tiny_opts


def test_an_error_during_training_starts_on_its_own_line(tmp_path, capsys, monkeypatch):
    real_step = Trainer.train_step

    def failing_step(self, batch):
        if self.iteration == 2:
            raise ValueError("boom at iteration 2")
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", failing_step)
    with pytest.raises(SystemExit) as exit_info:  # progress bar on (no --no-progress)
        main(["--config", str(CONFIGS / "quickstart.yaml"), "--work-dir", str(tmp_path / "run"), "--device", "cpu",
              "--opts", *tiny_opts(tmp_path / "cache"), "train.max_iters=6", "train.eval_interval=0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "train:" in err  # the bar was drawn ...
    lines = err.split("\n")  # "\r" redraws the bar: only "\n" ends a line
    error_lines = [line for line in lines if "boom" in line]
    assert error_lines == ["error: boom at iteration 2"], repr(err[-600:])  # ... and the error is not on it
    assert "Traceback" not in err
