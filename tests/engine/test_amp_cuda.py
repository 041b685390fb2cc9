"""fp16 (with a GradScaler) and bf16 training on CUDA: one training step by hand and
``python -m iadet.train`` with ``train.amp`` (skipped without a GPU; ``scripts/gpu_check.sh``
runs them). ``IADET_AMP_TEST_DEVICE=cpu`` runs the same tests on the CPU (slow; to check the
tests themselves)."""
import json
import os

import pytest
import torch

import iadet
from iadet.builder import build_criterion, build_optimizer

from tests.conftest import CONFIGS
from tests.engine.test_train import tiny_opts

DEVICE = torch.device(os.environ.get("IADET_AMP_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (scripts/gpu_check.sh)")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
SIZE = 128


def batch_and_targets(model, num_classes, n=2):
    g = torch.Generator().manual_seed(0)
    small = torch.rand(n, 3, 8, 8, generator=g)
    images = torch.nn.functional.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    images = [(im * 255).to(torch.uint8).to(DEVICE) for im in images]
    with torch.no_grad():
        batch, _, _ = model.preprocessor(images)
    targets = []
    for _ in range(n):
        xy = torch.rand(4, 2, generator=g) * SIZE * 0.6
        wh = 12 + torch.rand(4, 2, generator=g) * SIZE * 0.3
        targets.append({"boxes": torch.cat([xy, (xy + wh).clamp(max=SIZE)], 1).to(DEVICE),
                        "labels": torch.randint(0, num_classes, (4,), generator=g).to(DEVICE)})
    return batch, targets


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_one_amp_training_step(amp):
    """The network runs in the AMP dtype, the losses stay float32 and near the fp32 ones, the
    step updates every trainable weight to finite values."""
    dtype = DTYPES[amp]
    cfg = iadet.load_config(CONFIGS / "quickstart.yaml", [f"input.min_size={SIZE}", f"input.max_size={SIZE}"])
    torch.manual_seed(0)
    model = iadet.build_detector(cfg).to(DEVICE).train()
    criterion = build_criterion(cfg)
    batch, targets = batch_and_targets(model, cfg.model.num_classes)
    with torch.no_grad():
        out32 = model(batch)
        reference = criterion(out32, out32["anchors"], targets)
    optimizer = build_optimizer(cfg, model, 2)
    scaler = torch.amp.GradScaler(DEVICE.type, enabled=amp == "fp16")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.autocast(DEVICE.type, dtype=dtype):
        out = model(batch)
    assert out["cls_logits"].dtype == dtype and out["bbox_deltas"].dtype == dtype
    losses = criterion(out, out["anchors"], targets)
    terms = {k: v for k, v in losses.items() if k.startswith("loss_")}
    assert terms and all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
    for k, v in terms.items():  # half precision changes the losses only a little
        assert abs(float(v.detach()) - float(reference[k])) <= 0.05 * abs(float(reference[k])) + 1e-3, k
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(sum(terms.values())).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
    scaler.step(optimizer)
    scaler.update()
    if amp == "fp16":
        assert scaler.get_scale() > 0
    after = dict(model.named_parameters())
    assert all(torch.isfinite(after[n]).all() for n in before)
    changed = [n for n in before if not torch.equal(before[n], after[n].detach())]
    assert len(changed) > 0.9 * len(before), f"only {len(changed)} of {len(before)} weights moved"


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_train_cli_with_amp(tmp_path, amp):
    from iadet.checkpoint import load_checkpoint_file
    from iadet.train import main

    work = tmp_path / "run"
    main(["--config", str(CONFIGS / "quickstart.yaml"), "--work-dir", str(work), "--device", DEVICE.type,
          "--no-progress", "--opts", *tiny_opts(tmp_path / "cache"), f"train.amp={amp}", "train.max_iters=3",
          "train.eval_interval=0"])
    lines = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert [l["iteration"] for l in lines] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(l["loss"])) for l in lines)
    state = load_checkpoint_file(work / "latest.pth")
    assert state["iteration"] == 3
    if amp == "fp16":
        assert state["scaler"].get("scale", 0) > 0  # the GradScaler ran and was checkpointed
