"""iadet against its references, measured side by side (issue 7).

Every row times an iadet path and its reference in this process, on the same inputs and the
same weights, alternating the two (order reversed every repeat) after a warm-up, and reports
median / min / max seconds, the ratio iadet / reference, the goal and whether it is met.
Where the two must agree (detections, losses, NMS keeps, COCO stats) the row also checks it.

Rows (``--only``, comma-separated; default all but the diagnostic ``fast_paths`` and
``profile``; ``--only all`` runs every row):

  r50_fp32      whole R50-FPN inference, batch 1, fp32: iadet ``model.predict`` vs torchvision
                ``RetinaNet([img])`` (eval, no_grad), both from the same float image and each
                doing its own normalise / resize / pad / post-processing; same detections.
  r50_fp32_fast the same with iadet's fp32 fast path: frozen BN folded into the convs
                (``iadet.models.fuse``) and channels-last weights; same detections.
  r50_bf16      iadet under ``torch.autocast(bfloat16)`` (head outputs cast to float32 before
                post-processing, as ``iadet.evaluation.predict`` does) vs torchvision fp32.
  r50_bf16_fast the same with BN folded and channels-last weights.
  bf16_ap       AP of the quickstart checkpoint on the synthetic val set, fp32 vs bf16 autocast.
  postprocess   decode + top-k + NMS (+ rescale to the original image) on the same head outputs:
                iadet ``PostProcessor`` vs torchvision ``postprocess_detections`` +
                ``transform.postprocess`` (and its per-level split).
  nms           1k / 5k / 20k clustered boxes, 80 classes: ``iadet.ops.nms.batched_nms`` vs
                ``torchvision.ops.batched_nms``.
  train_step    forward + losses + backward + SGD step, same weights / images / boxes.
  train_step_fast  iadet with bf16 autocast, and with channels-last weights, vs torchvision fp32.
  loss          target assignment + losses alone on the same head outputs and anchors.
  coco_eval     5,000 images x 100 detections (scripts/bench_eval.py): iadet fast evaluator vs
                pycocotools and vs faster-coco-eval.
  iou_branch    iadet with ``model.head.iou_branch`` true vs false (whole predict and forward).
  train_memory  peak memory of one training step (CPU: each side in a fresh subprocess, peak
                RSS above the RSS before the step; CUDA: ``max_memory_allocated``).
  fast_paths    iadet inference variants against plain iadet: inference_mode, folded BN,
                channels_last, bf16 and combinations (same detections checked for fp32 ones).
  profile       torch.profiler tables (top ops) and a per-stage breakdown of both detectors.

Examples::

    PYTHONPATH=. python scripts/bench.py                       # the issue's rows, full sizes (~8.5 min, 2 cores)
    PYTHONPATH=. python scripts/bench.py --only all --repeats 5  # plus fast_paths and profile (~15 min)
    PYTHONPATH=. python scripts/bench.py --quick --threads 1   # small sizes, a smoke run
    PYTHONPATH=. python scripts/bench.py --only nms,postprocess --repeats 9
    PYTHONPATH=. python scripts/bench.py --device cuda

The reference detector is torchvision's ``retinanet_resnet50_fpn`` as torchvision builds it
around pretrained weights (``FrozenBatchNorm2d``, layer2-4 trainable: what
``configs/compat/torchvision_retinanet_r50_fpn.yaml`` mirrors), carrying the random weights
of ``retinanet_resnet50_fpn(weights=None, weights_backbone=None)`` calibrated as
``tests/models/test_detector_torchvision.py`` does (its ``nn.BatchNorm2d`` statistics copied
into the frozen layers); iadet gets the same weights through
``iadet.convert.convert_torchvision_retinanet``.
"""
import argparse
import contextlib
import copy
import ctypes
import gc
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torchvision
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import iadet  # noqa: E402
from iadet.convert import convert_torchvision_retinanet  # noqa: E402
from iadet.models.fuse import fuse_frozen_batchnorm, to_channels_last  # noqa: E402

COMPAT_CONFIG = REPO / "configs" / "compat" / "torchvision_retinanet_r50_fpn.yaml"
COCO128 = REPO.parent / "shared" / "data" / "coco128"
ALL_ROWS = ("r50_fp32", "r50_fp32_fast", "r50_bf16", "r50_bf16_fast", "bf16_ap", "postprocess", "nms",
            "train_step", "train_step_fast", "loss", "coco_eval", "iou_branch", "train_memory", "fast_paths",
            "profile")

