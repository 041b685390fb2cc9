"""The quality family ranked (issue 16): the paired protocol of the small-scale study
(:mod:`iadet.tools.study_mini`) applied to every quality estimator, resumable, budgeted.

    python -m iadet.tools.reproduce family [--seeds 0,1,2,3,4] [--atss-with iou_aware] [--dry-run]
    (make compare-mini [MINI_SEEDS=...] [DRY_RUN=1])

Same pretrained start, recipe (``configs/mini/_base_/paper_regime.yaml``), data and paired
seeds as the study of the paper's claim. Arms: RetinaNet, IoU-aware, IoU-aware †, aligned
IoU-aware (plain and †), centerness, RetinaNet + QFL, RetinaNet + VFL, and ATSS on one of them
(``--atss-with``; its 9 candidates per level counted in locations as the ATSS authors do, and in
anchors as mmdetection does); Soft-NMS and IoU-guided NMS re-evaluate the IoU-aware models' checkpoints
(no retraining) right after those train. Every run leaves a summary in
``docs/results_family/runs/``; the report (``docs/results_family.md``,
:mod:`iadet.tools.family_report`) is generated from them.
"""
import argparse
import json
import re
import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from iadet.tools.study_mini import (ARM_BY_NAME, REPO, Arm, StudyRun, config_fingerprint, folder_made,
                                    evaluate_checkpoint, metric_fields, parse_seeds, prepare_study, run_one,
                                    summary_head, summary_is_current, write_summary)
from iadet.tools.study_starts import foreign_seeds, left_alone_message

FAMILY_ARMS = (
    ARM_BY_NAME["retinanet"], ARM_BY_NAME["iou_aware"], ARM_BY_NAME["iou_aware_grad"],
    Arm("aligned", "configs/mini/family/iou_aware_aligned.yaml", "aligned IoU-aware", "paper", "family"),
    Arm("aligned_grad", "configs/mini/family/iou_aware_aligned_grad.yaml", "aligned IoU-aware †", "paper", "family"),
    Arm("centerness", "configs/mini/family/centerness.yaml", "centerness", "paper", "family"),
    Arm("qfl", "configs/mini/family/qfl.yaml", "RetinaNet + QFL", "paper", "family"),
    Arm("vfl", "configs/mini/family/vfl.yaml", "RetinaNet + VFL", "paper", "family"),
)
# Evaluation-time variants: name -> the overrides of model.test applied to the arm's checkpoint.
EVAL_VARIANTS = {"soft_nms": ("model.test.nms=soft_gaussian",),
                 "iou_guided_nms": ("model.test.nms=iou_guided", "model.test.alpha=1.0")}
VARIANT_BASES = ("iou_aware", "iou_aware_grad")


# ATSS on an arm, two ways of counting its topk = 9 candidates per level on 9 anchors per
# location: prefix -> (title suffix, options). ``atss_loc``: 9 locations, all their anchors (the
# ATSS authors' code); ``atss``: 9 anchors, one location (mmdetection's count, and the only rule
# before ``atss_topk_unit`` existed: that arm's earlier runs keep their name and fingerprint).
ATSS_BY_LOCATION, ATSS_BY_ANCHOR = "atss_loc", "atss"
ATSS_RULES = {ATSS_BY_LOCATION: (" + ATSS", ("model.assigner.type=atss", "model.assigner.atss_topk_unit=location")),
              ATSS_BY_ANCHOR: (" + ATSS (k in anchors)", ("model.assigner.type=atss",))}


def atss_arms(base: Arm) -> Tuple[Arm, ...]:
    """ATSS assignment on ``base``'s config (the issue: "ATSS with the best of them"), both counts."""
    return tuple(replace(base, name=f"{prefix}_{base.name}", title=base.title + suffix, role="family",
                         opts=base.opts + options) for prefix, (suffix, options) in ATSS_RULES.items())


def arms_of(atss_with: str, names: Optional[List[str]] = None) -> Tuple[Arm, ...]:
    by_name = {a.name: a for a in FAMILY_ARMS}
    if atss_with not in by_name:
        raise ValueError(f"--atss-with: unknown arm {atss_with!r}; choose from {', '.join(by_name)}")
    arms = FAMILY_ARMS + atss_arms(by_name[atss_with])
    if names:
        unknown = [n for n in names if n not in {a.name for a in arms}]
        if unknown:
            raise ValueError(f"--arms: unknown {', '.join(unknown)}; choose from {', '.join(a.name for a in arms)}")
        arms = tuple(a for a in arms if a.name in names)
    return arms


def plan(seeds: List[int], arms) -> List[StudyRun]:
    """Seed-major: every arm of seed 0, then seed 1, ... (a partial study is always paired)."""
    return [StudyRun(arm, seed, curve=seed == seeds[0]) for seed in seeds for arm in arms]


def variant_run(base: StudyRun, variant: str) -> StudyRun:
    arm = replace(base.arm, name=f"{base.arm.name}_{variant}", title=f"{base.arm.title}, {variant}",
                  opts=base.arm.opts + EVAL_VARIANTS[variant])
    return StudyRun(arm, base.seed, curve=False)


