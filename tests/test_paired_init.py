"""Paired runs (issue 13): for one seed, every tensor two variants share starts bit-identical,
and the random stream after building (data order, flips) is the same, whether or not the IoU
branch exists."""
from pathlib import Path

import pytest
import torch

import iadet

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAIRS = [("retinanet_r50_fpn_1x_coco.yaml", "iou_aware_retinanet_r50_fpn_1x_coco.yaml"),
         ("retinanet_r50_fpn_1x_coco.yaml", "iou_aware_retinanet_r50_fpn_1x_coco_grad.yaml"),
         ("mini/retinanet.yaml", "mini/iou_aware.yaml"),
         ("mini/retinanet.yaml", "mini/iou_aware_grad.yaml")]


def _build(config: str, seed: int, opts=()):
    torch.manual_seed(seed)
    model = iadet.build_detector(iadet.load_config(CONFIGS / config, list(opts)))
    return model.state_dict(), torch.get_rng_state()


@pytest.mark.parametrize("baseline, variant", PAIRS)
def test_shared_tensors_start_identical(baseline, variant):
    base_state, base_rng = _build(baseline, seed=3)
    var_state, var_rng = _build(variant, seed=3)
    shared = [k for k in base_state if k in var_state]
    assert len(shared) == len(base_state), "the variant must hold every tensor of the baseline"
    assert [k for k in var_state if k not in base_state] == ["head.iou_pred.weight", "head.iou_pred.bias"]
    unequal = [k for k in shared if not torch.equal(base_state[k], var_state[k])]
    assert unequal == []
    assert torch.equal(base_rng, var_rng), "building the IoU branch must not move the global stream"


def test_the_iou_branch_still_depends_on_the_seed():
    a, _ = _build("mini/iou_aware.yaml", seed=0)
    b, _ = _build("mini/iou_aware.yaml", seed=1)
    a2, _ = _build("mini/iou_aware.yaml", seed=0)
    assert not torch.equal(a["head.iou_pred.weight"], b["head.iou_pred.weight"])
    assert torch.equal(a["head.iou_pred.weight"], a2["head.iou_pred.weight"])
    assert not torch.equal(a["head.iou_pred.weight"][0], a["head.bbox_pred.weight"][0])


def test_detached_feature_control_keeps_the_iou_loss_off_shared_layers():
    """model.head.iou_detach_feature: the IoU logits' gradient reaches the IoU conv only."""
    for detach in (False, True):
        torch.manual_seed(0)
        cfg = iadet.load_config(CONFIGS / "mini" / "iou_aware.yaml", [f"model.head.iou_detach_feature={detach}"])
        model = iadet.build_detector(cfg)
        out = model(torch.randn(1, 3, 64, 64))
        out["iou_logits"].sum().backward()
        reached = {name.split(".")[0] for name, p in model.head.named_parameters()
                   if p.grad is not None and p.grad.abs().sum() > 0}
        assert reached == ({"iou_pred"} if detach else {"iou_pred", "reg_convs", "reg_norms"})
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.backbone.parameters()) == detach
