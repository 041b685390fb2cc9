"""Training rows of scripts/bench.py: the training step in fp32 and with iadet's fast paths,
assignment + losses alone, and the peak memory of a step, plus the memory child that
measures one side of that step in a fresh process (``bench.py --memory-child``).
"""
import copy
import ctypes
import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch

import iadet
from iadet.models.fuse import to_channels_last

from bench_common import COMPAT_CONFIG, GOALS, REPO, alternate, make_row, torchvision_frozen_retinanet

# the CLI whose hidden ``--memory-child`` / ``--memory-inputs`` options run ``memory_child``
BENCH_SCRIPT = Path(__file__).resolve().with_name("bench.py")


def sgd_step(losses_fn, optimizer) -> float:
    """One training step: the summed losses (``num_pos`` is a count, not a loss), backward, step."""
    losses = losses_fn()
    total = sum(v for k, v in losses.items() if k != "num_pos")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return float(total.detach())


class TrainingRows:
    """``row_*`` methods of the Bench (bench.py), which provides ``args``, ``device``,
    ``train_batch``, ``train_size``, ``rows``, ``log`` and ``train_setup``."""

    def _train_runners(self, s, model=None, amp_dtype=None):
        """(iadet losses, torchvision losses, iadet step, torchvision step) closures; ``model``
        replaces s["model"] (e.g. a channels-last copy), ``amp_dtype`` runs iadet's network
        under autocast with the criterion in float32, as iadet.engine.trainer does."""
        from iadet.builder import build_criterion

        s["tv"].load_state_dict(s["initial"][0])  # every training row starts from the same weights
        s["model"].load_state_dict(s["initial"][1])
        if model is not None:
            model.load_state_dict(s["initial"][1])
        tv, model = s["tv"], model if model is not None else s["model"]
        criterion = build_criterion(s["cfg"])
        tv.train()
        model.train()
        tv_opt = torch.optim.SGD([p for p in tv.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)
        ia_opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)

        def iadet_losses():
            batch, _, _ = model.preprocessor(s["images255"])
            with torch.autocast(self.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                out = model(batch)
            return criterion(out, out["anchors"], s["targets"])

        def tv_losses():
            return tv(s["images01"], s["targets"])

        def step(losses_fn, optimizer):
            return lambda: sgd_step(losses_fn, optimizer)

        return iadet_losses, tv_losses, step(iadet_losses, ia_opt), step(tv_losses, tv_opt)

    def row_train_step(self):
        s = self.train_setup()
        tv, model = s["tv"], s["model"]
        iadet_losses, tv_losses, iadet_step, tv_step = self._train_runners(s)
        with torch.no_grad():  # before any step: same weights -> same losses
            ours, theirs = iadet_losses(), tv_losses()
        diffs = [abs(float(ours["loss_cls"]) - float(theirs["classification"])),
                 abs(float(ours["loss_reg"]) - float(theirs["bbox_regression"]))]
        trainable = (sum(p.numel() for p in model.parameters() if p.requires_grad),
                     sum(p.numel() for p in tv.parameters() if p.requires_grad))
        check = (f"step-0 losses cls {float(ours['loss_cls']):.4f}/{float(theirs['classification']):.4f}, "
                 f"reg {float(ours['loss_reg']):.4f}/{float(theirs['bbox_regression']):.4f} "
                 f"(max diff {max(diffs):.1e}); trainable params {trainable[0]}/{trainable[1]}")
        times, _ = alternate({"iadet": iadet_step, "torchvision": tv_step}, self.args.repeats, self.device)
        tv.eval()
        model.eval()
        b, size = self.train_batch, self.train_size
        self.rows.append(make_row("train_step", f"training step (forward, loss, backward, SGD), batch {b} at "
                                  f"{size}x{size}, fp32, frozen BN, layer2-4 trainable", times["iadet"],
                                  times["torchvision"], "torchvision RetinaNet train mode", GOALS["train_step"],
                                  check))

    def row_train_step_fast(self):
        """iadet's opt-in training fast paths against torchvision fp32: bf16 autocast
        (``train.amp: bf16``) and channels-last weights."""
        s = self.train_setup()
        b, size = self.train_batch, self.train_size
        variants = (("train_step_bf16", "bf16 autocast (train.amp: bf16)", None, torch.bfloat16),
                    ("train_step_channels_last", "channels_last weights", "cl", None))
        for name, label, layout, amp_dtype in variants:
            model = copy.deepcopy(s["model"])
            if layout == "cl":
                model = to_channels_last(model)
            iadet_losses, tv_losses, iadet_step, tv_step = self._train_runners(s, model=model, amp_dtype=amp_dtype)
            with torch.no_grad():
                ours, theirs = iadet_losses(), tv_losses()
            check = (f"step-0 losses cls {float(ours['loss_cls']):.4f}/{float(theirs['classification']):.4f}, "
                     f"reg {float(ours['loss_reg']):.4f}/{float(theirs['bbox_regression']):.4f}")
            times, _ = alternate({"iadet": iadet_step, "torchvision": tv_step}, self.args.repeats, self.device)
            s["tv"].eval()
            del model
            self.rows.append(make_row(name, f"training step, batch {b} at {size}x{size}, iadet {label} vs "
                                      "torchvision fp32", times["iadet"], times["torchvision"],
                                      "torchvision RetinaNet train mode", GOALS["train_step"], check))

    def row_loss(self):
        from iadet.builder import build_criterion

        s = self.train_setup()
        tv = s["tv"].eval()
        tv.load_state_dict(s["initial"][0])
        criterion = build_criterion(s["cfg"])
        with torch.no_grad():
            images, targets = tv.transform(s["images01"], [dict(t) for t in s["targets"]])
            features = list(tv.backbone(images.tensors).values())
            head = tv.head(features)
            anchors = tv.anchor_generator(images, features)
        head_out = {"cls_logits": head["cls_logits"], "bbox_deltas": head["bbox_regression"]}
        runners = {"iadet": lambda: criterion(head_out, anchors[0], targets),
                   "torchvision": lambda: tv.compute_loss(targets, head, anchors)}
        with torch.no_grad():
            times, results = alternate(runners, max(self.args.repeats, 7), self.device, warmup=2)
        ours, theirs = results["iadet"], results["torchvision"]
        diff = max(abs(float(ours["loss_cls"]) - float(theirs["classification"])),
                   abs(float(ours["loss_reg"]) - float(theirs["bbox_regression"])))
        check = (f"cls {float(ours['loss_cls']):.5f}/{float(theirs['classification']):.5f}, reg "
                 f"{float(ours['loss_reg']):.5f}/{float(theirs['bbox_regression']):.5f} (max diff {diff:.1e}), "
                 f"{int(ours['num_pos'])} positives")
        b, size = self.train_batch, self.train_size
        self.rows.append(make_row("loss", f"assignment + losses (no backward), batch {b} at {size}x{size}, "
                                  f"{head['cls_logits'].shape[1]} anchors", times["iadet"], times["torchvision"],
                                  "torchvision RetinaNet.compute_loss", GOALS["loss"], check))

    def row_train_memory(self):
        s = self.train_setup()
        if self.device.type == "cuda":
            peaks = {}
            iadet_losses, tv_losses, iadet_step, tv_step = self._train_runners(s)
            for name, run in (("iadet", iadet_step), ("torchvision", tv_step)):
                run()  # optimizer state, first allocations
                torch.cuda.synchronize()
                gc.collect()
                torch.cuda.empty_cache()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                run()
                torch.cuda.synchronize()
                peaks[name] = [(torch.cuda.max_memory_allocated() - base) / 2 ** 20]
            s["tv"].eval()
            s["model"].eval()
            method = "torch.cuda.max_memory_allocated above the allocation before the step"
        else:
            peaks, method = self._memory_subprocesses(s)
        b, size = self.train_batch, self.train_size
        self.rows.append(make_row("train_memory", f"peak memory of a training step, batch {b} at {size}x{size}",
                                  peaks["iadet"], peaks["torchvision"], "torchvision RetinaNet train mode",
                                  GOALS["train_memory"], method, unit="MiB"))

    def _memory_subprocesses(self, s):
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"tv": s["initial"][0], "iadet": s["initial"][1],
                        "images01": [im.cpu() for im in s["images01"]],
                        "targets": [{k: v.cpu() for k, v in t.items()} for t in s["targets"]],
                        "size": self.train_size}, Path(tmp) / "inputs.pt")
            peaks, methods = {"iadet": [], "torchvision": []}, set()
            runs = 2 if self.args.repeats >= 3 else 1
            for rep in range(runs):
                for side in (("iadet", "torchvision") if rep % 2 == 0 else ("torchvision", "iadet")):
                    cmd = [sys.executable, str(BENCH_SCRIPT), "--memory-child", side,
                           "--memory-inputs", str(Path(tmp) / "inputs.pt"), "--threads", str(torch.get_num_threads())]
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
                    record = json.loads(out.stdout.strip().splitlines()[-1])
                    peaks[side].append(record["peak_above_start_mib"])
                    methods.add(record["method"])
                    self.log(f"  train_memory {side}: peak {record['peak_mib']:.0f} MiB, "
                             f"{record['peak_above_start_mib']:.0f} MiB above the start of the step")
        return peaks, "fresh subprocess per side; " + "; ".join(sorted(methods))


