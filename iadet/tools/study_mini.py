"""The small-scale study of the paper's claim (issue 13): paired, powered, resumable.

    python -m iadet.tools.reproduce mini [--seeds 0,1,2,3,4] [--control-seeds 0,1,2] [--dry-run]
    (make reproduce-mini [SEEDS=...] [CONTROL_SEEDS=...] [DRY_RUN=1])

1. The pretrained start (``python -m iadet.tools.pretrain_shapes``; cached in
   ``data/pretrained/``) is made when absent.
2. Every arm of :data:`ARMS` trains for every seed of its role, seed-major (all main arms of
   seed 0, then seed 1, ...), so a partial study is always paired. One seed gives every arm
   the same shared initial weights, data order and flips (paired initialisation, tested in
   tests/test_paired_init.py). The first seed of each arm evaluates after every epoch (the
   learning curves).
3. Each trained model is evaluated on the 1000 validation images; IoU-aware models with the
   α sweep and IoU_truth in place of the predicted IoU (Tables 3, 4, 6).
4. Each finished run leaves a small JSON summary in ``--results-dir``
   (``docs/results_mini/runs/``, committed): a run whose summary exists is not redone, so the
   study resumes across interruptions and sessions; an unfinished run resumes from its
   ``latest.pth`` in ``--work-dir``.
5. The report (``docs/results_mini.md``, :mod:`iadet.tools.study_report`) is generated from
   the summaries at the end, and whenever asked (``python -m iadet.tools.study_report``).
"""
import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from iadet.io import atomic_write_text
from iadet.tools.study_starts import foreign_seeds, left_alone_message, write_pretrained_record

REPO = Path(__file__).resolve().parents[2]
SWEEP_ALPHAS = "none,1.0,0.9,0.8,0.7,0.6,0.5,0.4,0.3"


@dataclass(frozen=True)
class Arm:
    """One trained variant: its config, which training regime, and its role in the study."""

    name: str
    config: str          # relative to the repository
    title: str
    regime: str          # "paper" (pretrained start, SGD) or "scratch_adamw" (issue 6's study)
    role: str            # "main" (--seeds), "control" (--control-seeds) or "family" (issue 16)
    opts: Tuple[str, ...] = ()  # config overrides of this arm (e.g. the ATSS assigner on another arm's config)

    @property
    def iou_aware(self) -> bool:
        return not self.name.endswith("retinanet")


ARMS = (
    Arm("retinanet", "configs/mini/pretrained/retinanet.yaml", "RetinaNet", "paper", "main"),
    Arm("iou_aware", "configs/mini/pretrained/iou_aware.yaml", "IoU-aware", "paper", "main"),
    Arm("iou_aware_grad", "configs/mini/pretrained/iou_aware_grad.yaml", "IoU-aware †", "paper", "main"),
    Arm("iou_aware_loss_weight0", "configs/mini/pretrained/iou_aware_loss_weight0.yaml",
        "IoU branch, loss weight 0", "paper", "control"),
    Arm("iou_aware_detached_feature", "configs/mini/pretrained/iou_aware_detached_feature.yaml",
        "IoU branch on a detached feature", "paper", "control"),
    Arm("scratch_retinanet", "configs/mini/retinanet.yaml", "RetinaNet (scratch, AdamW)", "scratch_adamw", "control"),
    Arm("scratch_iou_aware", "configs/mini/iou_aware.yaml", "IoU-aware (scratch, AdamW)", "scratch_adamw", "control"),
    Arm("scratch_iou_aware_grad", "configs/mini/iou_aware_grad.yaml", "IoU-aware † (scratch, AdamW)",
        "scratch_adamw", "control"),
)
ARM_BY_NAME = {a.name: a for a in ARMS}

# --dry-run: a few iterations at 96 px on 8 training and 4 validation images, a tiny pretraining
DRY_RUN_OPTS = ["train.max_iters=2", "train.lr_steps=[1]", "train.warmup_iters=1", "train.batch_size=2",
                "train.log_interval=1", "data.num_workers=0", "input.min_size=96", "input.max_size=96",
                "data.synthetic.num_train=8", "data.synthetic.num_val=4", "data.synthetic.height=96",
                "data.synthetic.width=96"]
