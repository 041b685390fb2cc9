"""R50-FPN training and inference throughput (images per second) at 800x1333, and an nccl smoke test.

Throughput (default): the IoU-aware RetinaNet R50-FPN of
``configs/iou_aware_retinanet_r50_fpn_1x_coco.yaml`` (random weights: speed does not depend
on them), input 800x1333 (padded to 800x1344):

* inference: ``model.predict`` on a list of ``--infer-batch`` uint8 images already on the
  device (normalise, pad, network, Eq. 7, top-k, NMS, rescale), fp32 and under autocast;
* training: network + losses (assignment, focal, smooth L1, IoU BCE) + backward + gradient
  clipping + SGD step on ``--train-batch`` images with 8 boxes each (the batch is built once:
  data loading is not counted), fp32, bf16 and fp16 (with a GradScaler), as
  ``iadet.engine.trainer.Trainer.train_step`` runs them.

``--warmup`` untimed iterations, then ``--iters`` timed ones (CUDA synchronised);
``torch.backends.cudnn.benchmark`` is on (fixed input size). Prints a markdown table (also to
``--markdown-out``) with the CPU model and the GPU name; ``--json-out`` stores everything.

    python scripts/gpu_throughput.py --device cuda --markdown-out throughput.md
    python scripts/gpu_throughput.py --device cpu --size 256 320 --iters 1 --warmup 0   # a CPU smoke run

nccl smoke (``--nccl-smoke``, under torchrun): initialises the process group itself (so that
``--nproc_per_node=1`` exercises nccl too, which ``iadet.train`` skips for a world of one),
checks an all-reduce and runs 3 DistributedDataParallel training steps of the quickstart model:

    torchrun --standalone --nproc_per_node=1 scripts/gpu_throughput.py --nccl-smoke
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
from bench_machine import cpu_info, cpu_line  # noqa: E402

import iadet  # noqa: E402
from iadet.builder import build_criterion, build_optimizer  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def smooth_images(n: int, size, device, seed: int = 0):
    """``n`` (3, H, W) uint8 images of smooth random colour (no data set needed)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, max(2, size[0] // 32), max(2, size[1] // 32), generator=g)
    images = torch.nn.functional.interpolate(small, size=tuple(size), mode="bilinear", align_corners=False)
    return [(im * 255).round().to(torch.uint8).to(device) for im in images]


def random_targets(n: int, size, num_classes: int, device, per_image: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(n):
        wh = 32 + torch.rand(per_image, 2, generator=g) * torch.tensor([size[1] * 0.4, size[0] * 0.4])
        xy = torch.rand(per_image, 2, generator=g) * (torch.tensor([size[1], size[0]]) - wh)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                        "labels": torch.randint(0, num_classes, (per_image,), generator=g).to(device)})
    return targets


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_loop(step, warmup: int, iters: int, device) -> float:
    """Seconds per iteration of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / max(iters, 1)


def peak_mib(device):
    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def train_step_fn(model, criterion, optimizer, scaler, batch, targets, amp_dtype, device, grad_clip):
    """One step as ``Trainer.train_step`` runs it."""
    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(batch)
        losses = criterion(out, out["anchors"], targets)
        total = sum(v for k, v in losses.items() if k.startswith("loss_"))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        step.loss = float(total.detach())
    return step


def measure(args) -> dict:
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    size = (args.size[0], args.size[1])
    opts = [f"input.min_size={min(size)}", f"input.max_size={max(size)}", *args.opts]
    cfg = iadet.load_config(args.config, opts)
    rows = []
    model = iadet.build_detector(cfg).to(device)
    images = smooth_images(max(args.infer_batch, args.train_batch), size, device)

    model.eval()
    for name in args.infer_amp:
        amp_dtype = DTYPES[name]
        reset_peak(device)
        batch_images = images[: args.infer_batch]
        with torch.no_grad():
            seconds = timed_loop(lambda: model.predict(batch_images, amp_dtype=amp_dtype), args.warmup, args.iters,
                                 device)
        rows.append({"mode": "inference", "precision": name, "batch": args.infer_batch,
                     "images_per_s": args.infer_batch / seconds, "ms_per_iter": 1e3 * seconds,
                     "peak_mib": peak_mib(device)})
        print(f"inference {name}: {rows[-1]['images_per_s']:.1f} img/s", flush=True)

    model.train()
    with torch.no_grad():
        batch, sizes, _ = model.preprocessor(images[: args.train_batch])
    targets = random_targets(args.train_batch, size, cfg.model.num_classes, device)
    criterion = build_criterion(cfg)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name in args.train_amp:
        amp_dtype = DTYPES[name]
        model.load_state_dict(initial)
        optimizer = build_optimizer(cfg, model, args.train_batch)
        scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")
        reset_peak(device)
        step = train_step_fn(model, criterion, optimizer, scaler, batch, targets, amp_dtype, device,
                             cfg.train.grad_clip)
        seconds = timed_loop(step, args.warmup, args.iters, device)
        loss = getattr(step, "loss", float("nan"))
        rows.append({"mode": "training", "precision": name, "batch": args.train_batch,
                     "images_per_s": args.train_batch / seconds, "ms_per_iter": 1e3 * seconds,
                     "peak_mib": peak_mib(device), "last_loss": loss})
        print(f"training {name}: {rows[-1]['images_per_s']:.1f} img/s (loss {loss:.3f})", flush=True)
        if not torch.isfinite(torch.tensor(loss)):
            raise SystemExit(f"training {name}: non-finite loss {loss}")
    machine = {**cpu_info(), "device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return {"machine": machine, "config": str(args.config), "size": list(size),
            "padded": list(batch.shape[-2:]), "warmup": args.warmup, "iters": args.iters, "rows": rows}


def markdown(report: dict) -> str:
    m = report["machine"]
    h, w = report["size"]
    lines = [f"R50-FPN IoU-aware RetinaNet throughput at {h}x{w} (padded {report['padded'][0]}x{report['padded'][1]}), "
             f"{report['iters']} timed iterations after {report['warmup']} warm-up; "
             f"{cpu_line()}" + (f"; GPU: {m['gpu']}" if "gpu" in m else f"; device {m['device']}"), "",
             "| mode | precision | batch | images / s | ms / iteration | peak memory MiB |",
             "|---|---|---:|---:|---:|---:|"]
    for r in report["rows"]:
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        lines.append(f"| {r['mode']} | {r['precision']} | {r['batch']} | {r['images_per_s']:.1f} | "
                     f"{r['ms_per_iter']:.1f} | {peak} |")
    return "\n".join(lines)


def nccl_smoke(args) -> None:
    """all_reduce + 3 DDP steps under the process group ``--backend`` (torchrun sets the env)."""
    import torch.distributed as dist

    if "RANK" not in os.environ:
        raise SystemExit("--nccl-smoke runs under torchrun: torchrun --standalone --nproc_per_node=1 "
                         "scripts/gpu_throughput.py --nccl-smoke")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device(args.device if args.device != "cuda" else "cpu")
    dist.init_process_group(backend=args.backend)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        value = torch.tensor([float(rank + 1)], device=device)
        dist.all_reduce(value)
        expected = world * (world + 1) / 2
        if float(value) != expected:
            raise SystemExit(f"all_reduce gave {float(value)}, expected {expected}")
        cfg = iadet.load_config(REPO / "configs" / "quickstart.yaml", ["input.min_size=160", "input.max_size=160"])
        model = iadet.build_detector(cfg).to(device)
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None)
        criterion = build_criterion(cfg)
        optimizer = build_optimizer(cfg, model, 2 * world)
        images = smooth_images(2, (160, 160), device, seed=rank)
        with torch.no_grad():
            batch, _, _ = model.preprocessor(images)
        targets = random_targets(2, (160, 160), cfg.model.num_classes, device, seed=rank + 1)
        scaler = torch.amp.GradScaler(device.type, enabled=False)
        step = train_step_fn(net, criterion, optimizer, scaler, batch, targets, None, device, cfg.train.grad_clip)
        losses = []
        for _ in range(3):
            step()
            losses.append(step.loss)
        if not all(torch.isfinite(torch.tensor(losses))):
            raise SystemExit(f"non-finite DDP losses {losses}")
        dist.barrier()
        if rank == 0:
            print(f"{args.backend} smoke OK: world size {world}, all_reduce {float(value):g}, 3 DDP training steps "
                  f"on {device}, losses {', '.join(f'{l:.3f}' for l in losses)}")
    finally:
        dist.destroy_process_group()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "iou_aware_retinanet_r50_fpn_1x_coco.yaml")
    p.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    p.add_argument("--infer-batch", type=int, default=1)
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--infer-amp", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16")
    p.add_argument("--train-amp", default="fp32,bf16,fp16", help="comma-separated: fp32, bf16, fp16")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--opts", nargs="*", default=[], help="config overrides key=value")
    p.add_argument("--json-out", default=None)
    p.add_argument("--markdown-out", default=None)
    p.add_argument("--nccl-smoke", action="store_true", help="the torchrun smoke test instead of the throughput")
    p.add_argument("--backend", default="nccl", help="process group of --nccl-smoke (gloo to try it on a CPU)")
    args = p.parse_args(argv)
    if args.nccl_smoke:
        return nccl_smoke(args)
    args.infer_amp = [a.strip() for a in args.infer_amp.split(",") if a.strip()]
    args.train_amp = [a.strip() for a in args.train_amp.split(",") if a.strip()]
    unknown = [a for a in args.infer_amp + args.train_amp if a not in DTYPES]
    if unknown:
        p.error(f"unknown precision {unknown[0]!r}; valid: {', '.join(DTYPES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but torch.cuda.is_available() is False")
    report = measure(args)
    table = markdown(report)
    print("\n" + table)
    if args.markdown_out:
        Path(args.markdown_out).write_text(table + "\n")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
