import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from iadet.convert import (
    convert_torchvision_resnet,
    convert_torchvision_retinanet,
    main,
    save_atomically,
)
from iadet.models.backbone import ResNet

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "iadet.convert", *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def retinanet_state_dict():
    torch.manual_seed(0)
    model = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None)
    return model.state_dict()


def expected_retinanet_keys():
    """iadet detector names, written out from the description in iadet/convert.py."""
    with torch.device("meta"):
        resnet = torchvision.models.resnet50(weights=None).state_dict()
    keys = {"backbone." + k for k in resnet if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    for kind in ("weight", "bias"):
        keys |= {f"neck.lateral_convs.{i}.{kind}" for i in range(3)}
        keys |= {f"neck.output_convs.{i}.{kind}" for i in range(3)}
        keys |= {f"neck.p6.{kind}", f"neck.p7.{kind}"}
        keys |= {f"head.cls_convs.{i}.{kind}" for i in range(4)}
        keys |= {f"head.reg_convs.{i}.{kind}" for i in range(4)}
        keys |= {f"head.cls_logits.{kind}", f"head.bbox_pred.{kind}"}
    return keys


def test_cli_round_trip_of_a_torchvision_resnet18(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    source, target = tmp_path / "resnet18.pth", tmp_path / "out" / "r18_iadet.pth"
    torch.save(reference, source)

    result = run_cli("--from", "torchvision-resnet", source, target)
    assert result.returncode == 0, result.stderr
    # 11,689,512 torchvision parameters minus the 512 x 1000 + 1000 classifier
    assert "11,176,512 parameters" in result.stdout and len(result.stdout.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "r18_iadet.pth.tmp").exists()

    saved = torch.load(target, weights_only=True)
    assert saved["meta"] == {"source": "torchvision-resnet"}
    for norm in ("frozen_stats", "frozen"):
        model = ResNet(depth=18, norm=norm)
        model.load_state_dict(saved["state_dict"], strict=True)
    for key, value in saved["state_dict"].items():
        assert torch.equal(value, reference[key])


def test_convert_resnet_drops_fc_counters_and_module_prefix():
    with torch.device("meta"):
        reference = torchvision.models.resnet18(weights=None).state_dict()
    converted = convert_torchvision_resnet({"module." + k: v for k, v in reference.items()})
    assert set(converted) == {k for k in reference if not k.startswith("fc.") and "num_batches" not in k}


def test_convert_resnet_rejects_an_unknown_key():
    with pytest.raises(ValueError, match=re.escape("'layer5.0.conv1.weight'")):
        convert_torchvision_resnet({"conv1.weight": torch.zeros(1), "layer5.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="torchvision-retinanet"):  # a detector given as a classifier
        convert_torchvision_resnet({"backbone.body.conv1.weight": torch.zeros(1)})


def test_convert_retinanet_gives_exactly_the_iadet_names(retinanet_state_dict):
    converted = convert_torchvision_retinanet(retinanet_state_dict)
    assert set(converted) == expected_retinanet_keys()
    assert not any(k.startswith("head.iou_pred") for k in converted)
    assert converted["head.cls_logits.weight"].shape == (819, 256, 3, 3)  # 9 anchors x 91 classes
    assert converted["head.bbox_pred.weight"].shape == (36, 256, 3, 3)
    assert converted["neck.lateral_convs.0.weight"].shape == (256, 512, 1, 1)  # C3 first
    assert converted["neck.lateral_convs.2.weight"].shape == (256, 2048, 1, 1)
    assert converted["neck.p6.weight"].shape == (256, 256, 3, 3)  # torchvision v1: P6 from P5
    assert converted["backbone.layer4.2.bn3.running_var"].shape == (2048,)
    assert torch.equal(converted["head.reg_convs.3.weight"],
                       retinanet_state_dict["head.regression_head.conv.3.0.weight"])
    assert torch.equal(converted["backbone.layer2.0.downsample.0.weight"],
                       retinanet_state_dict["backbone.body.layer2.0.downsample.0.weight"])


def test_convert_retinanet_accepts_the_old_torchvision_layout(retinanet_state_dict):
    def old_name(key):
        key = re.sub(r"fpn\.(inner|layer)_blocks\.(\d+)\.0\.", r"fpn.\1_blocks.\2.", key)
        return re.sub(r"_head\.conv\.(\d+)\.0\.", lambda m: f"_head.conv.{2 * int(m.group(1))}.", key)

    old = {old_name(k): v for k, v in retinanet_state_dict.items()}
    assert "head.classification_head.conv.6.weight" in old
    new, converted_old = convert_torchvision_retinanet(retinanet_state_dict), convert_torchvision_retinanet(old)
    assert set(converted_old) == set(new)
    assert all(converted_old[k] is new[k] for k in new)


@pytest.mark.parametrize("key", ["head.iou_head.weight", "head.classification_head.conv.1.weight",
                                 "backbone.body.fc.weight", "anchor_generator.cell_anchors"])
def test_convert_retinanet_names_an_unknown_key(retinanet_state_dict, key):
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        convert_torchvision_retinanet({**retinanet_state_dict, key: torch.zeros(1)})


def test_cli_retinanet_records_the_number_of_classes(retinanet_state_dict, tmp_path, capsys):
    source, target = tmp_path / "retinanet.pth", tmp_path / "retinanet_iadet.pth"
    torch.save({"state_dict": retinanet_state_dict}, source)
    assert main(["--from", "torchvision-retinanet", str(source), str(target)]) == 0
    assert "tensors" in capsys.readouterr().out
    saved = torch.load(target, weights_only=True)
    assert saved["meta"] == {"source": "torchvision-retinanet", "num_classes": 91, "num_anchors": 9}
    assert set(saved["state_dict"]) == expected_retinanet_keys()


def test_cli_names_a_missing_input_file(tmp_path):
    missing = tmp_path / "no_such_checkpoint.pth"
    result = run_cli("--from", "torchvision-resnet", missing, tmp_path / "out.pth")
    assert result.returncode != 0
    assert "no_such_checkpoint.pth" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.pth").exists()


def test_cli_explains_a_checkpoint_of_the_wrong_kind(tmp_path, capsys):
    source = tmp_path / "resnet18.pth"
    with torch.device("meta"):
        state_dict = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({k: torch.zeros(v.shape) for k, v in state_dict.items() if v.dim() <= 1}, source)
    assert main(["--from", "torchvision-retinanet", str(source), str(tmp_path / "out.pth")]) == 1
    error = capsys.readouterr().err
    assert "resnet18.pth" in error and "'bn1.weight'" in error
    assert "torchvision-resnet" in error


def test_cli_explains_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    source = tmp_path / "notes.pth"
    source.write_text("not a checkpoint")
    assert main(["--from", "torchvision-resnet", str(source), str(tmp_path / "out.pth")]) == 1
    error = capsys.readouterr().err
    assert "notes.pth" in error and "is not a PyTorch checkpoint" in error
    assert len(error.strip().splitlines()) == 1, "one line, not torch's weights_only essay"


def test_save_atomically_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "ckpt.pth"
    path.write_bytes(b"old")
    save_atomically({"x": torch.arange(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]
