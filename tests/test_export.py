"""`python -m iadet.export`: ONNX and TorchScript files give the eager network's outputs, and
iadet's post-processing on them gives the eager detections."""
import sys

import pytest
import torch

import iadet
from iadet.export import (ExportableNetwork, compare_outputs, detections_from_exported, load_exported, main,
                          output_names)

from tests.conftest import CONFIGS

CONFIG = CONFIGS / "quickstart.yaml"  # ResNet-18, 64-channel FPN and GN head, 3 classes
EXAMPLE_SIZE = (128, 160)
OTHER_BATCH = (2, 3, 160, 224)  # another batch size and image size than the export example


def export_cli(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A random-weight quickstart detector and its checkpoint in iadet's format."""
    torch.manual_seed(0)
    model = iadet.build_detector(iadet.load_config(CONFIG))
    for module in model.modules():  # non-trivial BatchNorm statistics and affine parameters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    with torch.no_grad():
        model.head.cls_logits.bias.fill_(0.0)  # plenty of detections from random weights
    path = tmp_path_factory.mktemp("export") / "model.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"class_names": ["a", "b", "c"]}}, path)
    return model.eval(), path


@pytest.fixture(scope="module")
def torchscript_file(detector, tmp_path_factory):
    _, ckpt = detector
    out = tmp_path_factory.mktemp("ts") / "model.pt"
    assert export_cli("--config", CONFIG, "--checkpoint", ckpt, "--format", "torchscript", "--out", out,
                      "--image-size", *EXAMPLE_SIZE, "--dynamic") == 0
    return out


@pytest.fixture(scope="module")
def onnx_file(detector, tmp_path_factory):
    for package in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(package)
    _, ckpt = detector
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert export_cli("--config", CONFIG, "--checkpoint", ckpt, "--format", "onnx", "--out", out,
                      "--image-size", *EXAMPLE_SIZE, "--dynamic") == 0
    return out


def eager_outputs(model, images):
    with torch.no_grad():
        return ExportableNetwork(model).eval()(images)


def test_exportable_network_returns_the_detector_outputs_in_order(detector):
    model, _ = detector
    images = torch.randn(1, 3, *EXAMPLE_SIZE)
    with torch.no_grad():
        full = model(images)
    outputs = eager_outputs(model, images)
    assert output_names(model) == ("cls_logits", "bbox_deltas", "iou_logits")
    for name, value in zip(output_names(model), outputs):
        torch.testing.assert_close(value, full[name], rtol=0, atol=0)


def test_cli_writes_and_verifies_both_formats(torchscript_file, onnx_file, capsys):
    # the fixtures ran the CLI (exit code 0 asserted there); the files are complete
    assert torchscript_file.stat().st_size > 0 and onnx_file.stat().st_size > 0
    assert not list(torchscript_file.parent.glob("*.tmp")) and not list(onnx_file.parent.glob("*.tmp"))
    import onnx
    onnx.checker.check_model(str(onnx_file))
    dims = [d.dim_param for d in onnx.load(str(onnx_file)).graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3]  # --dynamic: symbolic batch, height and width


def test_torchscript_matches_eager_at_another_size(detector, torchscript_file):
    """torch.jit.trace records the shape arithmetic: the file runs at other sizes, bit for bit here."""
    model, _ = detector
    images = torch.randn(*OTHER_BATCH, generator=torch.Generator().manual_seed(3))
    exported = load_exported(torchscript_file, "torchscript")(images)
    for got, expected in zip(exported, eager_outputs(model, images)):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_onnx_matches_eager_at_the_example_and_another_size(detector, onnx_file):
    model, _ = detector
    run = load_exported(onnx_file, "onnx")
    for shape in ((1, 3, *EXAMPLE_SIZE), OTHER_BATCH):
        images = torch.randn(*shape, generator=torch.Generator().manual_seed(4))
        for got, expected in zip(run(images), eager_outputs(model, images)):
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_detections_from_exported_outputs_equal_eager_detect(detector, fmt, request):
    model, _ = detector
    path = request.getfixturevalue(f"{fmt}_file")
    generator = torch.Generator().manual_seed(5)
    images = [torch.randint(0, 256, (3, 120, 150), generator=generator).float(),
              torch.randint(0, 256, (3, 90, 200), generator=generator).float()]
    batch, sizes, _ = model.preprocessor(images)
    expected = model.detect(batch, sizes)
    got = detections_from_exported(model, load_exported(path, fmt)(batch), batch.shape[-2:], sizes)
    assert len(got) == len(expected) == 2
    for g, e in zip(got, expected):
        assert len(e["scores"]) > 10 and set(g) == set(e)
        torch.testing.assert_close(g["labels"], e["labels"], rtol=0, atol=0)
        for key in ("boxes", "scores", "cls_scores", "ious"):
            torch.testing.assert_close(g[key], e[key], rtol=1e-4, atol=1e-4)


def test_detections_from_exported_rejects_outputs_of_another_model(detector):
    model, _ = detector
    outputs = eager_outputs(model, torch.randn(1, 3, *EXAMPLE_SIZE))
    with pytest.raises(ValueError, match="iou_branch"):
        detections_from_exported(model, outputs[:2], EXAMPLE_SIZE, [EXAMPLE_SIZE])
    with pytest.raises(ValueError, match="anchors"):
        detections_from_exported(model, outputs, (64, 64), [(64, 64)])


def test_compare_outputs_flags_differences_and_failures(detector):
    model, _ = detector
    network = ExportableNetwork(model).eval()
    images = torch.randn(1, 3, 64, 64)

    def shifted(x):
        return tuple(out + 1e-2 for out in network(x))

    def broken(x):
        raise RuntimeError("Invalid input shape")

    rows = compare_outputs(network, shifted, images, tolerance=1e-4)
    assert [r["name"] for r in rows] == list(network.names) and not any(r["ok"] for r in rows)
    assert all(r["max_abs_diff"] == pytest.approx(1e-2, rel=1e-3) for r in rows)
    assert all(r["ok"] for r in compare_outputs(network, shifted, images, tolerance=1e-1))
    rows = compare_outputs(network, broken, images, tolerance=1e-4)
    assert not any(r["ok"] for r in rows) and "Invalid input shape" in rows[0]["note"]


def test_verification_failure_exits_1(detector, tmp_path, monkeypatch, capsys):
    _, ckpt = detector

    def perturbed_runner(path, fmt):
        run = load_exported(path, fmt)
        return lambda images: tuple(out + 1.0 for out in run(images))

    monkeypatch.setattr("iadet.export.load_exported", perturbed_runner)
    with pytest.raises(SystemExit) as exit_info:
        export_cli("--config", CONFIG, "--checkpoint", ckpt, "--format", "torchscript", "--out",
                   tmp_path / "m.pt", "--image-size", 64, 64)
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "differs from the eager network" in captured.err


def test_bad_input_gives_clear_errors(detector, tmp_path, monkeypatch, capsys):
    _, ckpt = detector
    common = ["--config", CONFIG, "--out", tmp_path / "m.onnx"]
    with pytest.raises(SystemExit) as exit_info:  # argparse
        export_cli(*common, "--checkpoint", ckpt, "--format", "tflite")
    assert exit_info.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    missing = tmp_path / "no_such_checkpoint.pth"
    with pytest.raises(SystemExit) as exit_info:
        export_cli(*common, "--checkpoint", missing, "--format", "onnx")
    assert exit_info.value.code == 2 and str(missing) in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        export_cli("--config", tmp_path / "no_such_config.yaml", "--checkpoint", ckpt, "--format", "onnx",
                   "--out", tmp_path / "m.onnx")
    assert exit_info.value.code == 2 and "no_such_config.yaml" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the package were not installed
    with pytest.raises(SystemExit) as exit_info:
        export_cli(*common, "--checkpoint", ckpt, "--format", "onnx")
    assert exit_info.value.code == 2 and "pip install onnx onnxscript onnxruntime" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_fused_batchnorm_export_matches_the_unfused_network(detector, tmp_path):
    """``model.test.fuse_bn=true``: the exported graph has no batch_norm and the outputs of
    the network with BatchNorm (within float tolerance)."""
    model, ckpt = detector
    out = tmp_path / "fused.pt"
    assert export_cli("--config", CONFIG, "--checkpoint", ckpt, "--format", "torchscript", "--out", out,
                      "--image-size", *EXAMPLE_SIZE, "--opts", "model.test.fuse_bn=true") == 0
    fused = torch.jit.load(str(out))
    assert "batch_norm" not in str(fused.inlined_graph)
    images = torch.randn(1, 3, *EXAMPLE_SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = fused(images)
    for a, b in zip(got, eager_outputs(model, images)):
        assert (a - b).abs().max() <= 1e-4 * max(1.0, float(b.abs().max()))
