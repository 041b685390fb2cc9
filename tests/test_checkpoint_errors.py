"""A file that is not a PyTorch checkpoint is named in one line; the weights_only trust
explanation is kept for real checkpoints that hold Python objects."""
import os

import pytest
import torch

from iadet.checkpoint import load_checkpoint_file

from tests.conftest import CONFIGS
from tests.engine.test_train import tiny_opts

TORCH_BOILERPLATE = ("PyTorch 2.6", "WeightsUnpickler", "file an issue", "\n")


class Payload:
    def __reduce__(self):
        return print, ("payload ran",)


def error_of(path) -> str:
    with pytest.raises(ValueError) as info:
        load_checkpoint_file(path)
    return str(info.value)


NOT_CHECKPOINTS = {
    "random bytes": lambda: os.urandom(4096),
    "text": lambda: b"not a checkpoint at all\n",
    "nul bytes": lambda: b"\x00garbage" * 100,
    "plain pickle": lambda: __import__("pickle").dumps({"a": 1}),
    "empty": lambda: b"",
}


@pytest.mark.parametrize("content", NOT_CHECKPOINTS, ids=list(NOT_CHECKPOINTS))
def test_a_file_that_is_not_a_checkpoint_is_named_in_one_line(tmp_path, content):
    path = tmp_path / "weights.bin"
    path.write_bytes(NOT_CHECKPOINTS[content]())
    message = error_of(path)
    assert message.startswith(f"{path} is not a PyTorch checkpoint"), message
    assert "weights_only" not in message and not any(s in message for s in TORCH_BOILERPLATE), message


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.99])
def test_a_truncated_checkpoint_is_called_damaged(tmp_path, cut):
    path = tmp_path / "latest.pth"
    torch.save({"w": torch.arange(10_000.0)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    message = error_of(path)
    assert message.startswith(f"{path} is a damaged (truncated?) or unsupported PyTorch checkpoint"), message
    assert "\n" not in message


@pytest.mark.parametrize("payload", ["callable", "numpy array"])
def test_a_checkpoint_with_python_objects_keeps_the_trust_explanation(tmp_path, payload, capsys):
    import numpy as np

    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "extra": Payload() if payload == "callable" else np.zeros(3)}, path)
    message = error_of(path)
    assert message.startswith(f"cannot load checkpoint {path} safely (weights_only=True)"), message
    assert "Unsupported global" in message and "trust" in message and "weights_only=False" in message
    assert "\n" not in message and "\x1b[" not in message  # one line, no terminal bold codes
    assert "payload ran" not in capsys.readouterr().out


def test_a_real_checkpoint_still_loads(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save({"model": {"w": torch.ones(2)}, "iteration": 3}, path)
    assert load_checkpoint_file(path)["iteration"] == 3
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint_file(legacy)["w"], torch.ones(2))


def test_infer_and_train_print_one_error_line_for_random_bytes(tmp_path, capsys):
    from iadet.infer import main as infer_main
    from iadet.train import main as train_main
    from torchvision.io import write_png

    bad = tmp_path / "random.pth"
    bad.write_bytes(os.urandom(2048))
    image = tmp_path / "x.png"
    write_png(torch.zeros(3, 32, 32, dtype=torch.uint8), str(image))
    with pytest.raises(SystemExit) as info:
        infer_main(["--config", str(CONFIGS / "quickstart.yaml"), "--checkpoint", str(bad), "--input", str(image),
                    "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err == f"error: {bad} is not a PyTorch checkpoint" + err.split(
        "is not a PyTorch checkpoint", 1)[1]
    assert err.count("\n") == 1 and "weights_only" not in err
    with pytest.raises(SystemExit) as info:
        train_main(["--config", str(CONFIGS / "quickstart.yaml"), "--work-dir", str(tmp_path / "run"), "--device",
                    "cpu", "--no-progress", "--resume", str(bad), "--opts", *tiny_opts(tmp_path / "cache")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert info.value.code == 2 and len(lines) == 1 and f"{bad} is not a PyTorch checkpoint" in lines[0], err
    assert "weights_only" not in err and "Traceback" not in err
