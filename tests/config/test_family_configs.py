"""The quality-family configs (issue 15, configs/family/): each loads, builds, trains a step
and predicts; each holds the option its name says and nothing else departs from its base."""
from pathlib import Path

import pytest
import torch

import iadet
from iadet.builder import build_criterion
from iadet.config import config_to_dict
from iadet.tools.reproduce import FAMILY, FAMILY_BASE

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FAMILY_FILES = sorted(p.name for p in (CONFIGS / "family").glob("*.yaml"))
SMALL = ["input.min_size=96", "input.max_size=96", "model.backbone.name=resnet18", "model.num_classes=3",
         "model.neck.out_channels=32", "model.head.feat_channels=32", "model.head.stacked_convs=2"]
# method -> the keys its config changes against its base (FAMILY_BASE)
CHANGES = {
    "qfl": {"model.loss.cls_loss": "qfl"},
    "vfl": {"model.loss.cls_loss": "vfl", "model.loss.reg_loss": "l1", "train.warmup_ratio": 0.1},
    "centerness": {"model.loss.quality_target": "centerness", "model.test.alpha": None},
    "atss": {"model.assigner.type": "atss", "model.assigner.atss_topk_unit": "location"},
    "aligned": {"model.head.iou_align": True},
    "aligned_grad": {"model.head.iou_align": True},
    "soft_nms": {"model.test.nms": "soft_gaussian"},
    "iou_guided_nms": {"model.test.nms": "iou_guided", "model.test.alpha": 1.0},
}
EXPECTED = {FAMILY[m][0].split("/", 1)[1] + ".yaml": (FAMILY_BASE[m] + ".yaml", CHANGES[m]) for m in FAMILY}


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_every_family_config_is_listed():
    assert FAMILY_FILES == sorted(EXPECTED) and set(CHANGES) == set(FAMILY) == set(FAMILY_BASE)


@pytest.mark.parametrize("name", FAMILY_FILES)
def test_family_config_differs_from_its_base_only_where_its_name_says(name):
    base, changes = EXPECTED[name]
    mine = _flat(config_to_dict(iadet.load_config(CONFIGS / "family" / name)))
    theirs = _flat(config_to_dict(iadet.load_config(CONFIGS / base)))
    differing = {k: mine[k] for k in mine if mine[k] != theirs.get(k)}
    differing.pop("train.work_dir", None)
    assert differing == changes


@pytest.mark.parametrize("name", FAMILY_FILES)
def test_family_config_trains_a_step_and_predicts(name):
    torch.manual_seed(0)
    cfg = iadet.load_config(CONFIGS / "family" / name, SMALL)
    model = iadet.build_detector(cfg)
    criterion = build_criterion(cfg)
    images = torch.rand(2, 3, 96, 96) * 255
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [40.0, 30.0, 90.0, 70.0]]),
                "labels": torch.tensor([0, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    out = model((images - 120.0) / 60.0)  # training batches come normalised and padded
    losses = criterion(out, out["anchors"], targets)
    total = losses["loss_cls"] + losses["loss_reg"] + losses.get("loss_iou", 0.0)
    assert torch.isfinite(total) and losses["num_pos"] > 0
    total.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        detections = model.predict(images[0])[0]
    assert set(detections) >= {"boxes", "scores", "labels"}
    assert (detections["scores"][1:] <= detections["scores"][:-1]).all()


def test_the_atss_config_counts_topk_in_locations():
    # the ATSS authors: atss_topk nearest locations, all 9 anchors of each; the default counts anchors
    name = FAMILY["atss"][0].split("/", 1)[1] + ".yaml"
    assert build_criterion(iadet.load_config(CONFIGS / "family" / name)).assigner.anchors_per_location == 9
    per_anchor = iadet.load_config(CONFIGS / (FAMILY_BASE["atss"] + ".yaml"), ["model.assigner.type=atss"])
    with pytest.warns(UserWarning, match="atss_topk=9 in anchors .* 9 anchors per location that is 1 location"):
        assert build_criterion(per_anchor).assigner.anchors_per_location == 1
    with pytest.raises(Exception, match="atss_topk_unit"):
        iadet.load_config(CONFIGS / "family" / name, ["model.assigner.atss_topk_unit=cell"])
