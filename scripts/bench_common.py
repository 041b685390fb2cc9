"""What every row of scripts/bench.py shares: timing, the row record and its table, the
machine, the inputs, the detector pair and the detection comparison.

Imported by bench.py (which puts the repository and scripts/ on ``sys.path`` first) and its
row modules (bench_rows_inference.py, bench_rows_training.py, bench_rows_nms_eval.py).
"""
import contextlib
import io
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torchvision
from torch import nn

import iadet
from bench_machine import cpu_model  # noqa: F401  (re-exported: the CPU model of every figure)
from iadet.convert import convert_torchvision_retinanet

REPO = Path(__file__).resolve().parents[1]
COMPAT_CONFIG = REPO / "configs" / "compat" / "torchvision_retinanet_r50_fpn.yaml"
COCO128 = REPO.parent / "shared" / "data" / "coco128"

# goal: iadet / reference at most this
GOALS = {"r50_fp32": 0.85, "r50_bf16": 0.5, "postprocess": 0.3, "nms": 1.5, "train_step": 0.8, "loss": 0.3,
         "coco_eval_pycocotools": 0.15, "coco_eval_faster": 1.0, "iou_branch": 1.01, "train_memory": 1.0}
BF16_AP_GOAL = 0.2  # |AP(bf16) - AP(fp32)| in points


