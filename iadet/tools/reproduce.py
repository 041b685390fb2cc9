"""Reproduce the paper: train, evaluate, sweep α, bound with IoU_truth, and report.

    python -m iadet.tools.reproduce coco [--root data/coco] [--gpus N] [--backbones r50,r101,x101] [--dry-run]
    python -m iadet.tools.reproduce voc  [--root data/VOCdevkit] [--gpus N] [--backbones r50,r101,x101] [--dry-run]
    python -m iadet.tools.reproduce mini [--seeds 0,1,2,3,4] [--control-seeds 0,1,2] [--dry-run]
    python -m iadet.tools.reproduce family [--seeds 0,1,2,3,4] [--atss-with iou_aware] [--dry-run]

(``make reproduce-coco``, ``make reproduce-voc``, ``make reproduce-mini``.)

- ``coco``: Table 1's three models (RetinaNet, IoU-aware, IoU-aware †) per backbone, trained
  with torchrun on ``--gpus`` GPUs (the linear LR rule handles the batch), evaluated on
  val2017 (and test-dev results written when test-dev is present); α sweeps (Tables 3/4) and
  the IoU_truth upper bound (Table 6) of the IoU-aware models; ``report.md`` with iadet's
  numbers next to the paper's.
- ``voc``: the same for Table 5 (VOC07+12 -> VOC07 test).
- ``mini``: the paired, powered study at CPU scale on the synthetic dataset
  (:mod:`iadet.tools.study_mini`; ``docs/results_mini.md`` is its generated report).
- ``family``: the quality family ranked by the same protocol (:mod:`iadet.tools.study_family`;
  ``docs/results_family.md``).
- ``--dry-run``: the whole pipeline for 2 iterations at 128 px on a tiny dataset laid out
  exactly like COCO / VOC (:mod:`iadet.tools.dry_run_data`), so the recipe is tested on CPU.

Every step is a command printed before it runs; training resumes (``--resume auto``) and a
finished evaluation is not redone, so an interrupted reproduction continues where it stopped.
"""
import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from iadet.tools.reproduce_report import write_report

REPO = Path(__file__).resolve().parents[2]
SWEEP_ALPHAS = "none,1.0,0.9,0.8,0.7,0.6,0.5,0.4,0.3"
BACKBONES = {"r50": "resnet50", "r101": "resnet101", "x101": "resnext101_32x8d"}
CONFIG_BACKBONE = {"r50": "r50", "r101": "r101", "x101": "x101_32x8d"}  # the token in config names
IMAGENET_FILES = {"resnet50": "resnet50-0676ba61.pth", "resnet101": "resnet101-63fe2227.pth",
                  "resnext101_32x8d": "resnext101_32x8d-8ba56ff5.pth"}
METHODS = ("retinanet", "iou_aware", "iou_aware_grad")  # the last is the paper's "†"
# Beyond the paper (issue 15; --methods, R50 only): name -> (config stem, the trained model it
# only evaluates differently, or None). The published COCO AP of each is in configs/README.md.
FAMILY = {"qfl": ("family/retinanet_qfl_r50_fpn_1x_coco", None), "vfl": ("family/retinanet_vfl_r50_fpn_1x_coco", None),
          "centerness": ("family/retinanet_centerness_r50_fpn_1x_coco", None),
          "atss": ("family/retinanet_atss_r50_fpn_1x_coco", None),
          "aligned": ("family/iou_aware_aligned_retinanet_r50_fpn_1x_coco", None),
          "aligned_grad": ("family/iou_aware_aligned_retinanet_r50_fpn_1x_coco_grad", None),
          "soft_nms": ("family/iou_aware_retinanet_r50_fpn_1x_coco_soft_nms", "iou_aware"),
          "iou_guided_nms": ("family/iou_aware_retinanet_r50_fpn_1x_coco_iou_guided_nms", "iou_aware")}