# ----------------------------------------------------------------------------- memory child
def _rss_kib(field: str) -> Optional[int]:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def memory_child(side: str, inputs_path: str) -> None:
    """One training step of one side in this fresh process; prints a JSON line with the peak
    resident memory above the resident memory at the start of the step."""
    from iadet.builder import build_criterion

    data = torch.load(inputs_path, weights_only=False)
    size = data["size"]
    images01, targets = data["images01"], data["targets"]
    if side == "torchvision":
        model = torchvision_frozen_retinanet()
        model.load_state_dict(data["tv"])
        model.transform.min_size, model.transform.max_size = (size,), size

        def losses():
            return model(images01, targets)
    else:
        cfg = iadet.load_config(COMPAT_CONFIG, [f"input.min_size={size}", f"input.max_size={size}"])
        model = iadet.build_detector(cfg)
        model.load_state_dict(data["iadet"])
        criterion = build_criterion(cfg)
        images255 = [im * 255 for im in images01]

        def losses():
            batch, _, _ = model.preprocessor(images255)
            out = model(batch)
            return criterion(out, out["anchors"], targets)
    del data
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)

    def step():
        sgd_step(losses, optimizer)

    step()  # optimizer state and one-off allocations
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so the start RSS is honest
    except OSError:
        pass
    start_kib = _rss_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
        reset = _rss_kib("VmHWM") <= start_kib + 1024
    except OSError:
        reset = False
    step()
    if reset:
        peak_kib, method = _rss_kib("VmHWM"), "VmHWM (reset via /proc/self/clear_refs) minus VmRSS at step start"
    else:
        import resource

        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "ru_maxrss minus VmRSS at step start (peak mark not resettable: may include set-up peaks)"
    print(json.dumps({"side": side, "peak_mib": peak_kib / 1024, "start_mib": start_kib / 1024,
                      "peak_above_start_mib": (peak_kib - start_kib) / 1024, "method": method}))