DRY_RUN_PRETRAIN = {"num_train": 64, "num_val": 32, "epochs": 1, "batch_size": 32, "crop_size": 32}


@dataclass(frozen=True)
class StudyRun:
    arm: Arm
    seed: int
    curve: bool  # evaluate after every epoch (the learning curve)

    @property
    def name(self) -> str:
        return f"{self.arm.name}_seed{self.seed}"


def parse_seeds(text: str) -> List[int]:
    return [int(s) for s in re.split(r"[,\s]+", text.strip()) if s]


def plan(seeds: List[int], control_seeds: List[int], arms=ARMS) -> List[StudyRun]:
    """Main arms seed-major, then the paper-regime controls, then the scratch regime."""
    runs = []
    groups = [([a for a in arms if a.role == "main"], seeds),
              ([a for a in arms if a.role == "control" and a.regime == "paper"], control_seeds),
              ([a for a in arms if a.role == "control" and a.regime != "paper"], control_seeds)]
    for group, group_seeds in groups:
        for seed in group_seeds:
            runs += [StudyRun(arm, seed, curve=seed == group_seeds[0]) for arm in group]
    return runs


def _run(module: str, args: List, log: Path) -> None:
    """Run ``python -m module args`` in this process (no interpreter and torch start-up per
    step: the study has dozens of steps), logging the equivalent command line."""
    import importlib

    argv = [str(a) for a in args]
    line = " ".join(shlex.quote(c) for c in [sys.executable, "-m", module, *argv])
    print("+ " + line, flush=True)
    with open(log, "a") as f:
        f.write(line + "\n")
    try:
        importlib.import_module(module).main(argv)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise RuntimeError(f"step failed with exit code {exc.code}: {line}") from None


def learning_curve(metrics_jsonl: Path) -> List[Dict]:
    """The validation entries of a run's metrics.jsonl: iteration, AP, AP50, AP75, AP90 (the
    last entry of each iteration, so a resumed run's repeated evaluations count once)."""
    points: Dict[int, Dict] = {}
    if metrics_jsonl.is_file():
        for line in metrics_jsonl.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("mode") == "val":
                points[entry["iteration"]] = {k: entry.get(k) for k in ("iteration", "AP", "AP50", "AP75", "AP90")}
    return [points[k] for k in sorted(points)]


def folder_made(folder: Path, summary: Dict) -> bool:
    """``folder`` is the run folder that made ``summary``: its last training record has the
    summary's losses (a folder trained again since, or never, has others)."""
    last = _last_train_record(folder / "metrics.jsonl")
    return bool(last) and {k: v for k, v in last.items() if k.startswith("loss")} == summary.get("final_losses")


def _last_train_record(metrics_jsonl: Path) -> Dict:
    last = {}
    if metrics_jsonl.is_file():
        for line in metrics_jsonl.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("mode") == "train":
                last = entry
    return last


def git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# Settings that name a place on one machine or only decide when the trainer evaluates.
_NOT_FINGERPRINTED = (("model", "backbone", "init"), ("data", "synthetic", "cache_dir"), ("train", "eval_interval"),
                      ("train", "final_eval"))


def _changed_settings(cfg: Dict, defaults: Dict) -> Dict:
    """The part of ``cfg`` that differs from ``defaults`` (nested dicts compared key by key)."""
    changed = {}
    for key, value in cfg.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict):
            value = _changed_settings(value, default)
            if value:
                changed[key] = value
        elif value != default or key not in defaults:
            changed[key] = value
    return changed