# The paper config each family config departs from (by its one option): what its cost and its
# accuracy are compared against (scripts/bench_rows_family.py, tests/config/test_family_configs.py).
FAMILY_BASE = {"qfl": "retinanet_r50_fpn_1x_coco", "vfl": "retinanet_r50_fpn_1x_coco",
               "centerness": "iou_aware_retinanet_r50_fpn_1x_coco", "atss": "retinanet_r50_fpn_1x_coco",
               "aligned": "iou_aware_retinanet_r50_fpn_1x_coco", "aligned_grad": "iou_aware_retinanet_r50_fpn_1x_coco_grad",
               "soft_nms": "iou_aware_retinanet_r50_fpn_1x_coco", "iou_guided_nms": "iou_aware_retinanet_r50_fpn_1x_coco"}
# Tables 2-4: R50 at [600, 1000] (the paper's ablation setting), with the L2 IoU loss too
ABLATION_METHODS = ("retinanet", "iou_aware", "iou_aware_grad", "iou_aware_l2")
DRY_RUN_OPTS = ["train.max_iters=2", "train.lr_steps=[1]", "train.warmup_iters=1", "train.batch_size=2",
                "train.eval_interval=0", "train.log_interval=1", "data.num_workers=0", "input.min_size=128",
                "input.max_size=128"]


@dataclass
class Run:
    """One trained model: its config, the overrides of this reproduction, where it lives."""

    name: str
    config: Path
    method: str
    backbone: str
    opts: List[str] = field(default_factory=list)
    seed: Optional[int] = None
    variant: str = ""  # "" (Table 1 / 5), "600" (the ablation models of Tables 2-4) or "family"
    evaluates: Optional[str] = None  # an evaluation-time variant: the run whose checkpoint it evaluates

    @property
    def iou_aware(self) -> bool:
        """Has a quality branch (α sweep and IoU_truth bound)."""
        return self.method not in ("retinanet", "qfl", "vfl", "atss")


def paper_config(kind: str, method: str, backbone: str, variant: str = "") -> Path:
    """The config of one paper row (see configs/README.md)."""
    stem = "retinanet" if method == "retinanet" else "iou_aware_retinanet"
    suffix = {"coco": "1x_coco", "voc": "voc0712"}[kind] + (f"_{variant}" if variant else "")
    extra = {"iou_aware_grad": "_grad", "iou_aware_l2": "_l2"}.get(method, "")
    return REPO / "configs" / f"{stem}_{CONFIG_BACKBONE[backbone]}_fpn_{suffix}{extra}.yaml"


def plan(args) -> List[Run]:
    runs = []
    for backbone in re.split(r"[,\s]+", args.backbones.strip()):
        if backbone not in BACKBONES:
            raise ValueError(f"--backbones: unknown {backbone!r}; choose from {', '.join(BACKBONES)}")
        runs += [Run(f"{method}_{backbone}", paper_config(args.kind, method, backbone), method, backbone)
                 for method in METHODS]
    if args.ablations and args.kind == "coco":
        runs += [Run(f"{method}_r50_600", paper_config("coco", method, "r50", "600"), method, "r50", variant="600")
                 for method in ABLATION_METHODS]
    methods = [m for m in re.split(r"[,\s]+", (getattr(args, "methods", None) or "").strip()) if m]
    if methods == ["all"]:
        methods = list(FAMILY)
    unknown = [m for m in methods if m not in FAMILY]
    if unknown:
        raise ValueError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(FAMILY)} or all")
    if methods and args.kind != "coco":
        raise ValueError("--methods: the quality-family configs are COCO configs (reproduce coco)")
    for method in methods:
        stem, evaluates = FAMILY[method]
        if evaluates and not any(r.name == f"{evaluates}_r50" for r in runs):
            runs.append(Run(f"{evaluates}_r50", paper_config("coco", evaluates, "r50"), evaluates, "r50"))
        runs.append(Run(f"{method}_r50", REPO / "configs" / f"{stem}.yaml", method, "r50", variant="family",
                        evaluates=f"{evaluates}_r50" if evaluates else None))
    return runs