# diagnostic rows, not run by default (``--only all`` or naming them runs them): they add ~2.5 min
DIAGNOSTIC_ROWS = ("fast_paths", "profile")
DEFAULT_ROWS = tuple(r for r in ALL_ROWS if r not in DIAGNOSTIC_ROWS)

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
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


# ----------------------------------------------------------------------------- the bench
class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.quick = args.quick
        self.infer_size = (320, 480) if args.quick else (800, 1216)
        self.train_batch, self.train_size = (2, 256) if args.quick else (2, 512)
        self.eval_images = 500 if args.quick else 5000
        self.rows: List[Dict] = []
        self.profiles: Dict[str, str] = {}
        self._infer = None
        self._train = None

    def log(self, text: str) -> None:
        print(text, flush=True)

    # -- shared set-ups
    def infer_setup(self):
        if self._infer is None:
            image, source = bench_image(self.infer_size)
            tv, model, cfg = detector_pair(image, self.device)
            image = image.to(self.device)
            self._infer = {"image": image, "image01": image.float() / 255, "image255": image.float(),
                           "tv": tv, "model": model, "cfg": cfg, "source": source}
            self.log(f"inference input: {source}")
        return self._infer

    def train_setup(self):
        if self._train is None:
            images = [bench_image((self.train_size, self.train_size), i)[0] for i in range(self.train_batch)]
            targets, source = train_targets(self.train_batch, self.train_size)
            tv, model, cfg = detector_pair(images[0], self.device)
            images = [im.to(self.device) for im in images]
            targets = [{k: v.to(self.device) for k, v in t.items()} for t in targets]
            self._train = {"images01": [im.float() / 255 for im in images],
                           "images255": [im.float() for im in images], "targets": targets,
                           "tv": tv, "model": model, "cfg": cfg, "source": source,
                           "initial": (copy.deepcopy(tv.state_dict()), copy.deepcopy(model.state_dict()))}
            self.log(f"training input: {self.train_batch} x {self.train_size}x{self.train_size} images, "
                     f"{source} ({sum(len(t['boxes']) for t in targets)} boxes)")
        return self._train

    # -- rows
    def row_r50_fp32(self, fast: bool = False):
        s = self.infer_setup()
        tv, model = s["tv"], s["model"]
        if fast:
            model = to_channels_last(fuse_frozen_batchnorm(copy.deepcopy(model)))
            run_iadet = lambda: iadet_infer(model, s["image255"])[0]  # noqa: E731
        else:
            run_iadet = lambda: model.predict(s["image255"])[0]  # noqa: E731
        with torch.no_grad():
            runners = {"iadet": run_iadet, "torchvision": lambda: tv([s["image01"]])[0]}
            times, results = alternate(runners, self.args.repeats, self.device)
        _, check = compare_detections(results["iadet"], results["torchvision"])
        h, w = self.infer_size
        what = (f"R50-FPN inference {h}x{w}, batch 1, fp32, from the same float image; iadet "
                + ("with BN folded + channels_last (fast path)" if fast else "model.predict (defaults)"))
        self.rows.append(make_row("r50_fp32_fast" if fast else "r50_fp32", what, times["iadet"],
                                  times["torchvision"], "torchvision RetinaNet", GOALS["r50_fp32"], check))

    def row_r50_fp32_fast(self):
        self.row_r50_fp32(fast=True)

    def row_r50_bf16(self, fast: bool = False):
        s = self.infer_setup()
        tv, model = s["tv"], s["model"]
        if fast:
            model = to_channels_last(fuse_frozen_batchnorm(copy.deepcopy(model)))
        with torch.no_grad():
            runners = {"iadet": lambda: iadet_infer(model, s["image255"], amp_dtype=torch.bfloat16)[0],
                       "torchvision": lambda: tv([s["image01"]])[0]}
            times, results = alternate(runners, self.args.repeats, self.device)
            batch, _, _ = model.preprocessor([s["image255"]])
            fp32 = s["model"](batch)
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                bf16 = model(batch)
        logit_diff = float((bf16["cls_logits"].float() - fp32["cls_logits"]).abs().max())
        delta_diff = float((bf16["bbox_deltas"].float() - fp32["bbox_deltas"]).abs().max())
        check = (f"bf16 {len(results['iadet']['scores'])} vs torchvision fp32 {len(results['torchvision']['scores'])} "
                 f"detections; max logit diff {logit_diff:.3f}, delta diff {delta_diff:.3f} (accuracy: row bf16_ap)")
        h, w = self.infer_size
        what = (f"R50-FPN inference {h}x{w}, iadet bf16 autocast" + (" + BN folded + channels_last" if fast else "")
                + " vs torchvision fp32")
        self.rows.append(make_row("r50_bf16_fast" if fast else "r50_bf16", what, times["iadet"],
                                  times["torchvision"], "torchvision RetinaNet fp32", GOALS["r50_bf16"], check))

    def row_r50_bf16_fast(self):
        self.row_r50_bf16(fast=True)

    def row_bf16_ap(self):
        from iadet.checkpoint import load_detector_weights
        from iadet.evaluation.metrics import evaluate_coco
        from iadet.evaluation.predict import coco_ground_truth, predict_dataset

        checkpoint = REPO / "work_dirs" / "quickstart" / "latest.pth"
        if not checkpoint.is_file():
            self.log(f"bf16_ap: skipped, {checkpoint} not found (run `make quickstart`)")
            return
        cfg = iadet.load_config(REPO / "configs" / "quickstart.yaml")
        model = iadet.build_detector(cfg)
        load_detector_weights(model, checkpoint)
        model.to(self.device).eval()
        from iadet.builder import build_dataset

        dataset = build_dataset(cfg, "val")
        gt = coco_ground_truth(dataset)
        aps, times = {}, {}
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            start = time.perf_counter()
            results = predict_dataset(model, dataset, batch_size=8, device=self.device, progress=False,
                                      amp_dtype=dtype)
            times[name] = time.perf_counter() - start
            with contextlib.redirect_stdout(io.StringIO()):
                aps[name] = evaluate_coco(gt, results)
        delta = aps["bf16"]["AP"] - aps["fp32"]["AP"]
        record = {"row": "bf16_ap", "unit": "AP points",
                  "what": f"quickstart checkpoint on the {len(dataset)} synthetic val images: AP with bf16 autocast "
                          "minus AP in fp32", "fp32": {k: aps["fp32"][k] for k in ("AP", "AP50", "AP75")},
                  "bf16": {k: aps["bf16"][k] for k in ("AP", "AP50", "AP75")}, "delta_AP": delta,
                  "goal": BF16_AP_GOAL, "met": abs(delta) <= BF16_AP_GOAL,
                  "seconds": times, "check": f"AP fp32 {aps['fp32']['AP']:.2f}, bf16 {aps['bf16']['AP']:.2f}"}
        self.rows.append(record)

    def row_postprocess(self):
        s = self.infer_setup()
        tv, model = s["tv"], s["model"]
        with torch.no_grad():
            images, _ = tv.transform([s["image01"]])
            features = list(tv.backbone(images.tensors).values())
            head = tv.head(features)
            anchors = tv.anchor_generator(images, features)
        counts = [f.shape[-2] * f.shape[-1] * model.anchor_generator.num_anchors_per_location for f in features]
        original = [tuple(s["image01"].shape[-2:])]
        sizes = images.image_sizes

        def run_torchvision():  # what RetinaNet.forward does after the head, in eval mode
            split = {k: list(v.split(counts, dim=1)) for k, v in head.items()}
            split_anchors = [list(a.split(counts)) for a in anchors]
            dets = tv.postprocess_detections(split, split_anchors, sizes)
            return tv.transform.postprocess(dets, sizes, original)[0]

        head_out = {"cls_logits": head["cls_logits"], "bbox_deltas": head["bbox_regression"],
                    "num_anchors_per_level": counts}

        def run_iadet():  # what IoUAwareRetinaNet.predict does after the head
            res = model.postprocessor(head_out, anchors[0], sizes)[0]
            (h, w), (oh, ow) = sizes[0], original[0]
            res["boxes"] = res["boxes"] * torch.tensor([ow / w, oh / h, ow / w, oh / h], device=self.device)
            return res

        with torch.no_grad():
            times, results = alternate({"iadet": run_iadet, "torchvision": run_torchvision},
                                       max(self.args.repeats, 7), self.device, warmup=2)
        _, check = compare_detections(results["iadet"], results["torchvision"])
        num_candidates = int((head["cls_logits"].sigmoid() > 0.05).sum())
        h, w = self.infer_size
        self.rows.append(make_row("postprocess", f"post-processing of the {h}x{w} head outputs "
                                  f"({head['cls_logits'].shape[1]} anchors, {num_candidates} scores > 0.05)",
                                  times["iadet"], times["torchvision"], "torchvision postprocess_detections",
                                  GOALS["postprocess"], check))

    def row_nms(self):
        from iadet.ops.nms import batched_nms
        from tests.ops.test_nms import clustered_detections, per_class_torchvision_nms

        for num_boxes in (1000, 5000, 20000):
            generator = torch.Generator().manual_seed(num_boxes)  # bench_nms.py's inputs (seed 0)
            boxes, scores, labels = (t.to(self.device) for t in clustered_detections(num_boxes, 80, generator))
            runners = {"iadet": lambda: batched_nms(boxes, scores, labels, 0.5),
                       "torchvision": lambda: torchvision.ops.batched_nms(boxes, scores, labels, 0.5)}
            times, results = alternate(runners, max(self.args.repeats, 9), self.device, warmup=2)
            if torch.equal(results["iadet"], results["torchvision"]):
                check = f"identical keeps ({results['iadet'].numel()})"
            elif torch.equal(results["iadet"], per_class_torchvision_nms(boxes, scores, labels, 0.5)):
                check = "differs from batched_nms' coordinate-offset trick, equal to per-class torchvision nms"
            else:
                check = "DIFFERENT keeps"
            self.rows.append(make_row(f"nms_{num_boxes // 1000}k", f"batched NMS, {num_boxes} boxes, 80 classes",
                                      times["iadet"], times["torchvision"], "torchvision.ops.batched_nms",
                                      GOALS["nms"], check))

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
            def run():
                losses = losses_fn()
                total = sum(v for k, v in losses.items() if k != "num_pos")
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                return float(total.detach())
            return run

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

    def row_coco_eval(self):
        import numpy as np

        import bench_eval  # scripts/bench_eval.py
        from iadet.evaluation.fast_coco import CocoBoxEvaluator
        from pycocotools.coco import COCO

        dataset, results = bench_eval.synthetic_coco(self.eval_images, 100, 0)
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = copy.deepcopy(dataset)
            gt.createIndex()
        evaluator = CocoBoxEvaluator(gt)
        runners = {"iadet": lambda: bench_eval.time_fast(evaluator, results),
                   "pycocotools": lambda: bench_eval.time_pycocotools(gt, results)}
        try:
            from faster_coco_eval import COCO as FasterCOCO

            with contextlib.redirect_stdout(io.StringIO()):
                fgt = FasterCOCO(copy.deepcopy(dataset))
            runners["faster-coco-eval"] = lambda: bench_eval.time_faster_coco_eval(fgt, results)
        except ImportError:
            self.log("coco_eval: faster-coco-eval not installed, that row is skipped")
        repeats = max(1, min(self.args.repeats, 3))
        # bench_eval's runners time themselves (result list -> 12 stats); keep their own timings.
        times = {name: [] for name in runners}
        stats = {}
        names = list(runners)
        for rep in range(repeats):
            for name in (names if rep % 2 == 0 else names[::-1]):
                seconds, _, stats[name] = runners[name]()
                times[name].append(seconds)
                self.log(f"  coco_eval {name}: {seconds:.2f}s")
        what = f"COCO box evaluation, {self.eval_images} images x 100 detections (bench_eval.py data)"
        for ref, key in (("pycocotools", "coco_eval_pycocotools"), ("faster-coco-eval", "coco_eval_faster")):
            if ref not in runners:
                continue
            diff = float(np.max(np.abs(stats["iadet"] - stats[ref])))
            self.rows.append(make_row(key, what, times["iadet"], times[ref], ref, GOALS[key],
                                      f"max stat diff vs {ref} {diff:.1e}"))

    def row_iou_branch(self):
        s = self.infer_setup()
        off = s["model"]
        cfg = iadet.load_config(COMPAT_CONFIG, [f"input.min_size={min(self.infer_size)}",
                                                f"input.max_size={max(self.infer_size)}", "model.head.iou_branch=true"])
        on = iadet.build_detector(cfg)
        result = on.load_state_dict(off.state_dict(), strict=False)
        assert set(result.missing_keys) == {"head.iou_pred.weight", "head.iou_pred.bias"}, result
        on.to(self.device).eval()
        with torch.no_grad():  # IoU logits of spread about 1 around 0 (predicted IoU ~0.5, as trained models)
            g = torch.Generator().manual_seed(3)
            conv = on.head.iou_pred
            fan_in = conv.in_channels * 9
            conv.weight.copy_((torch.randn(conv.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5).to(self.device))
            conv.bias.zero_()
            batch, _, _ = on.preprocessor([s["image255"]])
            conv.weight.mul_(1.0 / on(batch)["iou_logits"].std())
            runners = {"iou_on": lambda: on.predict(s["image255"])[0], "iou_off": lambda: off.predict(s["image255"])[0]}
            times, results = alternate(runners, self.args.repeats, self.device)
            forward_runners = {"iou_on": lambda: on(batch), "iou_off": lambda: off(batch)}
            ftimes, _ = alternate(forward_runners, self.args.repeats, self.device)
        h, w = self.infer_size
        check = (f"{len(results['iou_on']['scores'])} vs {len(results['iou_off']['scores'])} detections "
                 "(Eq. 7 scores S = sqrt(p * IoU) pass the 0.05 threshold more often)")
        self.rows.append(make_row("iou_branch", f"IoU branch on vs off, whole predict {h}x{w} (compat config)",
                                  times["iou_on"], times["iou_off"], "iadet without IoU branch",
                                  GOALS["iou_branch"], check))
        self.rows.append(make_row("iou_branch_forward", f"IoU branch on vs off, network forward only {h}x{w}",
                                  ftimes["iou_on"], ftimes["iou_off"], "iadet without IoU branch",
                                  GOALS["iou_branch"], "one extra 3x3 conv (256 -> 9 channels) per level"))

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
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", side,
                           "--memory-inputs", str(Path(tmp) / "inputs.pt"), "--threads", str(torch.get_num_threads())]
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
                    record = json.loads(out.stdout.strip().splitlines()[-1])
                    peaks[side].append(record["peak_above_start_mib"])
                    methods.add(record["method"])
                    self.log(f"  train_memory {side}: peak {record['peak_mib']:.0f} MiB, "
                             f"{record['peak_above_start_mib']:.0f} MiB above the start of the step")
        return peaks, "fresh subprocess per side; " + "; ".join(sorted(methods))

    def row_fast_paths(self):
        s = self.infer_setup()
        model, image = s["model"], s["image255"]
        fused = fuse_frozen_batchnorm(copy.deepcopy(model))
        channels_last = to_channels_last(copy.deepcopy(model))
        fused_cl = to_channels_last(fuse_frozen_batchnorm(copy.deepcopy(model)))
        bf16 = torch.bfloat16
        variants = {
            "plain (no_grad, fp32)": lambda: iadet_infer(model, image)[0],
            "inference_mode": lambda: iadet_infer(model, image, inference_mode=True)[0],
            "fused BN": lambda: iadet_infer(fused, image)[0],
            "channels_last": lambda: iadet_infer(channels_last, image)[0],
            "fused BN + channels_last": lambda: iadet_infer(fused_cl, image)[0],
            "fused BN + inference_mode": lambda: iadet_infer(fused, image, inference_mode=True)[0],
            "bf16": lambda: iadet_infer(model, image, amp_dtype=bf16)[0],
            "bf16 + fused BN": lambda: iadet_infer(fused, image, amp_dtype=bf16)[0],
            "bf16 + fused BN + channels_last": lambda: iadet_infer(fused_cl, image, amp_dtype=bf16)[0],
        }
        times, results = alternate(variants, self.args.repeats, self.device)
        base = "plain (no_grad, fp32)"
        h, w = self.infer_size
        for name, values in times.items():
            if name == base:
                continue
            if name.startswith("bf16"):
                check = f"{len(results[name]['scores'])} detections (bf16: not bitwise comparable)"
            else:
                check = compare_detections(results[name], results[base])[1]
            self.rows.append(make_row(f"fast:{name}", f"iadet inference {h}x{w}: {name} vs plain", values,
                                      times[base], "plain iadet predict", None, check))

    def row_profile(self):
        from torch.profiler import ProfilerActivity, profile, record_function

        s = self.infer_setup()
        model, tv = s["model"], s["tv"]
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])

        def iadet_stages(m=model, amp_dtype=None):
            def run():
                with torch.no_grad():
                    with record_function("iadet.preprocess"):
                        batch, sizes, _ = m.preprocessor([s["image255"]])
                    with torch.autocast(self.device.type, dtype=amp_dtype or torch.bfloat16,
                                        enabled=amp_dtype is not None):
                        with record_function("iadet.backbone"):
                            feats = m.backbone(batch)
                        with record_function("iadet.neck"):
                            feats = m.neck(feats)
                        with record_function("iadet.head"):
                            out = m.head(feats)
                    with record_function("iadet.anchors"):
                        anchors = torch.cat(m.anchor_generator(feats, batch.shape[-2:]))
                    with record_function("iadet.postprocess"):
                        out = {k: (v.float() if torch.is_tensor(v) else v) for k, v in out.items()}
                        m.postprocessor(out, anchors, sizes)
            return run

        def tv_stages():
            with torch.no_grad():
                with record_function("tv.transform"):
                    images, _ = tv.transform([s["image01"]])
                with record_function("tv.backbone+fpn"):
                    feats = list(tv.backbone(images.tensors).values())
                with record_function("tv.head"):
                    head = tv.head(feats)
                with record_function("tv.anchors"):
                    anchors = tv.anchor_generator(images, feats)
                with record_function("tv.postprocess"):
                    counts = [f.shape[-2] * f.shape[-1] * 9 for f in feats]
                    split = {k: list(v.split(counts, dim=1)) for k, v in head.items()}
                    dets = tv.postprocess_detections(split, [list(a.split(counts)) for a in anchors],
                                                     images.image_sizes)
                    tv.transform.postprocess(dets, images.image_sizes, [tuple(s["image01"].shape[-2:])])

        fast = to_channels_last(fuse_frozen_batchnorm(copy.deepcopy(model)))
        for label, fn in (("iadet fp32", iadet_stages()), ("torchvision fp32", tv_stages),
                          ("iadet fp32, BN folded + channels_last", iadet_stages(fast)),
                          ("iadet bf16, BN folded + channels_last", iadet_stages(fast, torch.bfloat16))):
            fn()  # warm-up
            with profile(activities=activities) as prof:
                fn()
            averages = prof.key_averages()
            stages = [(e.key, e.cpu_time_total / 1e3) for e in averages
                      if e.key.startswith(("iadet.", "tv."))]
            stage_text = "\n".join(f"  {k:<22} {ms:10.1f} ms" for k, ms in sorted(stages, key=lambda x: -x[1]))
            table = averages.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=38)
            self.profiles[label] = (f"stages (wall time inside each block):\n{stage_text}\n" if stages else "") + table
            self.log(f"\n=== profile: {label} ===\n{self.profiles[label]}")

    # -- driver
    def run(self, rows):
        for row in rows:
            self.log(f"--- {row}")
            start = time.perf_counter()
            getattr(self, f"row_{row}")()
            self.log(f"    ({time.perf_counter() - start:.1f}s)")


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
        values = losses()
        total = sum(v for k, v in values.items() if k != "num_pos")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

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