def settings_fingerprint(cfg) -> str:
    """sha256 of the settings of a resolved Config that differ from the schema defaults.

    Paths of one machine and the trainer's evaluation timing are left out. Hashing the
    difference from the defaults keeps a summary current when a later version adds a
    setting at a default that reproduces the old behaviour; a changed schedule, loss or
    default value makes it stale."""
    import hashlib

    from iadet.config import config_to_dict, load_config
    tree, defaults = config_to_dict(cfg), config_to_dict(load_config(None))
    for section, *rest in _NOT_FINGERPRINTED:
        node = tree[section]
        for key in rest[:-1]:
            node = node[key]
        node.pop(rest[-1], None)
    changed = _changed_settings(tree, defaults)
    return hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()


def config_fingerprint(run: StudyRun, opts: List[str]) -> str:
    """The fingerprint of a study run's config (its file, seed, arm options and ``opts``)."""
    from iadet.config import load_config
    return settings_fingerprint(load_config(REPO / run.arm.config, [f"train.seed={run.seed}", *run.arm.opts] + opts))


def _run_folder_fingerprint(folder: Path, summary: Dict) -> Optional[str]:
    """The fingerprint of the config a run folder recorded (``config.yaml``), when the folder is
    the one that made ``summary`` (its last training record has the summary's losses)."""
    from iadet.config import ConfigError, load_config
    try:
        if not folder_made(folder, summary):
            return None
        return settings_fingerprint(load_config(folder / "config.yaml"))
    except (OSError, ValueError, ConfigError):
        return None


def summary_is_current(path: Path, fingerprint: str, pretrained_sha256: Optional[str],
                       run_folder: Optional[Path] = None) -> bool:
    """The summary was made with this config and, in the paper regime, this pretrained start
    (``pretrained_sha256``; None for the scratch regime). A pretraining made on another CPU
    type is another start: its runs do not pair with this machine's (the runners leave such
    seeds alone, :mod:`iadet.tools.study_starts`).

    A summary whose stored fingerprint was computed another way (an older version of this
    tool) is still current when ``run_folder``, the folder that made it, recorded a config
    with this fingerprint; the summary's fingerprint is then rewritten in today's form."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if summary.get("pretrained_sha256") != pretrained_sha256:
        return False
    if summary.get("config_sha256") == fingerprint:
        return True
    if run_folder is None or _run_folder_fingerprint(run_folder, summary) != fingerprint:
        return False
    summary["config_sha256_before"] = summary.get("config_sha256")
    summary["config_sha256"] = fingerprint
    summary["config_sha256_from"] = str(run_folder / "config.yaml")
    write_summary(summary, path.parent)
    return True


def run_one(run: StudyRun, work: Path, results: Path, opts: List[str], pretrained: Dict,
            eval_interval: Optional[int] = None, subfolder: str = "runs") -> Dict:
    """Train and evaluate one run (resuming what exists); write and return its summary."""
    folder = work / run.name
    eval_interval = (1 if run.curve else 0) if eval_interval is None else eval_interval
    # The final evaluation is iadet.eval's below (with the α sweep), not the trainer's.
    run_opts = [f"train.seed={run.seed}", f"train.eval_interval={eval_interval}", "train.final_eval=false",
                *run.arm.opts] + opts
    if run.arm.regime == "paper":
        run_opts.append(f"model.backbone.init={pretrained['path']}")
    log = work / "commands.txt"
    resumed = (folder / "latest.pth").is_file()  # continued after an interruption: its times are partial
    t0 = time.time()
    _run("iadet.train", ["--config", REPO / run.arm.config, "--work-dir", folder, "--resume", "auto", "--no-progress",
                         "--device", "cpu", "--opts", *run_opts], log)
    t1 = time.time()
    metrics = evaluate_checkpoint(run, folder / "latest.pth", folder / "eval", run_opts, log)
    t2 = time.time()
    last = _last_train_record(folder / "metrics.jsonl")
    summary = {
        **summary_head(run, run_opts, config_fingerprint(run, opts), pretrained),
        "train_seconds": round(t1 - t0, 1), "eval_seconds": round(t2 - t1, 1), "resumed": resumed,
        "time_per_iter": last.get("time_per_iter"), "iterations": last.get("iteration"),
        "final_losses": {k: v for k, v in last.items() if k.startswith("loss")},
        **metric_fields(metrics),
        "learning_curve": learning_curve(folder / "metrics.jsonl")
        + [{"iteration": last.get("iteration"), **{k: metrics.get(k) for k in ("AP", "AP50", "AP75", "AP90")}}],
    }
    write_summary(summary, results / subfolder)
    return summary


def evaluate_checkpoint(run: StudyRun, checkpoint: Path, out: Path, run_opts: List[str], log: Path) -> Dict:
    """``iadet.eval`` of one checkpoint on the validation images (the α sweep and IoU_truth for
    arms with a quality estimate; Fig. 4 and calibration plots for the first seed)."""
    sweep = ["--alphas", SWEEP_ALPHAS, "--iou-source", "both"] if run.arm.iou_aware else []
    if run.arm.iou_aware and run.curve:
        sweep += ["--plots", out.parent / ("plots" if out.name == "eval" else f"plots_{out.name}")]
    _run("iadet.eval", ["--config", REPO / run.arm.config, "--checkpoint", checkpoint, "--out", out, "--no-progress",
                        "--device", "cpu", "--backend", "fast", *sweep, "--opts", *run_opts], log)
    return json.loads((out / "metrics.json").read_text())


def summary_head(run: StudyRun, run_opts: List[str], fingerprint: str, pretrained: Dict) -> Dict:
    """The identity of a run's summary: arm, seed, config, code, machine, pretrained start."""
    from iadet.machine import cpu_model

    return {"run": run.name, "arm": run.arm.name, "seed": run.seed, "regime": run.arm.regime, "role": run.arm.role,
            "config": run.arm.config, "opts": run_opts, "config_sha256": fingerprint, "git_commit": git_commit(),
            "cpu": cpu_model(), "pretrained_sha256": pretrained.get("sha256") if run.arm.regime == "paper" else None}