def evaluate_variant(base: StudyRun, variant: str, checkpoint: Path, work: Path, results: Path, opts: List[str],
                     pretrained: Dict) -> Dict:
    """Re-evaluate ``base``'s ``checkpoint`` with the variant's suppression; its summary."""
    run = variant_run(base, variant)
    run_opts = [f"train.seed={run.seed}", *run.arm.opts, *opts]
    if run.arm.regime == "paper":
        run_opts.append(f"model.backbone.init={pretrained['path']}")
    t0 = time.time()
    metrics = evaluate_checkpoint(run, checkpoint, work / base.name / f"eval_{variant}",
                                  run_opts, work / "commands.txt")
    summary = {**summary_head(run, run_opts, config_fingerprint(run, opts), pretrained), "evaluates": base.name,
               "train_seconds": 0.0, "eval_seconds": round(time.time() - t0, 1), "resumed": False,
               **metric_fields(metrics), "learning_curve": []}
    write_summary(summary, results / "runs")
    return summary


def _repo_path(path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else REPO / path


def take_over(source: Path, target: Path, fingerprint: str, pretrained_sha256: str) -> bool:
    """Copy the study of the paper's claim's summary of the same run (same config fingerprint
    and pretrained start, hence on one CPU type the same model) instead of training it again."""
    if not summary_is_current(source, fingerprint, pretrained_sha256):
        return False
    summary = json.loads(source.read_text())
    summary["taken_over_from"] = str(source)
    write_summary(summary, target.parent)
    return True


def checkpoint_of(summary_path: Path, folders: List[Path]) -> Optional[Path]:
    """The ``latest.pth`` of the first run folder that made this summary (its last training
    record has the summary's losses), or None: the run must be trained again."""
    summary = json.loads(summary_path.read_text())
    for folder in folders:
        if (folder / "latest.pth").is_file() and folder_made(folder, summary):
            return folder / "latest.pth"
    return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m iadet.tools.reproduce family", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2,3,4", help="paired seeds of every arm")
    p.add_argument("--arms", default=None, help="comma-separated subset of the arms")
    p.add_argument("--atss-with", default="iou_aware", help="the arm that also trains with ATSS assignment")
    p.add_argument("--work-dir", default=None, help="run folders (default work_dirs/compare_mini[_dry_run])")
    p.add_argument("--results-dir", default=None, help="summaries (default docs/results_family)")
    p.add_argument("--report", default=None, help="the report (default docs/results_family.md)")
    p.add_argument("--pretrained", default="data/pretrained/resnet18_shapes.pth", help="the pretrained start")
    p.add_argument("--reuse", default=None,
                   help="summaries of the study of the paper's claim (default docs/results_mini; a dry run: "
                        "none): its RetinaNet and IoU-aware runs with this config and pretrained start are taken "
                        "over, not retrained ('none': retrain)")
    p.add_argument("--reuse-work", default="work_dirs/reproduce_mini",
                   help="that study's run folders: their checkpoints serve the Soft-NMS / IoU-guided NMS variants")
    p.add_argument("--dry-run", action="store_true", help="2 iterations at 96 px on a tiny set: tests the pipeline")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from iadet.tools.family_report import write_family_report

    args = parse_args(argv)
    try:
        arms = arms_of(args.atss_with, [a for a in re.split(r"[,\s]+", args.arms or "") if a] or None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    work, results, report, opts, pretrained = prepare_study(args, "compare_mini", "docs/results_family",
                                                            "docs/results_family.md")
    command = "python -m iadet.tools.reproduce family " + " ".join(shlex.quote(a) for a in (argv or sys.argv[2:]))
    runs = plan(parse_seeds(args.seeds), arms)
    reuse_arg = args.reuse or ("none" if args.dry_run else "docs/results_mini")
    reuse = None if reuse_arg == "none" else _repo_path(reuse_arg)
    foreign = foreign_seeds([results, reuse], pretrained["sha256"], parse_seeds(args.seeds))
    for i, run in enumerate(runs):
        summary = results / "runs" / f"{run.name}.json"
        if run.seed in foreign:
            print(f"[{i + 1}/{len(runs)}] " + left_alone_message(run.name, run.seed, foreign[run.seed],
                                                                 pretrained["sha256"], results))
            continue
        fingerprint = config_fingerprint(run, opts)
        current = summary_is_current(summary, fingerprint, pretrained["sha256"], work / run.name)
        if not current and reuse is not None and run.arm.role != "family":
            current = take_over(reuse / "runs" / f"{run.name}.json", summary, fingerprint, pretrained["sha256"])
        variants = [v for v in EVAL_VARIANTS if run.arm.name in VARIANT_BASES]
        pending = [v for v in variants if not summary_is_current(
            results / "runs" / f"{variant_run(run, v).name}.json",
            config_fingerprint(variant_run(run, v), opts), pretrained["sha256"])]
        if current and not pending:
            print(f"[{i + 1}/{len(runs)}] {run.name}: summary exists, not redone")
            continue
        if not current and summary.is_file():
            shutil.rmtree(work / run.name, ignore_errors=True)  # never resume a checkpoint of another config
        print(f"[{i + 1}/{len(runs)}] {run.name}", flush=True)
        checkpoint = checkpoint_of(summary, [work / run.name, _repo_path(args.reuse_work) / run.name]) if current else None
        if checkpoint is None:
            # a variant needs the checkpoint: a run finished in an earlier session is trained
            # again (deterministic on one CPU type, so the same model)
            run_one(run, work, results, opts, pretrained)
            checkpoint = work / run.name / "latest.pth"
        for variant in pending:
            evaluate_variant(run, variant, checkpoint, work, results, opts, pretrained)
        write_family_report(results, report, command=command, dry_run=args.dry_run)
    path = write_family_report(results, report, command=command, dry_run=args.dry_run)
    print(f"\nreport written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