# ----------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side, alternating (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated rows, or 'all' (default: all but the diagnostic "
                             f"{', '.join(DIAGNOSTIC_ROWS)}): {', '.join(ALL_ROWS)}")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes for a smoke run (320x480 inference, batch 2 at 256 training, 500 images eval)")
    parser.add_argument("--json-out", default="bench.json")
    parser.add_argument("--memory-child", choices=("iadet", "torchvision"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-inputs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args.memory_child, args.memory_inputs)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but torch.cuda.is_available() is False")
    if args.only is None:
        rows = list(DEFAULT_ROWS)
    elif args.only.strip() == "all":
        rows = list(ALL_ROWS)
    else:
        rows = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ALL_ROWS]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; valid: {', '.join(ALL_ROWS)}")

    torch.manual_seed(0)
    bench = Bench(args)
    info = machine_info(bench.device)
    bench.log(f"machine: {info['cpu']}" + (f", GPU {info['gpu']}" if "gpu" in info else "") +
              f"; threads {info['threads']}; torch {info['torch']}, torchvision {info['torchvision']}; "
              f"load average {info['load_average_at_start']}" + ("; QUICK sizes" if args.quick else ""))
    started = time.time()
    try:
        bench.run(rows)
    finally:
        table = format_table(bench.rows)
        print("\n" + table)
        info["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        payload = {"machine": info, "args": vars(args), "quick": args.quick,
                   "sizes": {"inference": bench.infer_size, "train_batch": bench.train_batch,
                             "train_size": bench.train_size, "eval_images": bench.eval_images},
                   "seconds": time.time() - started, "rows": bench.rows, "profiles": bench.profiles,
                   "table_markdown": table}
        Path(args.json_out).write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