def metric_fields(metrics: Dict) -> Dict:
    """What a summary keeps of ``iadet.eval``'s metrics.json."""
    analysis = metrics.get("analysis") or {}
    return {"metrics": {k: v for k, v in metrics.items() if k not in ("per_class", "alpha_sweep", "analysis")},
            "alpha_sweep": metrics.get("alpha_sweep", []), "calibration": analysis.get("calibration"),
            "calibration_estimate": analysis.get("calibration_estimate"),
            "confidence_vs_iou_eval": analysis.get("confidence_vs_iou_eval")}


def write_summary(summary: Dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(summary, indent=1), folder / f"{summary['run']}.json")


def pilot_opts(iters: int) -> List[str]:
    """A longer schedule of the paper regime (steps at 80 % and 93 %), evaluated every 2
    epochs: the measurement the study's schedule is chosen by."""
    return [f"train.max_iters={iters}", f"train.lr_steps=[{round(0.8 * iters)},{round(0.93 * iters)}]"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m iadet.tools.reproduce mini", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2,3,4", help="seeds of the main arms (RetinaNet, IoU-aware, †)")
    p.add_argument("--control-seeds", default="0,1,2", help="seeds of the control arms")
    p.add_argument("--arms", default=None, help="comma-separated subset of: " + ", ".join(ARM_BY_NAME))
    p.add_argument("--work-dir", default=None, help="run folders (default work_dirs/reproduce_mini[_dry_run])")
    p.add_argument("--results-dir", default=None,
                   help="run summaries and the report (default docs/results_mini; dry run: inside --work-dir)")
    p.add_argument("--report", default=None, help="the report (default docs/results_mini.md)")
    p.add_argument("--pretrained", default="data/pretrained/resnet18_shapes.pth", help="the pretrained start")
    p.add_argument("--dry-run", action="store_true", help="2 iterations at 96 px on a tiny set: tests the pipeline")
    p.add_argument("--pilot", type=int, default=None, metavar="ITERS",
                   help="instead of the study: train the first arm for ITERS iterations, evaluated every 2 epochs "
                        "(the learning curve that chooses the schedule; results-dir/pilot/)")
    return p.parse_args(argv)


