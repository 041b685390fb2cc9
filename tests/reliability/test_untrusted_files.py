"""Untrusted files: a checkpoint carrying a pickle payload and a config with a Python YAML tag are
refused with a clear error naming the file, and their payload never runs.

tests/config covers the YAML tag in ``load_config``; here every checkpoint reader, then both
through ``python -m iadet.train``.
"""
import pytest
import torch
import yaml

from iadet.checkpoint import load_checkpoint_file, load_detector_weights
from iadet.engine.checkpointing import find_resume_checkpoint, save_checkpoint
from iadet.models.backbone import build_resnet
from tests.reliability.harness import assert_one_line_error, run_main, run_train


class Payload:
    """Unpickling this creates ``marker``: what an attacker's code would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def evil_checkpoint(path, marker):
    """A file that looks like a training checkpoint (the newest one) and carries a payload."""
    torch.save({"iteration": 10 ** 6, "model": {}, "payload": Payload(marker)}, path)
    return path


def test_the_payload_works_when_loaded_unsafely(tmp_path):
    """Without weights_only the payload runs: the tests below would see it."""
    marker = tmp_path / "pwned"
    torch.load(evil_checkpoint(tmp_path / "evil.pth", marker), weights_only=False)
    assert marker.exists()


READERS = {
    "load_checkpoint_file": lambda path: load_checkpoint_file(path),
    "load_detector_weights": lambda path: load_detector_weights(torch.nn.Linear(1, 1), path),
    "backbone init": lambda path: build_resnet("resnet18").load_torchvision_weights(path),
}


@pytest.mark.parametrize("reader", READERS)
def test_every_checkpoint_reader_refuses_a_pickle_payload(tmp_path, reader):
    marker, path = tmp_path / "pwned", evil_checkpoint(tmp_path / "evil.pth", tmp_path / "pwned")
    with pytest.raises(ValueError, match=r"evil\.pth.*weights_only"):
        READERS[reader](path)
    assert not marker.exists()


def test_resume_auto_skips_a_planted_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    save_checkpoint({"iteration": 4}, tmp_path / "iter_4.pth")
    evil_checkpoint(tmp_path / "latest.pth", marker)
    with pytest.warns(UserWarning, match=r"skipping damaged checkpoint .*latest\.pth.*weights_only"):
        assert find_resume_checkpoint(tmp_path) == tmp_path / "iter_4.pth"
    assert not marker.exists()


def test_train_resume_refuses_a_pickle_payload_in_a_real_process(tmp_path, opts):
    marker, path = tmp_path / "pwned", evil_checkpoint(tmp_path / "evil.pth", tmp_path / "pwned")
    done = run_train(tmp_path / "run", opts, expect_rc=2, extra=["--resume", str(path)])
    assert_one_line_error(done.stderr, f"cannot load checkpoint {path} safely (weights_only=True)")
    assert not marker.exists()


def python_tag(marker) -> str:
    return f"!!python/object/apply:builtins.open [{str(marker)!r}, w]"


def test_the_yaml_payload_works_when_loaded_unsafely(tmp_path):
    marker = tmp_path / "pwned"
    yaml.unsafe_load(f"model: {python_tag(marker)}\n")
    assert marker.exists()


def test_train_refuses_a_python_yaml_tag_in_a_real_process(tmp_path, opts):
    marker, config = tmp_path / "pwned", tmp_path / "evil.yaml"
    config.write_text(f"train:\n  work_dir: {python_tag(marker)}\n")
    done = run_train(tmp_path / "run", opts, expect_rc=2, extra=["--config", str(config)])
    assert_one_line_error(done.stderr, str(config), "safe_load")
    assert not marker.exists()


@pytest.mark.parametrize("where", ["base file", "override"])
def test_train_refuses_a_python_yaml_tag_in_a_base_file_or_an_override(tmp_path, opts, capsys, where):
    marker = tmp_path / "pwned"
    (tmp_path / "evil_base.yaml").write_text(f"train: {{work_dir: {python_tag(marker)}}}\n")
    config = tmp_path / "config.yaml"
    config.write_text("_base_: evil_base.yaml\n" if where == "base file" else "")
    extra = [] if where == "base file" else [f"train.work_dir={python_tag(marker)}"]
    code, err = run_main(tmp_path / "run", opts + extra, capsys, extra=["--config", str(config)])
    assert code == 2, f"crashed: {code!r}" if isinstance(code, Exception) else err[-3000:]
    assert_one_line_error(err, "evil_base.yaml" if where == "base file" else "train.work_dir")
    assert not marker.exists()