# ----------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(runners: Dict[str, Callable], repeats: int, device: torch.device, warmup: int = 1):
    """Time every runner ``repeats`` times, interleaved (order reversed on odd repeats), after
    ``warmup`` untimed rounds. Returns ({name: [seconds]}, {name: last result})."""
    results = {}
    for _ in range(warmup):
        for name, run in runners.items():
            results[name] = run()
    times = {name: [] for name in runners}
    names = list(runners)
    for rep in range(repeats):
        for name in (names if rep % 2 == 0 else names[::-1]):
            synchronize(device)
            start = time.perf_counter()
            results[name] = runners[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times, results


def summary(values: List[float]) -> Dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def make_row(row: str, what: str, iadet_values, reference_values, reference: str, goal: Optional[float],
             check: str = "", unit: str = "s", notes: str = "", extra: Optional[Dict] = None) -> Dict:
    ours, theirs = summary(iadet_values), summary(reference_values)
    ratio = ours["median"] / theirs["median"] if theirs["median"] else float("nan")
    record = {"row": row, "what": what, "unit": unit, "iadet": ours, "reference": theirs,
              "reference_name": reference, "ratio": ratio, "goal": goal,
              "met": None if goal is None else bool(ratio <= goal), "check": check, "notes": notes}
    if extra:
        record.update(extra)
    return record


# ----------------------------------------------------------------------------- machine
def machine_info(device: torch.device) -> Dict:
    info = {"device": str(device), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        try:
            flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
            info["cpu_bf16_flags"] = sorted({f for f in flags.split() if "bf16" in f or "amx" in f})
        except (OSError, StopIteration):
            pass
    return info


# ----------------------------------------------------------------------------- inputs and models
def coco128_images() -> List[Path]:
    folder = COCO128 / "val2017"
    return sorted(folder.glob("*.jpg")) if folder.is_dir() else []


def _resize_uint8(image: torch.Tensor, size) -> torch.Tensor:
    out = torch.nn.functional.interpolate(image[None].float(), size=size, mode="bilinear",
                                          antialias=True, align_corners=False)[0]
    return out.round().clamp(0, 255).to(torch.uint8)


def bench_image(size, index: int = 0) -> (torch.Tensor, str):
    """A (3, H, W) uint8 image of exactly ``size``: COCO128 val image ``index`` resized, or a
    smooth random image when the sample data is absent."""
    images = coco128_images()
    if images:
        from iadet.io import read_image_rgb

        path = images[index % len(images)]
        return _resize_uint8(read_image_rgb(path), size), f"COCO128 {path.name} resized to {size[0]}x{size[1]}"
    g = torch.Generator().manual_seed(index)
    small = torch.rand(1, 3, max(2, size[0] // 24), max(2, size[1] // 24), generator=g)
    image = torch.nn.functional.interpolate(small, size=size, mode="bilinear")[0] * 255
    return image.round().to(torch.uint8), f"smooth random image {size[0]}x{size[1]} (COCO128 not found)"


def train_targets(num_images: int, size: int) -> (List[Dict], str):
    """Ground truth for the training rows: COCO128 val boxes of the images used (scaled to the
    square ``size``), labels = COCO category ids (1..90, the compat profile's 91 classes);
    random boxes when the annotations are absent."""
    ann_file = COCO128 / "annotations" / "instances_val2017.json"
    images = coco128_images()
    targets = []
    if ann_file.is_file() and images:
        data = json.loads(ann_file.read_text())
        by_name = {im["file_name"]: im for im in data["images"]}
        for i in range(num_images):
            info = by_name[images[i % len(images)].name]
            sx, sy = size / info["width"], size / info["height"]
            boxes, labels = [], []
            for a in data["annotations"]:
                x, y, w, h = a["bbox"]
                if a["image_id"] == info["id"] and not a.get("iscrowd", 0) and w * sx >= 2 and h * sy >= 2:
                    boxes.append([x * sx, y * sy, (x + w) * sx, (y + h) * sy])
                    labels.append(a["category_id"])
            targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                            "labels": torch.tensor(labels, dtype=torch.int64)})
        return targets, "COCO128 val2017 boxes"
    g = torch.Generator().manual_seed(7)
    for _ in range(num_images):
        xy = torch.rand(6, 2, generator=g) * size * 0.6
        wh = 16 + torch.rand(6, 2, generator=g) * size * 0.35
        targets.append({"boxes": torch.cat([xy, (xy + wh).clamp(max=size)], 1),
                        "labels": torch.randint(1, 91, (6,), generator=g)})
    return targets, "random boxes (COCO128 not found)"


def torchvision_frozen_retinanet() -> nn.Module:
    """torchvision's RetinaNet R50-FPN as built around pretrained weights: FrozenBatchNorm2d,
    conv1 and layer1 frozen (trainable_backbone_layers=3), P6/P7 on P5."""
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    backbone = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(backbone, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return RetinaNet(backbone, 91)


def detector_pair(image: torch.Tensor, device: torch.device, head_opts=()):
    """(torchvision model, iadet model, iadet config): same calibrated weights, eval mode,
    input size = the image's size (no resize: scale 1)."""
    from tests.models.test_detector_torchvision import _pair

    h, w = image.shape[-2:]
    size = (min(h, w), max(h, w))
    with contextlib.redirect_stdout(io.StringIO()):
        scratch, _ = _pair(image, image_size=size)  # retinanet_resnet50_fpn(weights=None) + calibration
    tv = torchvision_frozen_retinanet()
    tv.load_state_dict(scratch.state_dict())  # FrozenBatchNorm2d drops num_batches_tracked
    tv.transform.min_size, tv.transform.max_size = (size[0],), size[1]
    cfg = iadet.load_config(COMPAT_CONFIG, [f"input.min_size={size[0]}", f"input.max_size={size[1]}", *head_opts])
    model = iadet.build_detector(cfg)
    result = model.load_state_dict(convert_torchvision_retinanet(tv.state_dict()), strict=False)
    unexpected_missing = [k for k in result.missing_keys if not k.startswith("head.iou_pred.")]
    if unexpected_missing or result.unexpected_keys:
        raise RuntimeError(f"conversion mismatch: {unexpected_missing} {result.unexpected_keys}")
    return tv.to(device).eval(), model.to(device).eval(), cfg


def compare_detections(got: Dict, expected: Dict, score_tol: float = 1e-5, box_tol: float = 1e-2) -> (bool, str):
    """The tolerances of tests/models/test_detector_torchvision.py (same labels, scores within
    1e-5, boxes within 1e-2 px), made robust to float near-ties: two detections whose scores
    differ by less than ``score_tol`` may come out in either order, and one whose score is
    within ``score_tol`` of the last kept score may be cut by ``max_det`` on one side only.
    Every other detection must be matched one to one."""
    n, m = len(got["scores"]), len(expected["scores"])
    if n == 0 and m == 0:
        return True, "same (0 detections)"
    if n == 0 or m == 0:
        return False, f"DIFFERENT: {n} vs {m} detections"
    gl, el = got["labels"].cpu(), expected["labels"].cpu()
    gs, es = got["scores"].cpu().double(), expected["scores"].cpu().double()
    gb, eb = got["boxes"].cpu().double(), expected["boxes"].cpu().double()
    close = ((gl[:, None] == el[None]) & ((gs[:, None] - es[None]).abs() <= score_tol)
             & ((gb[:, None] - eb[None]).abs().amax(-1) <= box_tol))
    used = torch.zeros(m, dtype=torch.bool)
    pairs, swapped, unmatched = [], 0, []
    for i in range(n):
        if i < m and close[i, i] and not used[i]:
            j = i
        else:
            candidates = (close[i] & ~used).nonzero().flatten()
            if candidates.numel() == 0:
                unmatched.append(i)
                continue
            j = int(candidates[0])
            swapped += 1
        used[j] = True
        pairs.append((i, j))
    cut_got = all(abs(float(gs[i] - gs[-1])) <= score_tol for i in unmatched)
    cut_expected = all(abs(float(es[j] - es[-1])) <= score_tol for j in (~used).nonzero().flatten().tolist())
    i_idx = torch.tensor([p[0] for p in pairs])
    j_idx = torch.tensor([p[1] for p in pairs])
    score_diff = float((gs[i_idx] - es[j_idx]).abs().max()) if pairs else 0.0
    box_diff = float((gb[i_idx] - eb[j_idx]).abs().max()) if pairs else 0.0
    same = cut_got and cut_expected
    notes = []
    if swapped:
        notes.append(f"{swapped} in another order among scores within {score_tol:g}")
    if unmatched or n != m or not bool(used.all()):
        notes.append(f"{n - len(pairs)} / {m - len(pairs)} unmatched" + (" at the max_det cut" if same else ""))
    verdict = "same" if same else "DIFFERENT"
    extra = "; " + "; ".join(notes) if notes else ""
    return same, (f"{verdict} {len(pairs)} of {n} / {m} detections (max score diff {score_diff:.1e}, "
                  f"box diff {box_diff:.1e} px{extra})")


def iadet_infer(model, image: torch.Tensor, amp_dtype=None, inference_mode: bool = False,
                channels_last_input: bool = False) -> List[Dict]:
    """What ``model.predict`` does, with the opt-in fast paths: autocast (head outputs cast to
    float32 before post-processing, as iadet.evaluation.predict does), inference_mode."""
    device = image.device
    grad_mode = torch.inference_mode() if inference_mode else torch.no_grad()
    with grad_mode:
        batch, sizes, original = model.preprocessor([image])
        if channels_last_input:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            out = model(batch)
        out = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in out.items()}
        results = model.postprocessor(out, out["anchors"], sizes)
        for res, (h, w), (oh, ow) in zip(results, sizes, original):
            ratio = torch.tensor([ow / w, oh / h, ow / w, oh / h], dtype=torch.float32, device=device)
            res["boxes"] = res["boxes"] * ratio
    return results


# ----------------------------------------------------------------------------- the table
def format_table(rows: List[Dict]) -> str:
    lines = ["| row | unit | iadet median | min | max | reference | median | min | max | ratio | goal | met | check |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        if r["row"] == "bf16_ap":
            lines.append(f"| bf16_ap | AP | {r['bf16']['AP']:.2f} (bf16) | | | fp32 | {r['fp32']['AP']:.2f} | | "
                         f"| d={r['delta_AP']:+.2f} | abs <= {r['goal']} | {'yes' if r['met'] else 'NO'} | {r['check']} |")
            continue
        digits = ".0f" if r["unit"] == "MiB" else ".4f"
        a, b = r["iadet"], r["reference"]
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        goal = "-" if r["goal"] is None else f"<= {r['goal']}"
        lines.append(f"| {r['row']} | {r['unit']} | {a['median']:{digits}} | {a['min']:{digits}} | {a['max']:{digits}} "
                     f"| {r['reference_name']} | {b['median']:{digits}} | {b['min']:{digits}} | {b['max']:{digits}} "
                     f"| {r['ratio']:.3f} | {goal} | {met} | {r['check'].replace('|', '/')} |")
    return "\n".join(lines)