def prepare_study(args, name: str, results_default: str, report_default: str):
    """The folders, dry-run overrides and pretrained start of a study (this one or the family's):
    ``(work, results, report, opts, pretrained)``; the pretraining is made when not cached."""
    from iadet.tools.pretrain_shapes import pretrain

    suffix = "_dry_run" if args.dry_run else ""
    work = Path(args.work_dir or REPO / f"work_dirs/{name}{suffix}").resolve()
    results = Path(args.results_dir or (work / "results" if args.dry_run else REPO / results_default)).resolve()
    report = Path(args.report or (results / "report.md" if args.dry_run else REPO / report_default))
    work.mkdir(parents=True, exist_ok=True)
    (results / "runs").mkdir(parents=True, exist_ok=True)
    opts: List[str] = []
    pretrained_path = Path(args.pretrained)
    if args.dry_run:
        opts = DRY_RUN_OPTS + [f"data.synthetic.cache_dir={work / 'data'}"]
        pretrained_path = work / "pretrained" / "resnet18_shapes_dry_run.pth"
    pretrained_path = (pretrained_path if pretrained_path.is_absolute() else REPO / pretrained_path)
    record = pretrain(pretrained_path, progress=not args.dry_run, **(DRY_RUN_PRETRAIN if args.dry_run else {}))
    write_pretrained_record(results, record)  # one per start; another CPU type may make another
    return work, results, report, opts, {"path": str(pretrained_path), "sha256": record["sha256"]}


def main(argv=None) -> int:
    from iadet.tools.study_report import write_study_report

    args = parse_args(argv)
    arms = ARMS
    if args.arms:
        names = [a for a in re.split(r"[,\s]+", args.arms.strip()) if a]
        unknown = [a for a in names if a not in ARM_BY_NAME]
        if unknown:
            print(f"error: --arms: unknown {', '.join(unknown)}; choose from {', '.join(ARM_BY_NAME)}", file=sys.stderr)
            return 2
        arms = tuple(a for a in ARMS if a.name in names)
    runs = plan(parse_seeds(args.seeds), parse_seeds(args.control_seeds), arms)
    work, results, report, opts, pretrained = prepare_study(args, "reproduce_mini", "docs/results_mini",
                                                            "docs/results_mini.md")
    command = "python -m iadet.tools.reproduce mini " + " ".join(shlex.quote(a) for a in (argv or sys.argv[2:]))
    if args.pilot:
        run = StudyRun(arms[0], parse_seeds(args.seeds)[0], curve=True)
        run = StudyRun(Arm(f"pilot{args.pilot}_{run.arm.name}", run.arm.config, run.arm.title, run.arm.regime, "pilot"),
                       run.seed, curve=True)
        run_one(run, work, results, opts + pilot_opts(args.pilot), pretrained, eval_interval=2, subfolder="pilot")
        path = write_study_report(results, report, dry_run=args.dry_run)  # the study's command stays
        print(f"\nreport written to {path}")
        return 0
    foreign = foreign_seeds([results], pretrained["sha256"], parse_seeds(args.seeds))
    for i, run in enumerate(runs):
        summary = results / "runs" / f"{run.name}.json"
        sha = pretrained["sha256"] if run.arm.regime == "paper" else None
        if sha and run.seed in foreign:
            print(f"[{i + 1}/{len(runs)}] " + left_alone_message(run.name, run.seed, foreign[run.seed], sha, results))
            continue
        if summary_is_current(summary, config_fingerprint(run, opts), sha, work / run.name):
            print(f"[{i + 1}/{len(runs)}] {run.name}: summary exists, not redone")
            continue
        if summary.is_file():
            print(f"[{i + 1}/{len(runs)}] {run.name}: its summary does not match this config and pretrained start: redone")
            shutil.rmtree(work / run.name, ignore_errors=True)  # never resume a checkpoint of the old config
        print(f"[{i + 1}/{len(runs)}] {run.name}", flush=True)
        run_one(run, work, results, opts, pretrained)
        write_study_report(results, report, command=command, dry_run=args.dry_run)
    path = write_study_report(results, report, command=command, dry_run=args.dry_run)
    print(f"\nreport written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