def data_opts(kind: str, root: Path) -> List[str]:
    if kind == "coco":
        return [f"data.train.ann_file={root}/annotations/instances_train2017.json",
                f"data.train.image_dir={root}/train2017",
                f"data.val.ann_file={root}/annotations/instances_val2017.json", f"data.val.image_dir={root}/val2017",
                f"data.test.ann_file={root}/annotations/image_info_test-dev2017.json",
                f"data.test.image_dir={root}/test2017"]
    if kind == "voc":
        return [f"data.train.voc_root={root}", f"data.val.voc_root={root}"]
    return []


def missing_data(kind: str, root: Path) -> List[str]:
    """What the real dataset lacks (empty: present)."""
    if kind == "coco":
        needed = ["annotations/instances_train2017.json", "annotations/instances_val2017.json", "train2017", "val2017"]
    else:
        needed = ["VOC2007/ImageSets/Main/trainval.txt", "VOC2007/ImageSets/Main/test.txt",
                  "VOC2012/ImageSets/Main/trainval.txt", "VOC2007/JPEGImages", "VOC2012/JPEGImages"]
    return [str(root / n) for n in needed if not (root / n).exists()]


HOW_TO_GET = {
    "coco": ("COCO 2017 is needed: from https://cocodataset.org/#download get train2017.zip, val2017.zip,\n"
             "annotations_trainval2017.zip (and test2017.zip + image_info_test2017.zip for test-dev), and\n"
             "unpack them so that {root}/train2017, {root}/val2017 and {root}/annotations exist\n"
             "(or pass COCO_ROOT=/path/to/coco)."),
    "voc": ("PASCAL VOC is needed: from http://host.robots.ox.ac.uk/pascal/VOC/ get VOCtrainval_06-Nov-2007.tar,\n"
            "VOCtest_06-Nov-2007.tar and VOCtrainval_11-May-2012.tar and extract them so that\n"
            "{root}/VOC2007 and {root}/VOC2012 exist (or pass VOC_ROOT=/path/to/VOCdevkit)."),
}


def run_command(cmd: List[str], log: Path) -> None:
    print("+ " + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    with open(log, "a") as f:
        f.write(" ".join(shlex.quote(str(c)) for c in cmd) + "\n")
    done = subprocess.run([str(c) for c in cmd], cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"step failed with exit code {done.returncode}: {' '.join(map(str, cmd))}")


def launcher(gpus: int) -> List[str]:
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    return [sys.executable]


def train_and_evaluate(run: Run, work: Path, opts: List[str], gpus: int, kind: str, root: Optional[Path]) -> None:
    folder = work / run.name
    device = [] if gpus > 0 else ["--device", "cpu"]
    checkpoint = work / (run.evaluates or run.name) / "latest.pth"
    if run.evaluates is None:  # an evaluation-time variant reuses the checkpoint of the model it evaluates
        run_command(launcher(gpus) + ["-m", "iadet.train", "--config", run.config, "--work-dir", folder, "--resume",
                                      "auto", "--no-progress", *device, "--opts", *opts, *run.opts], work / "commands.txt")
    if (folder / "eval" / "metrics.json").is_file():
        print(f"{folder / 'eval' / 'metrics.json'} exists: evaluation already done")
        return
    sweep = ["--alphas", SWEEP_ALPHAS, "--iou-source", "both", "--plots", folder / "plots"] if run.iou_aware else []
    run_command(launcher(gpus) + ["-m", "iadet.eval", "--config", run.config, "--checkpoint", checkpoint,
                                  "--out", folder / "eval", "--no-progress", *device, *sweep, "--opts", *opts, *run.opts],
                work / "commands.txt")
    if kind == "coco" and root is not None and (root / "annotations" / "image_info_test-dev2017.json").is_file() \
            and (root / "test2017").is_dir():
        run_command(launcher(gpus) + ["-m", "iadet.eval", "--config", run.config, "--checkpoint",
                                      checkpoint, "--split", "test", "--out", folder / "test_dev",
                                      "--no-progress", *device, "--opts", *opts, *run.opts], work / "commands.txt")


def machine_description(gpus: int) -> str:
    import torch
    if gpus > 0 and torch.cuda.is_available():
        return f"{gpus} x {torch.cuda.get_device_name(0)}"
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m iadet.tools.reproduce", description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=("coco", "voc"),
                   help="(mini, family: see python -m iadet.tools.reproduce mini --help / family --help)")
    p.add_argument("--root", default=None, help="dataset root (default data/coco or data/VOCdevkit)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs to train on (default: all visible; 0: CPU)")
    p.add_argument("--backbones", default="r50", help="comma-separated: r50, r101, x101")
    p.add_argument("--pretrained-dir", default="data/pretrained",
                   help="folder with torchvision's ImageNet checkpoints (" + ", ".join(IMAGENET_FILES.values()) + ")")
    p.add_argument("--ablations", action="store_true",
                   help="coco: also train the R50 [600, 1000] models of Tables 2-4 (L2/BCE, α sweeps)")
    p.add_argument("--methods", default="", help="coco, R50: also the quality family (issue 15), comma-separated: "
                   + ", ".join(FAMILY) + ", or all")
    p.add_argument("--dry-run", action="store_true", help="2 iterations on a tiny COCO/VOC-shaped synthetic set")
    p.add_argument("--work-dir", default=None, help="default work_dirs/reproduce_<kind>[_dry_run]")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["mini"]:  # the paired small-scale study has its own runner
        from iadet.tools.study_mini import main as study_main
        return study_main(argv[1:])
    if argv[:1] == ["family"]:  # the quality family ranked by the same protocol (issue 16)
        from iadet.tools.study_family import main as family_main
        return family_main(argv[1:])
    args = parse_args(argv)
    import torch
    gpus = torch.cuda.device_count() if args.gpus is None else args.gpus
    runs = plan(args)
    root = Path(args.root or {"coco": "data/coco", "voc": "data/VOCdevkit"}[args.kind])
    opts: List[str] = []
    if not args.dry_run:
        missing = missing_data(args.kind, root)
        if missing:  # before anything is written
            print(f"error: {args.kind.upper()} not found; missing: {', '.join(missing)}\n"
                  + HOW_TO_GET[args.kind].format(root=root), file=sys.stderr)
            return 1
        pretrained = {BACKBONES[r.backbone]: Path(args.pretrained_dir) / IMAGENET_FILES[BACKBONES[r.backbone]]
                      for r in runs}
        absent = [str(p) for p in pretrained.values() if not p.is_file()]
        if absent:
            print(f"error: ImageNet weights not found: {', '.join(absent)}\nDownload them from "
                  "https://download.pytorch.org/models/<file name> into --pretrained-dir (default data/pretrained).",
                  file=sys.stderr)
            return 1
        for r in runs:
            r.opts.append(f"model.backbone.init={pretrained[BACKBONES[r.backbone]]}")
    suffix = "_dry_run" if args.dry_run else ""
    work = Path(args.work_dir or f"work_dirs/reproduce_{args.kind}{suffix}")
    work.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        from iadet.tools.dry_run_data import write_coco_layout, write_voc_layout
        root = work / "data" / args.kind
        if not root.is_dir():
            (write_coco_layout if args.kind == "coco" else write_voc_layout)(root)
        opts += DRY_RUN_OPTS + (["model.num_classes=9"] if args.kind == "coco" else [])
    opts = data_opts(args.kind, root) + opts
    start = time.time()
    timings: Dict[str, float] = {}
    for run in runs:
        t0 = time.time()
        train_and_evaluate(run, work, opts, gpus, args.kind, root if args.kind == "coco" else None)
        timings[run.name] = time.time() - t0
    command = "python -m iadet.tools.reproduce " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    report = write_report(args.kind, runs, work, command=command, machine=machine_description(gpus),
                          seconds=time.time() - start, timings=timings, dry_run=args.dry_run)
    print(f"\nreport written to {report}")
    (work / "timings.json").write_text(json.dumps(timings, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
